"""Make a small labelled video dataset in the seed's Kinetics-400 layout.

    python -m harness.data.synthetic DIR [--classes 4] [--videos-per-class 8]
        [--val-videos-per-class 2] [--seconds 3] [--size 340x256] [--fps 30] [--seed 0]
        [--faults]

(``nlparity make_dataset DIR ...`` is the same command) writes ::

    DIR/kinetics-400_train.csv    label,youtube_id,time_start,time_end,split
    DIR/kinetics-400_val.csv
    DIR/train/<youtube_id>_<start:06d>_<end:06d>.mp4    H.264 (libx264), yuv420p
    DIR/val/...

Each video is a procedural motion pattern. The class fixes the kind of motion and its
direction; colours, spatial frequency, phase, speed jitter and noise vary per video::

    class % 4:       0 stripes moving sideways, 1 stripes moving up/down,
                     2 rings expanding/contracting, 3 a pinwheel rotating
    (class // 4) % 2: the direction (+ / -)
    class // 8:       speed tier (1x, 2x, ...)

so telling classes apart needs both appearance and the sign of motion over time: a
small 3D network learns it, a single frame does not decide it. Class names are the first
``--classes`` Kinetics-400 names in alphabetical order, so class ``i`` has id ``i`` under
both the alphabetical (mmaction2) and the first-appearance (seed) numbering. The output
is a pure function of the arguments (``--seed`` included): x264 runs single-threaded.

``--faults`` adds one of each fault the loader must survive to the val split (see
:func:`plant_faults`).

Every file is written under a temporary name beside its destination and renamed only once
complete (:func:`harness.files.atomic_path`), so a full disk or a file-size limit
(``ulimit -f``) never leaves a truncated video or CSV. A run that fails removes every file
and folder it created (a file it replaced stays replaced, whole), and says why in one line
(exit 2): ``error: DIR/train/x.mp4: file too large (the file-size limit, ulimit -f)``.
Sizes are checked before anything is drawn: a video whose frames would take more than
:data:`MAX_VIDEO_BYTES` of memory is refused by the parser.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.labels import K400_CLASSES

from harness.errors import InputError
from harness.cli import add_verbose, OneLineParser, positive_int, positive_seconds, run_main
from harness.files import OutputPathError, atomic_path, atomic_write_json, check_output_dir, check_output_path
from harness.text import printable

log = logging.getLogger("harness.data.synthetic")

CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
SPLITS = ("train", "val")
YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FAULT_KINDS = (
    "missing_file",
    "empty_file",
    "truncated",
    "not_a_video",
    "short_video",
    "unknown_label",
    "bad_row",
)
UNKNOWN_LABEL = "juggling chainsaws"  # not a Kinetics-400 class
SHORT_VIDEO_FRAMES = 8  # shorter than any preset's clip (32 frames at interval >= 2)


# ---------------------------------------------------------------------------- video I/O
def write_video(path, frames: np.ndarray, fps: int = 30, *, crf: int = 20, preset: str = "veryfast") -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB as H.264 in an MP4 (libx264, yuv420p, 1 thread,
    no mbtree), byte-identical for identical frames.

    The ``moov`` index goes at the end (FFmpeg's default), as in most downloaded clips.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under a temporary name and renamed once complete: never a truncated .mp4
    with atomic_path(str(path), suffix=".mp4") as tmp, av.open(tmp, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # mbtree=0: x264's macroblock-tree rate control is not bit-reproducible from run to
        # run even on one thread (measured with libx264 in PyAV 18.1); without it, it is
        stream.options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_bytes(path, data: bytes) -> None:
    """``data`` into ``path``, atomically (a temporary file renamed once complete)."""
    with atomic_path(str(path)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


# ---------------------------------------------------------------------------- patterns
@dataclass(frozen=True)
class MotionParams:
    """What one video shows; ``family`` and ``direction`` are the class."""

    family: int  # 0 sideways stripes, 1 vertical stripes motion, 2 rings, 3 pinwheel
    direction: int  # +1 or -1
    speed: float  # cycles per second
    frequency: float  # pattern cycles across the short side
    phase: float
    color_a: Tuple[float, float, float]
    color_b: Tuple[float, float, float]
    noise: float


def class_motion(class_id: int) -> Tuple[int, int, int]:
    """``(family, direction, speed tier)`` of a class."""
    family = class_id % 4
    direction = 1 if (class_id // 4) % 2 == 0 else -1
    return family, direction, class_id // 8


def draw_params(class_id: int, rng: np.random.Generator) -> MotionParams:
    family, direction, tier = class_motion(class_id)
    colors = rng.uniform(0.0, 1.0, size=(2, 3))
    while np.abs(colors[0] - colors[1]).sum() < 0.6:  # keep the pattern visible
        colors = rng.uniform(0.0, 1.0, size=(2, 3))
    return MotionParams(
        family=family,
        direction=direction,
        speed=float((1.0 + tier) * rng.uniform(0.6, 1.0)),
        frequency=float(rng.uniform(2.0, 5.0)),
        phase=float(rng.uniform(0.0, 2 * math.pi)),
        color_a=tuple(float(c) for c in colors[0]),
        color_b=tuple(float(c) for c in colors[1]),
        noise=float(rng.uniform(0.0, 0.04)),
    )


def render(params: MotionParams, num_frames: int, height: int, width: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB frames of one motion pattern."""
    short = float(min(height, width))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y = (y - height / 2.0) / short
    x = (x - width / 2.0) / short
    radius = np.sqrt(x * x + y * y)
    angle = np.arctan2(y, x)
    color_a = np.asarray(params.color_a, np.float32)
    color_b = np.asarray(params.color_b, np.float32)
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    two_pi = np.float32(2 * math.pi)
    for t in range(num_frames):
        shift = params.direction * params.speed * t / fps  # in pattern cycles
        if params.family == 0:
            arg = params.frequency * x - shift
        elif params.family == 1:
            arg = params.frequency * y - shift
        elif params.family == 2:
            arg = params.frequency * radius - shift
        else:
            arg = 3.0 * angle / two_pi - shift  # three blades
        wave = 0.5 + 0.5 * np.sin(two_pi * arg + params.phase)
        img = color_a * (1.0 - wave[..., None]) + color_b * wave[..., None]
        if params.noise:
            img = img + rng.normal(0.0, params.noise, size=img.shape).astype(np.float32)
        out[t] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------- dataset
