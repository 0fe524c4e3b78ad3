"""Video decoders behind one interface: ``decord`` (the default, as mmaction2 and the
seed use it) and PyAV.

>>> with open_video("clip.mp4", "decord") as video:
...     frames = video.get_frames([0, 2, 4])   # (3, H, W, 3) uint8 RGB

Every failure to open or decode a file becomes a :class:`VideoDecodeError` whose
``kind`` says what went wrong, so the loader can count it instead of crashing:

``empty_file``   the file has zero bytes
``truncated``    the file starts like an MP4/MOV (``ftyp`` box) but cannot be opened or
                 decoded to the end (typically a cut-off download: the ``moov`` index is
                 missing, or frames it lists are not there)
``not_a_video``  the bytes are not a container either decoder understands
``decode_error`` the container opened but the requested frames could not be decoded

Frame counts come from the container index (``len(decord.VideoReader)``, or PyAV's
``stream.frames``), as mmaction2's ``DecordInit`` takes them; PyAV falls back to
counting decoded frames when the container does not say. Frames are decoded
sequentially by PyAV (exact, not keyframe-snapped) and by decord's ``get_batch``
(mmaction2's ``DecordDecode`` in its default ``accurate`` mode).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Type

import numpy as np

log = logging.getLogger(__name__)

DECODE_ERROR_KINDS = ("empty_file", "truncated", "not_a_video", "decode_error")


class VideoDecodeError(Exception):
    """A video that cannot be read; ``kind`` is one of :data:`DECODE_ERROR_KINDS`."""

    def __init__(self, kind: str, path, reason: str):
        super().__init__(f"{kind}: {path}: {reason}")
        self.kind = kind
        self.path = str(path)
        self.reason = reason


def _looks_like_mp4(path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _has_video_stream(path) -> Optional[bool]:
    """Whether the container holds a video stream; ``None`` when it does not even open."""
    try:
        import av

        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except Exception:  # noqa: BLE001 - any failure to open means "cannot tell"
        return None


def classify_open_failure(path, exc: BaseException) -> VideoDecodeError:
    """Turn a decoder's exception on opening ``path`` into a :class:`VideoDecodeError`."""
    try:
        size = os.path.getsize(path)
    except OSError as err:  # vanished or unreadable between indexing and decoding
        return VideoDecodeError("not_a_video", path, f"cannot stat: {err}")
    if size == 0:
        return VideoDecodeError("empty_file", path, "zero bytes")
    if _has_video_stream(path) is False:  # a valid container (audio only, say): nothing was cut off
        return VideoDecodeError("not_a_video", path, "the container has no video stream (audio only?)")
    if _looks_like_mp4(path):
        return VideoDecodeError("truncated", path, f"MP4 header present but unreadable ({_short(exc)})")
    return VideoDecodeError("not_a_video", path, f"not a video container ({_short(exc)})")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


