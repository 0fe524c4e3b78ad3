"""The clip loader: index -> decoded, transformed clips, in index order.

>>> index = read_kinetics_csv("data/k400", "val")
>>> loader = ClipLoader(index, get_data_preset("mmaction2_val"), workers=2)
>>> for batch in loader.batches(4):
...     batch.video_ids, batch.labels, batch.clips   # clips: (B, V, 3, T, H, W) float32
>>> loader.faults.counts()

Design:

* **Workers** are processes (``spawn`` by default: safe beside a framework that has
  started threads). Each decodes a video, samples its clips and resizes / crops them
  (:meth:`DataPreset.views_uint8`); the ``uint8`` views travel back through a pipe, four
  times smaller than float32, and are normalised in the consumer.
* **Bounded prefetch**: at most ``prefetch`` videos are in flight or waiting to be
  yielded, so memory stays flat however large the split.
* **Deterministic order**: results are re-ordered and yielded in index order, whatever
  the number of workers; every random choice (the seed preset's clip offset) is seeded
  by the video id, so the output does not depend on scheduling.
* **Faults are data**: a file that does not decode becomes a :class:`Fault`
  (``truncated``, ``not_a_video``, ``empty_file``, ``decode_error``); a worker that dies
  (a decoder segfault) is replaced and its video recorded as ``worker_crash``; one that
  takes longer than ``timeout_s`` on a video is killed and replaced (``timeout``). A
  video shorter than a clip is recorded as ``short_video`` and still used, its clips
  looping, as mmaction2's ``SampleFrames`` does (``short_policy="skip"`` drops it).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as _wait_connections
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from frameworks.spec.data_presets import DataPreset
from .decoders import NativeStderr, VideoDecodeError, open_video, quiet_native_logs
from .index import DatasetError, DatasetIndex, FaultLog, VideoRecord

log = logging.getLogger(__name__)

SHORT_POLICIES = ("loop", "skip")
_READY = "ready"


class LoaderStartupError(DatasetError, RuntimeError):
    """A worker process could not start: an environment problem, not a bad video (a
    command reports it like an unreadable dataset: one line, exit 2)."""


@dataclass
class VideoClips:
    """The clips of one video: ``clips`` is float32 ``(V, 3, T, H, W)`` (or uint8
    ``(V, T, H, W, 3)`` from a loader built with ``normalize=False``)."""

    video_id: str
    label: int
    clips: np.ndarray
    num_frames: int
    short: bool = False
    position: int = 0  # index of the record in the DatasetIndex
    seconds: float = 0.0  # decode + transform wall time in the worker
    cpu_seconds: float = 0.0  # the same, as CPU time of the worker


@dataclass
class ClipBatch:
    video_ids: List[str]
    labels: np.ndarray  # int64 (B,)
    clips: np.ndarray  # float32 (B, V, 3, T, H, W)

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def views_per_video(self) -> int:
        return int(self.clips.shape[1])

    def flat(self) -> np.ndarray:
        """``(B * V, 3, T, H, W)``: what a model takes; view ``v`` of video ``b`` is row ``b * V + v``."""
        return self.clips.reshape((-1,) + self.clips.shape[2:])


# ---------------------------------------------------------------------------- one video
def process_video(path: str, video_id: str, preset: DataPreset, decoder: str, threads: int = 1) -> tuple:
    """Decode, sample and crop one video. Never raises for a bad file. Returns
    ``("ok", views_uint8, num_frames, seconds, cpu_seconds)`` or
    ``("fault", kind, reason, seconds, cpu_seconds)``; ``cpu_seconds`` is this process's
    CPU time, which other load on the machine does not inflate the way it inflates wall time."""
    t0, c0 = time.perf_counter(), time.process_time()

    def timed(*result):
        return result + (time.perf_counter() - t0, time.process_time() - c0)

    def fault(kind: str, reason: str):
        said = native.first_line()
        return timed("fault", kind, f"{reason} [decoder said: {said}]" if said and said not in reason else reason)

    native = _native_stderr()
    try:
        with native:  # FFmpeg / decord print to fd 2: keep it off the terminal, in the fault record
            with open_video(path, decoder, threads=threads) as video:
                n = video.num_frames
                indices = preset.frame_indices(n, video_id)
                frames = video.get_frames(indices.reshape(-1))
        return timed("ok", preset.views_uint8(frames, video_id), n)  # the id seeds a training preset's crop
    except VideoDecodeError as exc:
        return fault(exc.kind, exc.reason)
    except FileNotFoundError as exc:
        return fault("missing_file", f"vanished after indexing: {exc}")
    except Exception as exc:  # a decoder's unexpected error is still one bad video, not a dead run
        return fault("decode_error", f"{type(exc).__name__}: {exc}"[:300])


_NATIVE: List[NativeStderr] = []


def _native_stderr() -> NativeStderr:
    if not _NATIVE:
        _NATIVE.append(NativeStderr())
    return _NATIVE[0]


def load_clips(path, preset: DataPreset, *, decoder: Optional[str] = None, video_key: str = "") -> np.ndarray:
    """float32 ``(V, 3, T, H, W)`` clips of one file; raises :class:`VideoDecodeError`."""
    from pathlib import Path

    key = video_key or Path(path).stem
    status, first, second, *_ = process_video(str(path), key, preset, decoder or preset.decoder)
    if status != "ok":
        raise VideoDecodeError(first, path, second)
    return preset.normalize(first)


# ---------------------------------------------------------------------------- workers
def _worker_main(conn, preset: DataPreset, decoder: str, threads: int, process_fn: Callable = process_video) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us, without a traceback each
    try:
        import cv2

        cv2.setNumThreads(1)  # one core per worker; W workers use W cores
    except Exception:  # pragma: no cover
        pass
    quiet_native_logs()
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        position, video_id, path = task
        conn.send((position, process_fn(path, video_id, preset, decoder, threads)))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: object
    tasks: Deque[Tuple[int, VideoRecord]] = field(default_factory=deque)
    busy_since: float = 0.0

    def stop(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the process to exit, kill it if it has not,
        and close its pipe."""
        if grace > 0:
            self.process.join(timeout=grace)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        try:
            self.conn.close()
        except OSError:
            pass