@dataclass
class DatasetSummary:
    root: str
    classes: List[str]
    videos: Dict[str, int]
    frames_per_video: int
    size: Tuple[int, int]
    fps: int
    seed: int
    faults: Dict[str, List[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "videos": self.videos,
            "frames_per_video": self.frames_per_video,
            "size": list(self.size),
            "fps": self.fps,
            "seed": self.seed,
            "faults": self.faults,
        }


def _youtube_id(rng: np.random.Generator) -> str:
    return "".join(YOUTUBE_ALPHABET[i] for i in rng.integers(0, len(YOUTUBE_ALPHABET), size=11))


def video_filename(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}.mp4"


def _write_csv(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = CSV_COLUMNS) -> None:
    with atomic_path(str(path)) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


class _Ledger:
    """The files and folders a run creates, so that a failed run can remove them (a file it
    replaced is left as it is: atomic, so whole)."""

    def __init__(self):
        self.created: List[Path] = []

    def folder(self, path: Path) -> Path:
        missing = []
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        probe = Path(path)
        probe.mkdir(parents=True, exist_ok=True)
        self.created += reversed(missing)
        return probe

    def note_missing(self, folder: Path) -> None:
        """The missing folders of ``folder`` (someone else is about to make them)."""
        missing = []
        probe = Path(os.path.abspath(folder))
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        self.created += reversed(missing)

    def file(self, path: Path) -> Path:
        if not Path(path).exists():
            self.created.append(Path(path))
        return Path(path)

    def undo(self) -> None:
        for path in reversed(self.created):
            try:
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
            except OSError:
                pass
        self.created = []


def make_dataset(
    root,
    *,
    classes: int = 4,
    videos_per_class: int = 8,
    val_videos_per_class: Optional[int] = None,
    seconds: float = 3.0,
    size: Tuple[int, int] = (340, 256),
    fps: int = 30,
    seed: int = 0,
    faults: bool = False,
    progress: bool = False,
    ledger: Optional[_Ledger] = None,
) -> DatasetSummary:
    """Write the dataset under ``root`` (see the module docstring); ``size`` is ``(W, H)``.
    A failure removes every file and folder it created (recorded in ``ledger``)."""
    if not 1 <= classes <= len(K400_CLASSES):
        raise ValueError(f"--classes must be in [1, {len(K400_CLASSES)}], got {classes}")
    if videos_per_class < 1:
        raise ValueError(f"--videos-per-class must be >= 1, got {videos_per_class}")
    if seconds <= 0 or fps < 1:
        raise ValueError(f"--seconds and --fps must be positive, got {seconds}, {fps}")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"--size must be even and at least 16x16, got {width}x{height}")
    val_per_class = max(1, videos_per_class // 4) if val_videos_per_class is None else val_videos_per_class
    ledger = ledger if ledger is not None else _Ledger()
    try:
        return _make(Path(root), ledger, classes, videos_per_class, val_per_class, seconds, (width, height), fps,
                     seed, faults, progress)
    except BaseException:
        ledger.undo()   # a failed run leaves nothing it made: no half dataset, no stray folder
        raise


def _make(root: Path, ledger: _Ledger, classes: int, videos_per_class: int, val_per_class: int, seconds: float,
          size: Tuple[int, int], fps: int, seed: int, faults: bool, progress: bool) -> DatasetSummary:
    width, height = size
    ledger.folder(root)
    for split in SPLITS:
        ledger.folder(root / split)
    names = list(K400_CLASSES[:classes])
    num_frames = max(1, int(round(seconds * fps)))
    duration = max(1, int(math.ceil(seconds)))

    jobs = []
    for split, per_class in (("train", videos_per_class), ("val", val_per_class)):
        for class_id in range(classes):
            for k in range(per_class):
                jobs.append((split, class_id, k))

    tqdm = _tqdm(progress)
    rows: Dict[str, List[List[str]]] = {s: [] for s in SPLITS}
    used_ids = set()
    for split, class_id, k in tqdm(jobs, desc="videos", unit="video", disable=not progress):
        # one independent stream per video: adding classes or videos never changes the others
        rng = np.random.default_rng([seed, SPLITS.index(split), class_id, k])
        youtube_id = _youtube_id(rng)
        while youtube_id in used_ids:
            youtube_id = _youtube_id(rng)
        used_ids.add(youtube_id)
        start = int(rng.integers(0, 290))
        params = draw_params(class_id, rng)
        frames = render(params, num_frames, height, width, fps, rng)
        write_video(ledger.file(root / split / video_filename(youtube_id, start, start + duration)), frames, fps)
        rows[split].append([names[class_id], youtube_id, str(start), str(start + duration), split])
    for split in SPLITS:
        _write_csv(ledger.file(root / f"kinetics-400_{split}.csv"), rows[split])

    summary = DatasetSummary(
        root=str(root),
        classes=names,
        videos={s: len(rows[s]) for s in SPLITS},
        frames_per_video=num_frames,
        size=(width, height),
        fps=fps,
        seed=seed,
    )
    if faults:
        summary.faults = plant_faults(root, "val", seed=seed, size=(width, height), fps=fps, ledger=ledger)
    return summary


def plant_faults(
    root,
    split: str = "val",
    *,
    kinds: Sequence[str] = FAULT_KINDS,
    seed: int = 0,
    size: Tuple[int, int] = (64, 48),
    fps: int = 30,
    ledger: Optional[_Ledger] = None,
) -> Dict[str, List[str]]:
    """Add one instance of each fault in ``kinds`` to ``split`` of a dataset under ``root``.

    Returns ``{kind: [video id or row text]}`` (one each). The faults, and what the loader
    must do with each:

    ``missing_file``   a CSV row whose video does not exist              -> skipped
    ``empty_file``     a zero-byte ``.mp4``                              -> skipped
    ``truncated``      a valid MP4 cut to its first half (no ``moov``)   -> skipped
    ``not_a_video``    text bytes in a ``.mp4``                          -> skipped
    ``short_video``    a valid video of 8 frames, shorter than any clip  -> counted, used (looped)
    ``unknown_label``  a valid video under a label not in the label map  -> skipped
    ``bad_row``        a CSV row with too few columns                    -> skipped

    Every file is written atomically; the CSV is rewritten last, so a failure leaves it as it was.
    """
    ledger = ledger or _Ledger()
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {FAULT_KINDS}")
    root = Path(root)
    csv_path = root / f"kinetics-400_{split}.csv"
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [row for row in reader]
    if not rows:
        raise ValueError(f"{csv_path} has no rows to borrow a label from")
    rng = np.random.default_rng([seed, 7919])
    planted: Dict[str, List[str]] = {}
    extra_rows: List[List[str]] = []
    for kind in kinds:
        row, vid = _plant(kind, root / split, rows[0][0], split, size, fps, rng, ledger)
        extra_rows.append(row)
        planted[kind] = [vid]
    _write_csv(csv_path, rows + extra_rows, header)
    return planted


def _plant(kind: str, folder: Path, label: str, split: str, size: Tuple[int, int], fps: int,
           rng: np.random.Generator, ledger: _Ledger) -> Tuple[List[str], str]:
    """One fault of ``kind``: its file written into ``folder`` (if it has one); returns its
    CSV row and the id the loader will name it by."""
    youtube_id = f"fault{kind.replace('_', '')}"[:11].ljust(11, "x")
    start, end = 0, 10
    vid = f"{youtube_id}_{start:06d}_{end:06d}"
    path = folder / video_filename(youtube_id, start, end)
    row = [label, youtube_id, str(start), str(end), split]
    width, height = size
    if kind == "empty_file":
        write_bytes(ledger.file(path), b"")
    elif kind in ("truncated", "unknown_label", "short_video"):
        frames_n = SHORT_VIDEO_FRAMES if kind == "short_video" else 40
        params = draw_params(0, rng)
        write_video(ledger.file(path), render(params, frames_n, height, width, fps, rng), fps)
        if kind == "truncated":
            data = path.read_bytes()
            write_bytes(path, data[: len(data) // 2])
        if kind == "unknown_label":
            row[0] = UNKNOWN_LABEL
    elif kind == "not_a_video":
        write_bytes(ledger.file(path), b"this is not a video, only some text pretending to be one\n" * 20)
    elif kind == "bad_row":
        row = [label, youtube_id]  # too few columns
        vid = ",".join(row)
    return row, vid                # missing_file: a row, no file


def _tqdm(enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm
        except ImportError:  # pragma: no cover
            pass
    return lambda it, **_: it


# ---------------------------------------------------------------------------- CLI
MAX_SIDE = 4096       # pixels: larger frames are a typo here (the dataset is for tests and demos)
MAX_SECONDS = 600.0
# one video's frames are drawn in memory before they are encoded: (T, H, W, 3) uint8
MAX_VIDEO_BYTES = 2 ** 30


def parse_size(text: str) -> Tuple[int, int]:
    """``WxH``: even sides in 16..MAX_SIDE (an argparse type; H.264 yuv420p needs even sizes)."""
    try:
        w, h = text.lower().split("x")
        w, h = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 340x256, got {text!r}") from None
    if not (16 <= w <= MAX_SIDE and 16 <= h <= MAX_SIDE) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"frame size {w}x{h}: each side must be even and in 16..{MAX_SIDE}")
    return w, h


_parse_size = parse_size   # the older private name


def parse_seconds(text: str) -> float:
    """A video length: positive, finite, at most MAX_SECONDS (an argparse type)."""
    value = positive_seconds(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SECONDS:g} seconds per video, got {text}")
    return value


_seconds = parse_seconds


def check_video_memory(parser: argparse.ArgumentParser, seconds: float, size: Tuple[int, int], fps: int,
                       flags: str = "--seconds x --fps x --size") -> None:
    """Refuse, through the parser (one line, exit 2) and before anything is drawn, a video
    whose frames would not fit :data:`MAX_VIDEO_BYTES`."""
    frames = max(1, int(round(seconds * fps)))
    need = frames * size[0] * size[1] * 3
    if need > MAX_VIDEO_BYTES:
        parser.error(f"{flags}: {frames} frames of {size[0]}x{size[1]} take {need / 2 ** 30:.1f} GiB in memory "
                     f"per video; the limit is {MAX_VIDEO_BYTES / 2 ** 30:.0f} GiB")


def _classes(text: str) -> int:
    value = positive_int(text)
    if value > len(K400_CLASSES):
        raise argparse.ArgumentTypeError(f"at most {len(K400_CLASSES)} classes (Kinetics-400's), got {value}")
    return value


def _fps(text: str) -> int:
    value = positive_int(text)
    if value > 240:
        raise argparse.ArgumentTypeError(f"at most 240 frames per second, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m harness.data.synthetic",
        description="Write a small labelled H.264 video dataset in the seed's Kinetics-400 layout "
        "(train and val splits, each with kinetics-400_<split>.csv). Deterministic for a seed.",
    )
    p.add_argument("root", metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--classes", type=_classes, default=4, help="number of classes (default 4; names are "
                   "the first K Kinetics-400 classes)")
    p.add_argument("--videos-per-class", type=positive_int, default=8, help="train videos per class (default 8)")
    p.add_argument("--val-videos-per-class", type=positive_int, default=None,
                   help="val videos per class (default: videos-per-class // 4, at least 1)")
    p.add_argument("--seconds", type=parse_seconds, default=3.0,
                   help="length of each video in seconds (default 3: 90 frames, one 32x2 clip without looping)")
    p.add_argument("--size", type=parse_size, default=(340, 256), metavar="WxH",
                   help="frame size, even numbers (default 340x256, Kinetics' usual)")
    p.add_argument("--fps", type=_fps, default=30, help="frame rate (default 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--faults", action="store_true",
                   help="also plant one of each fault (missing, empty, truncated, not a video, short, "
                   "unknown label, bad row) in the val split, for loader tests")
    p.add_argument("--json", metavar="FILE", help="write a summary (classes, counts, planted faults) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_video_memory(parser, args.seconds, args.size, args.fps)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    ledger = _Ledger()
    try:
        return _write(args, ledger)
    except BaseException:
        ledger.undo()   # a refused or failed run leaves nothing: no file, no folder it made
        raise


def _write(args, ledger: _Ledger) -> int:
    root = Path(args.root)
    check_output_dir(str(root), "DIR")
    own = [root / f"kinetics-400_{s}.csv" for s in SPLITS] + [root / s for s in SPLITS]
    if args.json:
        if any(os.path.realpath(args.json) == os.path.realpath(p) for p in own):
            raise OutputPathError(f"refusing to write --json {args.json}: it is a file of the dataset itself")
        ledger.note_missing(Path(args.json).parent)
        check_output_path(args.json, "--json")
    try:
        summary = make_dataset(
            root,
            classes=args.classes,
            videos_per_class=args.videos_per_class,
            val_videos_per_class=args.val_videos_per_class,
            seconds=args.seconds,
            size=args.size,
            fps=args.fps,
            seed=args.seed,
            faults=args.faults,
            progress=not args.no_progress and sys.stderr.isatty(),
            ledger=ledger,
        )
    except ValueError as exc:   # a value the library refuses (the parser has checked the usual ones)
        raise InputError(str(exc)) from None
    if args.json:
        atomic_write_json(args.json, summary.to_dict())
    log.info(
        "wrote %d train + %d val videos (%d classes, %d frames of %dx%d) under %s%s",
        summary.videos["train"], summary.videos["val"], len(summary.classes), summary.frames_per_video,
        summary.size[0], summary.size[1], printable(summary.root),
        f"; planted faults: {', '.join(summary.faults)}" if summary.faults else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
