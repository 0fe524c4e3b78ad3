"""The home of per-video scores: a run's score store, its summary, merging shards and
comparing runs. Numpy only; no framework, no decoder.

A run writes ``<out>.json`` (the summary) and ``<out>.scores/``::

    run.json              the run's identity: everything that changes a score
    chunk-000000.npz      positions, video ids, labels, scores, faults, timings of some videos
    .lock                 held (flock) while a process writes into the folder

Chunks are replaced atomically, so an interrupted run loses at most the chunk in
progress (a process killed while writing leaves a ``.chunk-*.tmp``: the next process that
takes the lock removes it, and the summary's own temporary beside it); ``--resume`` re-scores exactly the videos no chunk holds, and refuses a run
whose identity differs (another checkpoint, preset, data root, decoder, device ...).
Metrics are computed from the saved scores by :mod:`harness.metrics`, so the report
recomputes them from the same files instead of trusting a summary.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from harness import metrics
from harness.errors import InputError
from harness.provenance import provenance, utc_now
from harness.files import (atomic_path, atomic_write_json, check_output_dir, check_output_path,
                           describe_os_error, json_safe, os_reason, read_json_input)

SUMMARY_VERSION = 2
# What must be equal for two sessions (a resume) or two shards (a merge) to be one run:
# everything that changes a score. (Thread count is left out: it changes float32 results
# only in the last bits, and a resumed run may fairly use another machine's cores.)
IDENTITY_KEYS = ("framework", "arch", "arch_hash", "data_preset", "data_preset_hash", "checkpoint_sha256",
                 "weights_sha256", "split", "n_index", "limit", "num_classes", "data_root", "annotations",
                 "decoder", "device", "runner_options", "batch_size")
# faults that are not a video of the split (the same row listed twice)
NOT_LISTED = ("duplicate_row",)


def paths(out: str) -> Tuple[str, str]:
    """``(summary JSON, scores folder)`` of a run written to ``out``."""
    stem = out[:-5] if out.endswith(".json") else out
    return stem + ".json", stem + ".scores"


# ----------------------------------------------------------------------------- chunks
@dataclass
class Chunk:
    """Videos scored (and faults met) since the last chunk was written."""

    positions: List[int] = field(default_factory=list)
    video_ids: List[str] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    scores: List[np.ndarray] = field(default_factory=list)
    faults: List[dict] = field(default_factory=list)
    # one row per forward pass: [videos, views, model seconds, data-wait seconds, wall seconds]
    seconds: List[List[float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.positions or self.faults)

    def add(self, position: int, video_id: str, label: int, score: np.ndarray) -> None:
        self.positions.append(int(position))
        self.video_ids.append(video_id)
        self.labels.append(int(label))
        self.scores.append(np.asarray(score, np.float32))


def write_chunk(scores_dir: str, number: int, chunk: Chunk, num_classes: int) -> str:
    path = os.path.join(scores_dir, f"chunk-{number:06d}.npz")
    scores = (np.stack(chunk.scores).astype(np.float32) if chunk.scores
              else np.zeros((0, num_classes), np.float32))
    # made in memory, then written in one call: a write that fails (full disk, ulimit -f) is
    # one OSError, not a half-closed zip file complaining when it is collected
    buf = io.BytesIO()
    np.savez(buf, positions=np.asarray(chunk.positions, np.int64),
             video_ids=np.asarray(chunk.video_ids, dtype=str).reshape(-1),
             labels=np.asarray(chunk.labels, np.int64), scores=scores,
             faults=np.asarray(json.dumps(chunk.faults)),
             seconds=np.asarray(json.dumps(chunk.seconds)))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    return path


@dataclass
class Scores:
    """Every saved chunk of a run, concatenated in index order."""

    positions: np.ndarray
    video_ids: List[str]
    labels: np.ndarray
    scores: np.ndarray
    faults: List[dict]
    seconds: List[List[float]]
    n_chunks: int = 0

    def __getitem__(self, key):  # read_scores(...)["scores"] keeps working
        return getattr(self, key)

    @property
    def covered(self) -> set:
        """Positions this run has dealt with: scored, or recorded as a fault."""
        return set(self.positions.tolist()) | {f["position"] for f in self.faults if "position" in f}


def read_scores(scores_dir: str, num_classes: int = 0) -> Scores:
    """Every saved chunk of a run; a damaged chunk is bad input that names the file."""
    positions, ids, labels, scores, faults, seconds = [], [], [], [], [], []
    files = sorted(glob.glob(os.path.join(scores_dir, "chunk-*.npz")))
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:
                positions.append(z["positions"].astype(np.int64))
                ids.extend(str(x) for x in z["video_ids"].reshape(-1).tolist())
                labels.append(z["labels"].astype(np.int64))
                chunk_scores = z["scores"]
                faults.extend(json.loads(str(z["faults"])))
                seconds.extend(json.loads(str(z["seconds"])))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"score chunk {path} is damaged ({type(exc).__name__}: {exc}); "
                             "remove it and run again with --resume to re-score its videos") from None
        if chunk_scores.ndim != 2 or len(chunk_scores) != len(positions[-1]):
            raise InputError(f"score chunk {path} is damaged (scores {chunk_scores.shape} for "
                             f"{len(positions[-1])} videos); remove it and --resume")
        if len(chunk_scores):
            scores.append(chunk_scores)
    width = scores[0].shape[1] if scores else num_classes
    if any(s.shape[1] != width for s in scores):
        raise InputError(f"{scores_dir}: chunks hold scores of different class counts")
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    order = np.argsort(pos, kind="stable")
    all_scores = np.concatenate(scores) if scores else np.zeros((0, width), np.float32)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return Scores(pos[order], [ids[i] for i in order], all_labels[order], all_scores[order],
                  sorted(faults, key=lambda f: f.get("position", -1)), seconds, len(files))


# ----------------------------------------------------------------------------- the store
class ScoreStore:
    """The scores folder of one run, locked while this process writes into it."""

    def __init__(self, out: str):
        self.summary_path, self.dir = paths(out)
        self._lock_fd: Optional[int] = None
        self.next_chunk = 0
        self.created = False      # this process made the folder (so may remove it, see abandon)
        self.saved: Optional[Scores] = None
        self.weights_file: Optional[str] = None   # the seeded weights a run used (kept in the cache)

    # -------------------------------------------------------------- locking
    def lock(self) -> None:
        """Hold ``.lock`` for this process's lifetime; a second writer is refused."""
        import fcntl

        try:
            self.created = not os.path.exists(self.dir)
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write scores to {self.dir}: {os_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(f"another run (pid {holder}) is writing {self.dir}; wait for it, "
                             "or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        self.remove_temporaries()

    def remove_temporaries(self) -> List[str]:
        """Remove what a killed writer of this run left half-written: the temporary files of
        its chunks and run record (``.*.tmp`` in the folder) and of its summary (beside it).
        Only the holder of the lock writes them, so none is in use."""
        folder, name = os.path.split(os.path.abspath(self.summary_path))
        stale = glob.glob(os.path.join(glob.escape(self.dir), ".*.tmp")) + glob.glob(
            os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))
        removed = []
        for path in stale:
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
        return removed

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """After a failure: remove the folder if this process made it and saved no score
        into it (a refused run leaves nothing behind), then unlock."""
        import shutil

        if self.created and self.next_chunk == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.unlock()

    # -------------------------------------------------------------- identity
    @property
    def run_file(self) -> str:
        return os.path.join(self.dir, "run.json")

    def check(self, resume: bool) -> Optional[dict]:
        """Read what earlier sessions left (cheap, before any long work): their identity,
        or None for a new run; refuses damaged files and an unasked-for resume."""
        self.saved = read_scores(self.dir)
        if not os.path.isfile(self.run_file):
            if self.saved.n_chunks:
                raise InputError(f"{self.dir} holds scores but no run.json; remove it or use another --out")
            return None
        try:
            with open(self.run_file) as f:
                previous = json.load(f)
            if not isinstance(previous, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.run_file} is damaged ({exc}); remove {self.dir} to start over") from None
        if not resume:
            raise InputError(f"{self.dir} holds an earlier run; pass --resume to continue it, "
                             "or remove the folder, or use another --out")
        return previous

    def begin(self, identity: dict, resume: bool, num_classes: int) -> Scores:
        """Check (or write) the run's identity; returns what earlier sessions saved."""
        previous = self.check(resume)
        done = self.saved
        if done.scores.shape[1:] not in ((num_classes,), (0,)):
            raise InputError(f"{self.dir} holds scores of {done.scores.shape[1]} classes, this run has {num_classes}")
        if previous is not None:
            changed = [k for k in identity if previous.get(k) != identity[k]]
            if changed:
                detail = ", ".join(f"{k} ({previous.get(k)!r} -> {identity[k]!r})" for k in changed[:3])
                raise InputError(f"--resume: the saved run differs in {detail}; use another --out")
        try:
            atomic_write_json(self.run_file, identity)
        except OSError as exc:
            raise InputError(f"cannot write scores to {self.dir}: {os_reason(exc)}") from None
        self.next_chunk = max([int(os.path.basename(p)[6:12]) + 1
                               for p in glob.glob(os.path.join(self.dir, "chunk-*.npz"))], default=0)
        return done

    def write(self, chunk: Chunk, num_classes: int) -> None:
        try:
            write_chunk(self.dir, self.next_chunk, chunk, num_classes)
        except OSError as exc:
            kept = ("the videos saved so far are kept: fix it and run again with --resume" if self.next_chunk
                    else "no video's scores were saved")
            raise InputError(f"cannot write scores to {self.dir}: {os_reason(exc)}; {kept}") from None
        self.next_chunk += 1


# ----------------------------------------------------------------------------- summary
def accuracy(saved: Scores, n_listed: int) -> dict:
    """Top-1/top-5/mean class accuracy over the scored videos, and top-1/top-5 over every
    listed video with the missing ones counted wrong (Caffe2's denominator)."""
    labelled = saved.labels >= 0
    if not len(saved.labels) or not labelled.all():
        reason = "no video was scored" if not len(saved.labels) else "the split has no labels"
        return {"top1": None, "top5": None, "mean_class_accuracy": None, "top1_listed": None,
                "top5_listed": None, "accuracy_note": reason}
    acc = metrics.accuracy_summary(saved.scores, saved.labels)
    n = len(saved.labels)
    acc.update(top1_listed=acc["top1"] * n / n_listed if n_listed else None,
               top5_listed=acc["top5"] * n / n_listed if n_listed else None)
    return acc


def timing_summary(seconds: Sequence[Sequence[float]], walls: Optional[Sequence[float]] = None) -> dict:
    """Throughput over every forward pass the saved chunks record, whichever session (or
    shard) made them: end to end (model + data wait) and model only."""
    rows = [list(r) + [None] * (5 - len(r)) for r in seconds]
    views = sum(r[1] for r in rows)
    model_s = sum(r[2] for r in rows)
    if any(r[4] is None for r in rows):  # chunks of summary version 1 carry no wall time
        wall_s = wait_s = None
    else:
        wall_s = sum(r[4] for r in rows)
        wait_s = sum(r[3] for r in rows)
    first = rows[0] if rows else None
    out = {"views": views, "model_s": model_s, "wall_s": wall_s,
           "model_clips_per_s": views / model_s if model_s > 0 else None,
           "clips_per_s": views / wall_s if wall_s else None,
           "data_wait_share": wait_s / wall_s if wall_s else None,
           # the first forward pays for graph compilation and allocator warm-up
           "first_batch_s": first[2] if first else None,
           "model_clips_per_s_steady": ((views - first[1]) / (model_s - first[2])
                                        if first and model_s - first[2] > 0 else None)}
    if walls:
        out["aggregate_clips_per_s"] = views / max(walls) if max(walls) > 0 else None
    return out


def summarize(scores_dir: str, identity: dict, index_faults: List[dict], extra: Optional[dict] = None,
              walls: Optional[Sequence[float]] = None) -> dict:
    """The summary of a run, computed from its saved scores alone."""
    saved = read_scores(scores_dir, identity.get("num_classes", 0))
    faults = list(index_faults) + saved.faults
    counts: Dict[str, int] = {}
    for f in faults:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    n_missing = sum(1 for f in faults if f.get("skipped", True) and f["kind"] not in NOT_LISTED)
    n_videos = int(len(saved.labels))
    non_finite = int((~np.isfinite(saved.scores)).any(axis=1).sum()) if saved.scores.size else 0
    doc = {"summary_version": SUMMARY_VERSION, **identity,
           "n_videos": n_videos, "n_missing": n_missing, "n_listed": n_videos + n_missing,
           "n_non_finite": non_finite,
           "faults": {"counts": counts, "list": faults}}
    doc.update(accuracy(saved, n_videos + n_missing) if not non_finite else
               {"top1": None, "top5": None, "mean_class_accuracy": None, "top1_listed": None,
                "top5_listed": None,
                "accuracy_note": f"{non_finite} of {n_videos} videos have non-finite scores"})
    doc.update(timing_summary(saved.seconds, walls))
    doc.update(extra or {})
    doc["scores"] = os.path.basename(os.path.normpath(scores_dir))  # beside the summary, always
    return json_safe(doc)


# ----------------------------------------------------------------------------- loading summaries
def load_summary(path: str) -> dict:
    doc = read_json_input(path, "a harness.evaluate summary")
    if not isinstance(doc, dict) or "summary_version" not in doc or "scores" not in doc:
        raise InputError(f"{path} is not a harness.evaluate summary")
    doc["_scores_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), doc["scores"])
    if not os.path.isdir(doc["_scores_dir"]):
        raise InputError(f"{path}: its scores folder {doc['_scores_dir']} is missing")
    doc["_path"] = path
    return doc


def summary_files(items: List[str]) -> List[str]:
    files = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(glob.escape(item), "*.shard*of*.json")))
            if not found:
                raise InputError(f"nothing to merge in the folder {item}: it holds no *.shard<i>of<n>.json")
            files += found
        else:
            files.append(item)
    if not files:
        raise InputError("nothing to merge")
    return files