class _WorkerPool:
    """Worker processes with one duplex pipe each (a worker's sends are synchronous, so
    a result it finished is never lost if it dies afterwards, and one killed mid-send
    damages only its own pipe). Not pebble's ProcessPool: its workers share one pipe and
    lock, so a worker killed while sending orphans the lock (the run stalls, then fails),
    and a crash can be charged to the worker's previous video; tests/test_loader_faults.py
    pins both."""

    def __init__(self, n: int, preset: DataPreset, decoder: str, threads: int, start_method: str, timeout_s,
                 process_fn: Callable = process_video):
        self.ctx = mp.get_context(start_method)
        self.args = (preset, decoder, threads, process_fn)
        self.timeout_s = timeout_s
        self.restarts = 0
        self.workers: List[_Worker] = []
        try:  # a Ctrl-C while they start leaves none behind
            for _ in range(n):
                self.workers.append(self._start(wait=False))
            for worker in self.workers:  # started together, so their imports overlap
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start(self, wait: bool = True) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child,) + self.args, daemon=True)
        proc.start()
        child.close()
        worker = _Worker(proc, parent)
        if wait:
            try:
                self._await_ready(worker)
            except BaseException:
                worker.stop()
                raise
        return worker

    @staticmethod
    def _await_ready(worker: _Worker, timeout: float = 120.0) -> None:
        # A worker that cannot even start (bad environment, unimportable module) is not a
        # fault of any video: stop the run instead of blaming every video in turn.
        try:
            ok = worker.conn.poll(timeout) and worker.conn.recv() == _READY
        except (EOFError, OSError):
            ok = False
        if not ok:
            raise LoaderStartupError(
                f"a loader worker failed to start (exit code {worker.process.exitcode}); "
                "run with workers=0 to see the error in this process"
            )

    @property
    def outstanding(self) -> int:
        return sum(len(w.tasks) for w in self.workers)

    def submit(self, position: int, record: VideoRecord) -> None:
        worker = min(self.workers, key=lambda w: len(w.tasks))  # ties: lowest slot
        if not worker.tasks:
            worker.busy_since = time.monotonic()
        worker.tasks.append((position, record))
        worker.conn.send((position, record.video_id, record.path))

    def _replace(self, slot: int, kind: str, reason: str) -> List[Tuple[int, tuple]]:
        """Replace a dead or hung worker; its current video becomes a fault, the rest are resubmitted."""
        old = self.workers[slot]
        old.stop()
        self.restarts += 1
        results: List[Tuple[int, tuple]] = []
        pending = list(old.tasks)
        if pending:
            position, record = pending.pop(0)
            log.warning("%s on %s (%s); worker replaced", kind, record.video_id, reason)
            results.append((position, ("fault", kind, reason, 0.0, 0.0)))
        self.workers[slot] = self._start()
        for position, record in pending:
            self.workers[slot].tasks.append((position, record))
            self.workers[slot].conn.send((position, record.video_id, record.path))
        if self.workers[slot].tasks:
            self.workers[slot].busy_since = time.monotonic()
        return results

    def collect(self, timeout: float) -> List[Tuple[int, tuple]]:
        """Results that arrived within ``timeout`` s, plus faults for crashed or hung workers."""
        results: List[Tuple[int, tuple]] = []
        ready = _wait_connections([w.conn for w in self.workers] + [w.process.sentinel for w in self.workers], timeout)
        for slot, worker in enumerate(self.workers):
            if any(obj is worker.conn for obj in ready):
                results += self._drain(slot, worker)
        now = time.monotonic()
        for slot, worker in enumerate(self.workers):
            if not worker.process.is_alive():
                results += self._drain(slot, worker)  # what it sent before it died is not its crash
                code = worker.process.exitcode
                if worker.tasks or code not in (0, None):
                    results += self._replace(slot, "worker_crash", f"worker exited with code {code}")
            elif worker.tasks and self.timeout_s and now - worker.busy_since > self.timeout_s:
                results += self._replace(slot, "timeout", f"no result after {self.timeout_s:g} s")
        return results

    @staticmethod
    def _drain(slot: int, worker: _Worker) -> List[Tuple[int, tuple]]:
        """Every result this worker has finished and sent."""
        results: List[Tuple[int, tuple]] = []
        while worker.tasks and worker.conn.poll():
            try:
                position, result = worker.conn.recv()
            except (EOFError, OSError):
                break
            head, _ = worker.tasks.popleft()
            if head != position:  # pragma: no cover - would be a bug in the protocol
                raise RuntimeError(f"worker {slot} answered task {position} before {head}")
            worker.busy_since = time.monotonic()
            results.append((position, result))
        return results

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in self.workers:
            worker.stop(grace=max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------- loader
class ClipLoader:
    """Iterate the videos of ``index`` as :class:`VideoClips`, in index order.

    ``workers=0`` decodes in this process; ``workers=W`` uses W processes with at most
    ``prefetch`` (default ``2 * W``) videos in flight. ``faults`` starts with the index's
    faults and gains every decode fault; it is complete once iteration ends.

    ``start_method`` defaults to ``spawn``: a process forked from one that has started
    OpenCV's or a framework's thread pool can deadlock (observed here with ``fork`` after
    torch and mmaction2 were imported). ``process_fn`` replaces :func:`process_video`
    (same signature and result tuple; a module-level function, so that workers can
    import it), e.g. to inject failures in tests.
    """

    def __init__(
        self,
        index: DatasetIndex,
        preset: DataPreset,
        *,
        decoder: Optional[str] = None,
        workers: int = 0,
        prefetch: Optional[int] = None,
        timeout_s: Optional[float] = None,
        short_policy: str = "loop",
        normalize: bool = True,
        start_method: str = "spawn",
        decoder_threads: int = 1,
        process_fn: Optional[Callable] = None,
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if short_policy not in SHORT_POLICIES:
            raise ValueError(f"short_policy must be one of {SHORT_POLICIES}, got {short_policy!r}")
        self.index = index
        self.preset = preset
        self.decoder = decoder or preset.decoder
        self.workers = workers
        self.prefetch = max(1, prefetch if prefetch is not None else 2 * max(1, workers))
        self.timeout_s = timeout_s
        self.short_policy = short_policy
        self.normalize = normalize
        self.start_method = start_method
        self.decoder_threads = decoder_threads
        self.process_fn = process_fn or process_video
        self.faults = FaultLog(list(index.faults.faults))
        self.stats: Dict[str, float] = {}

    def __len__(self) -> int:
        """Videos in the index (an upper bound on what iteration yields)."""
        return len(self.index.records)

    def _finish(self, position: int, record: VideoRecord, result: tuple) -> Optional[VideoClips]:
        status = result[0]
        if status == "fault":
            _, kind, reason, *_ = result
            self.faults.add(record.video_id, kind, reason)
            return None
        _, views, num_frames, seconds, *more = result
        cpu_seconds = more[0] if more else 0.0
        self.stats["worker_s"] = self.stats.get("worker_s", 0.0) + seconds
        self.stats["worker_cpu_s"] = self.stats.get("worker_cpu_s", 0.0) + cpu_seconds
        short = self.preset.is_short(num_frames)
        if short:
            use = self.short_policy == "loop"
            self.faults.add(
                record.video_id,
                "short_video",
                f"{num_frames} frames < one clip ({self.preset.clip_span}); "
                + ("clips loop, video used" if use else "skipped (short_policy=skip)"),
                skipped=not use,
            )
            if not use:
                return None
        clips = self.preset.normalize(views) if self.normalize else views
        return VideoClips(record.video_id, record.label, clips, num_frames, short, position, seconds, cpu_seconds)

    def __iter__(self) -> Iterator[VideoClips]:
        self.faults = FaultLog(list(self.index.faults.faults))
        self.stats = {"videos": 0, "worker_s": 0.0, "worker_cpu_s": 0.0, "restarts": 0}
        t0 = time.perf_counter()
        records = self.index.records
        try:
            if self.workers == 0:
                quiet_native_logs()
                for position, record in enumerate(records):
                    result = self.process_fn(record.path, record.video_id, self.preset, self.decoder,
                                             self.decoder_threads)
                    item = self._finish(position, record, result)
                    if item is not None:
                        self.stats["videos"] += 1
                        yield item
                return
            yield from self._iter_workers(records)
        finally:
            self.stats["wall_s"] = time.perf_counter() - t0

    def _iter_workers(self, records: List[VideoRecord]) -> Iterator[VideoClips]:
        pool = _WorkerPool(
            min(self.workers, max(1, len(records))), self.preset, self.decoder, self.decoder_threads,
            self.start_method, self.timeout_s, self.process_fn,
        )
        ready: Dict[int, tuple] = {}
        next_submit = next_yield = 0
        try:
            while next_yield < len(records):
                # bounded: in flight + finished-but-not-yielded never exceeds prefetch
                while next_submit < len(records) and pool.outstanding + len(ready) < self.prefetch:
                    pool.submit(next_submit, records[next_submit])
                    next_submit += 1
                if next_yield in ready:
                    item = self._finish(next_yield, records[next_yield], ready.pop(next_yield))
                    next_yield += 1
                    if item is not None:
                        self.stats["videos"] += 1
                        yield item
                    continue
                for position, result in pool.collect(timeout=0.2):
                    ready[position] = result
        finally:
            self.stats["restarts"] = pool.restarts
            pool.close()

    def batches(self, batch_size: int) -> Iterator[ClipBatch]:
        """Consecutive videos grouped ``batch_size`` at a time (the last batch may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        group: List[VideoClips] = []
        for item in self:
            group.append(item)
            if len(group) == batch_size:
                yield _stack(group)
                group = []
        if group:
            yield _stack(group)

    def summary(self) -> dict:
        """Counts for a run's output JSON: yielded videos, faults by kind, and each fault."""
        d = self.faults.to_dict()
        d["n_videos"] = int(self.stats.get("videos", 0))
        d["n_missing"] = d["n_skipped"]
        return d


def _stack(items: List[VideoClips]) -> ClipBatch:
    return ClipBatch(
        video_ids=[it.video_id for it in items],
        labels=np.asarray([it.label for it in items], dtype=np.int64),
        clips=np.stack([it.clips for it in items]),
    )