class VideoReader:
    """One open video. Subclasses set ``num_frames``, ``fps``, ``height``, ``width``."""

    backend = ""
    num_frames: int
    fps: float
    height: Optional[int]  # None until a frame is decoded (decord)
    width: Optional[int]

    def __init__(self, path, *, threads: int = 1):
        self.path = str(path)
        self.threads = threads

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """``(len(indices), H, W, 3)`` uint8 RGB, in the order given (repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return np.empty((0, self.height or 0, self.width or 0, 3), dtype=np.uint8)
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(f"frame indices outside [0, {self.num_frames}) for {self.path}")
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = self._get_unique(unique)
        return frames[inverse]

    def _get_unique(self, sorted_unique: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path, *, threads: int = 1):
        super().__init__(path, threads=threads)
        import decord

        try:
            self._vr = decord.VideoReader(self.path, num_threads=threads)
            self.num_frames = len(self._vr)
            if self.num_frames < 1:
                raise RuntimeError("no frames")
        except Exception as exc:  # decord raises RuntimeError / DECORDError on bad files
            raise classify_open_failure(self.path, exc) from None
        # decord exposes no frame size without decoding; decoding one here would cost a
        # decode and move the reader before get_batch, which mmaction2's DecordInit never
        # does, so the size is taken from the first batch instead
        self.height = self.width = None
        self.fps = float(self._vr.get_avg_fps())

    def _get_unique(self, sorted_unique: np.ndarray) -> np.ndarray:
        try:
            frames = self._vr.get_batch(sorted_unique.tolist()).asnumpy()
        except Exception as exc:
            kind = "truncated" if _looks_like_mp4(self.path) else "decode_error"
            raise VideoDecodeError(kind, self.path, f"decord get_batch failed ({_short(exc)})") from None
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])
        return frames

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    backend = "pyav"

    def __init__(self, path, *, threads: int = 1):
        super().__init__(path, threads=threads)
        import av

        try:
            self._container = av.open(self.path)
            if not self._container.streams.video:
                raise ValueError("no video stream")
            stream = self._container.streams.video[0]
        except Exception as exc:
            raise classify_open_failure(self.path, exc) from None
        stream.thread_count = max(1, int(threads))
        self._stream = stream
        # one reformatter for the whole video: to_ndarray() builds a new swscale context
        # per frame, which costs more than decoding small frames (same pixels either way)
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()
        self.height, self.width = int(stream.codec_context.height), int(stream.codec_context.width)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.num_frames = int(stream.frames or 0)
        if self.num_frames <= 0:  # no count in the container: count by decoding once
            self.num_frames = sum(1 for _ in self._iter_frames())
        if self.num_frames < 1:
            raise VideoDecodeError("decode_error", self.path, "no frames")

    def _iter_frames(self) -> Iterable:
        self._container.seek(0)
        try:
            yield from self._container.decode(self._stream)
        except Exception as exc:
            kind = "truncated" if _looks_like_mp4(self.path) else "decode_error"
            raise VideoDecodeError(kind, self.path, f"PyAV decode failed ({_short(exc)})") from None

    def _get_unique(self, sorted_unique: np.ndarray) -> np.ndarray:
        out = np.empty((len(sorted_unique), self.height, self.width, 3), dtype=np.uint8)
        want = iter(enumerate(sorted_unique.tolist()))
        slot, target = next(want)
        for i, frame in enumerate(self._iter_frames()):
            if i == target:
                out[slot] = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
                nxt = next(want, None)
                if nxt is None:
                    return out
                slot, target = nxt
        raise VideoDecodeError(
            "truncated" if _looks_like_mp4(self.path) else "decode_error",
            self.path,
            f"container lists {self.num_frames} frames but frame {target} could not be decoded",
        )

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()


DECODERS: Dict[str, Type[VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader}
DEFAULT_DECODER = "decord"


def open_video(path, decoder: str = DEFAULT_DECODER, *, threads: int = 1) -> VideoReader:
    """Open ``path`` with the named decoder (``decord`` or ``pyav``).

    Raises :class:`VideoDecodeError` for a file that is not a readable video, and
    ``ValueError`` for an unknown decoder name.
    """
    try:
        cls = DECODERS[decoder]
    except KeyError:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}") from None
    if not Path(path).is_file():
        raise FileNotFoundError(str(path))
    if os.path.getsize(path) == 0:
        raise VideoDecodeError("empty_file", path, "zero bytes")
    return cls(path, threads=threads)


class NativeStderr:
    """Capture what native libraries (FFmpeg, decord's C++) write to file descriptor 2.

    ``with capture:`` points fd 2 at a private file for the duration and restores it;
    :attr:`text` then holds what was written, so that a decoder's complaint about a bad
    file becomes part of its fault record instead of noise across the progress bar. One
    instance per process; not for concurrent use from several threads.
    """

    def __init__(self) -> None:
        import tempfile

        self._file = tempfile.TemporaryFile()
        self._saved: Optional[int] = None
        self.text = ""

    def __enter__(self) -> "NativeStderr":
        import sys

        sys.stderr.flush()
        self._file.seek(0)
        self._file.truncate()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        import sys

        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read(4096).decode("utf-8", "replace")

    def first_line(self) -> str:
        """The first thing said, without what differs from run to run (decord's clock time,
        FFmpeg's context address), so that fault records of two runs compare equal."""
        import re

        for line in self.text.splitlines():
            line = re.sub(r" @ 0x[0-9a-fA-F]+", "", re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line.strip()))
            if line:
                return line[:200]
        return ""


def quiet_native_logs() -> None:
    """Silence FFmpeg's own stderr chatter (``moov atom not found`` ...) in this process;
    the loader reports each bad file once, as data."""
    try:
        import av.logging

        av.logging.set_level(av.logging.PANIC)
    except Exception:  # pragma: no cover - logging is cosmetic
        pass
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except Exception:  # pragma: no cover
        pass