# ----------------------------------------------------------------------------- merge & compare
def check_shards(shards: Sequence[Sequence[int]]) -> None:
    """Shard numbers ``[rank, world]`` that cover ``0..world-1`` exactly once, or bad input."""
    worlds = {s[1] for s in shards}
    ranks = sorted(s[0] for s in shards)
    if len(worlds) != 1 or ranks != list(range(worlds.pop())):
        raise InputError(f"shards {ranks} do not cover 0..n-1 exactly once")


def merge(items: List[str], out: str, kind: str = "evaluation") -> dict:
    """The shards' summaries and scores merged into one run written to ``out``, whose
    summary says it is a ``kind`` (drift merges its steps' runs as ``drift_step``)."""
    files = summary_files(items)
    summary_path, scores_dir = paths(out)
    for f in files:
        if os.path.abspath(f) == os.path.abspath(summary_path):
            raise InputError(f"--out {out} is one of the shards being merged; choose another --out")
    docs = [load_summary(p) for p in files]
    inputs = files + [d["_scores_dir"] for d in docs]
    check_output_path(summary_path, "--out", inputs=inputs)
    check_output_dir(scores_dir, "--out scores folder", inputs=inputs)
    first = docs[0]
    for d in docs[1:]:
        changed = [k for k in IDENTITY_KEYS if d.get(k) != first.get(k)]
        if changed:
            raise InputError(f"shards differ in {', '.join(changed)}; they are not one run")
    if any(not isinstance(d.get("shard"), list) or len(d["shard"]) != 2 for d in docs):
        raise InputError("a summary without a shard number cannot be merged")
    check_shards([d["shard"] for d in docs])
    store = ScoreStore(out)
    if os.path.abspath(store.dir) in {os.path.abspath(d["_scores_dir"]) for d in docs}:
        raise InputError(f"--out {out} would overwrite a shard's scores; choose another --out")
    store.lock()
    try:
        summary = _write_merged(store, docs, files, kind)
    except OSError as exc:
        raise InputError(f"cannot write {describe_os_error(exc) if exc.filename else f'{out}: {os_reason(exc)}'}") \
            from None
    finally:
        store.unlock()
    summary["_path"] = summary_path
    return summary


def _write_merged(store: ScoreStore, docs: List[dict], files: List[str], kind: str) -> dict:
    """Every shard's chunks as one chunk in index order, and its summary (the first shard's
    identity and facts, the shards' wall times)."""
    if os.path.exists(store.summary_path):   # never a summary beside chunks it did not come from
        os.remove(store.summary_path)
    for old in glob.glob(os.path.join(store.dir, "chunk-*.npz")):
        os.remove(old)
    first = docs[0]
    num_classes = first.get("num_classes", 0)
    merged = Chunk()
    for d in docs:
        s = read_scores(d["_scores_dir"], num_classes)
        for p, v, l, sc in zip(s.positions.tolist(), s.video_ids, s.labels.tolist(), s.scores):
            merged.add(p, v, l, sc)
        merged.faults += s.faults
        merged.seconds += s.seconds
    order = np.argsort(merged.positions, kind="stable")
    store.write(Chunk([merged.positions[i] for i in order], [merged.video_ids[i] for i in order],
                      [merged.labels[i] for i in order], [merged.scores[i] for i in order],
                      sorted(merged.faults, key=lambda f: f.get("position", -1)), merged.seconds), num_classes)
    identity = {k: first.get(k) for k in IDENTITY_KEYS}
    identity["shard"] = [0, 1]
    index_faults = [f for f in first["faults"]["list"] if "position" not in f]
    keep = ("checkpoint", "protocol", "spec_hash", "hardware", "versions", "data_override")
    summary = summarize(store.dir, identity, index_faults,
                        {**{k: first.get(k) for k in keep}, "kind": kind,
                         "merged_from": [os.path.relpath(p) for p in files], "date": utc_now(),
                         "provenance": provenance()},
                        walls=[(d.get("wall_s") or 0.0) for d in docs])
    atomic_write_json(store.summary_path, summary)
    return summary


def compare_runs(path_a: str, path_b: str, tie_margin: float) -> dict:
    a, b = load_summary(path_a), load_summary(path_b)
    sa, sb = read_scores(a["_scores_dir"]), read_scores(b["_scores_dir"])
    if sa.scores.shape[1:] != sb.scores.shape[1:] and len(sa.scores) and len(sb.scores):
        raise InputError(f"the runs score different class counts ({sa.scores.shape[1]} vs {sb.scores.shape[1]})")
    result = metrics.agreement(sa.video_ids, sa.scores, sb.video_ids, sb.scores, tie_margin)
    if not result["n_common"]:
        raise InputError(f"{path_a} and {path_b} have no video in common")
    result.update(a={"path": path_a, "framework": a["framework"], "top1": a.get("top1"), "top5": a.get("top5")},
                  b={"path": path_b, "framework": b["framework"], "top1": b.get("top1"), "top5": b.get("top5")},
                  tie_margin=tie_margin, same_weights=a.get("weights_sha256") == b.get("weights_sha256"),
                  same_protocol=a.get("spec_hash") == b.get("spec_hash"))
    return result
