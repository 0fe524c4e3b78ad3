"""Kinetics-400 validation of the I3D-NL network in one framework, resumable and shardable.

    python -m harness.evaluate --framework ms --data-root /data/k400 --checkpoint CKPT \
        --data-preset mmaction2_test_10x3 --out results/ms_k400_10x3.json
    python -m harness.evaluate ... --resume                 # after a crash or kill -9
    torchrun --nproc_per_node 2 -m harness.evaluate ...     # one shard per process (RANK/WORLD_SIZE)
    python -m harness.evaluate --merge results/run.shard0of2.json results/run.shard1of2.json \
        --out results/run.json
    python -m harness.evaluate --compare results/torch.json results/ms.json

Per-video scores are written as they are produced, in chunks (``<out>.scores/``) replaced
atomically, so an interrupted run loses at most the chunk in progress and ``--resume``
ends with the same scores and summary as an uninterrupted run. Metrics are computed from
the saved scores by :mod:`harness.metrics`, which the report can call again.

Sharding follows the launcher: ``RANK``/``WORLD_SIZE`` (torchrun), ``RANK_ID``/``RANK_SIZE``
(MindSpore), ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, or ``--shard i/n``; shard
``i`` takes videos ``i, i+n, ...`` of the index and writes ``<out>.shard<i>of<n>.json``.

Without ``--checkpoint`` the weights are seeded random ones (made by the torch runner,
BN statistics calibrated on clips of the dataset), labelled as such in the summary: useful to
compare frameworks, meaningless as accuracy. Exit status: 0 ok, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset
from frameworks.spec.data_presets import DEFAULT_DATA_PRESET, PRESETS as DATA_PRESETS
from frameworks.spec.data_presets import data_preset_hash, get_data_preset
from harness import metrics
from harness.cli import InputError, OneLineParser, failure_line, run_module

log = logging.getLogger("harness.evaluate")

SUMMARY_VERSION = 1
IDENTITY_KEYS = ("framework", "arch", "arch_hash", "data_preset", "data_preset_hash", "checkpoint_sha256",
                 "weights_sha256",
                 "split", "n_index", "limit", "num_classes")


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_argument_group("what to do (default: evaluate)")
    mode.add_argument("--merge", nargs="+", metavar="SHARD", help="merge shard summaries (JSON files or folders)")
    mode.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                      help="agreement of two runs over their common videos")
    run = p.add_argument_group("evaluation")
    run.add_argument("--framework", help="torch/pt or mindspore/ms")
    run.add_argument("--data-root", help="dataset root (the seed's Kinetics layout, or the prefix of a list file)")
    run.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default {DEFAULT_PRESET})")
    run.add_argument("--data-preset", default=DEFAULT_DATA_PRESET, choices=list(DATA_PRESETS), metavar="NAME",
                     help=f"clip protocol (default {DEFAULT_DATA_PRESET}; one of {', '.join(DATA_PRESETS)})")
    run.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                     help="change one field of the data preset (e.g. crop_size=64 for a test-sized run); recorded")
    run.add_argument("--split", default="val")
    run.add_argument("--annotations", help="annotation file: the split's CSV, or an mmaction2 list file (.txt)")
    run.add_argument("--checkpoint", help="weights (any format harness.convert reads, or a registry name); "
                                          "default: seeded random weights")
    run.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    run.add_argument("--num-classes", type=int, help="override the preset's number of classes")
    run.add_argument("--limit", type=int, help="only the first N videos of the index")
    run.add_argument("--batch-size", type=int, default=1, help="videos per forward pass (default 1)")
    run.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0 = in process)")
    run.add_argument("--decoder", choices=["decord", "pyav"], help="default: the data preset's")
    run.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    run.add_argument("--ms-mode", choices=["graph", "pynative"], default="graph")
    run.add_argument("--threads", type=int, help="framework threads (default: cores / shards)")
    run.add_argument("--shard", metavar="I/N", help="evaluate shard I of N (default: from the launcher's env)")
    run.add_argument("--chunk-videos", type=int, default=32, help="videos per saved score chunk (default 32)")
    run.add_argument("--out", help="summary JSON (default results/<framework>_<arch>_<preset>.json); "
                                   "scores go to <out without .json>.scores/")
    run.add_argument("--resume", action="store_true", help="continue from the chunks already saved")
    p.add_argument("--json", metavar="OUT", help="(--compare) also write the agreement as JSON")
    p.add_argument("--tie-margin", type=float, default=1e-4,
                   help="(--compare) a top-1 flip whose top-two scores lie within this margin is a near-tie")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _shard_from(args) -> Tuple[int, int]:
    if args.shard:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise InputError(f"--shard must be I/N, got {args.shard!r}") from None
    else:
        env = os.environ
        for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("RANK_ID", "RANK_SIZE")):
            if rank_key in env and size_key in env:
                i, n = int(env[rank_key]), int(env[size_key])
                break
        else:
            if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
                i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
                n = int(env["SLURM_ARRAY_TASK_COUNT"])
            else:
                i, n = 0, 1
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard {i}/{n} is out of range")
    return i, n


def _parse_overrides(items: List[str], preset) -> dict:
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(preset)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise InputError(f"--data-override {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        current = getattr(preset, key)
        try:
            out[key] = type(current)(value) if not isinstance(current, (tuple, type(None))) else json.loads(value)
        except (ValueError, json.JSONDecodeError):
            raise InputError(f"--data-override {item!r}: bad value for {key}") from None
        if isinstance(current, tuple):
            out[key] = tuple(out[key])
    return out


# ----------------------------------------------------------------------------- paths & chunks
def _paths(out: str) -> Tuple[str, str]:
    stem = out[:-5] if out.endswith(".json") else out
    return stem + ".json", stem + ".scores"


def _atomic_write_json(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_chunk(scores_dir: str, number: int, chunk: dict) -> None:
    path = os.path.join(scores_dir, f"chunk-{number:06d}.npz")
    fd, tmp = tempfile.mkstemp(dir=scores_dir, suffix=".tmp.npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, positions=np.asarray(chunk["positions"], np.int64),
                 video_ids=np.asarray(chunk["video_ids"], dtype=str),
                 labels=np.asarray(chunk["labels"], np.int64),
                 scores=np.asarray(chunk["scores"], np.float32).reshape(len(chunk["positions"]), -1),
                 covered_through=np.int64(chunk["covered_through"]),
                 faults=np.asarray(json.dumps(chunk["faults"])),
                 seconds=np.asarray(json.dumps(chunk["seconds"])))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_scores(scores_dir: str) -> dict:
    """Every saved chunk of a run, concatenated in index order."""
    positions, ids, labels, scores, faults, seconds = [], [], [], [], [], []
    covered = -1
    # in-progress files are mkstemp's "tmp*.tmp.npz", which this pattern never matches
    for path in sorted(glob.glob(os.path.join(scores_dir, "chunk-*.npz"))):
        with np.load(path) as z:
            positions.append(z["positions"])
            ids.extend(z["video_ids"].tolist())
            labels.append(z["labels"])
            scores.append(z["scores"])
            covered = max(covered, int(z["covered_through"]))
            faults.extend(json.loads(str(z["faults"])))
            seconds.append(json.loads(str(z["seconds"])))
    if not positions:
        return {"positions": np.zeros(0, np.int64), "video_ids": [], "labels": np.zeros(0, np.int64),
                "scores": np.zeros((0, 0), np.float32), "covered_through": -1, "faults": [], "seconds": []}
    return {"positions": np.concatenate(positions), "video_ids": ids, "labels": np.concatenate(labels),
            "scores": np.concatenate(scores), "covered_through": covered, "faults": faults, "seconds": seconds}


# ----------------------------------------------------------------------------- provenance
def spec_hash(arch_cfg, data_preset) -> str:
    return hashlib.sha256(f"{arch_hash(arch_cfg)}:{data_preset_hash(data_preset)}".encode()).hexdigest()[:16]


def _random_weights(cfg, preset, seed: int, cache_dir: str, index, calibration_videos: int = 16) -> str:
    """Seeded random weights from the torch runner, in its own process (so MindSpore and
    torch never share one), cached beside the scores so a resumed run reuses them.

    BN statistics are calibrated on one clip from each of up to ``calibration_videos``
    videos spread over the index (decoded by a loader worker process): noise calibration does not transfer to real clips, nor
    does one video's to another's, and five dot-product non-local blocks (cubic in their
    input's scale) amplify any mismatch into NaN.
    """
    from harness.data import ClipLoader, DatasetIndex

    path = os.path.join(cache_dir, f"random_weights_seed{seed}.npz")
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    step = max(1, len(index.records) // calibration_videos)
    picked = DatasetIndex(index.records[::step][: 2 * calibration_videos], index.label_map, type(index.faults)())
    # decoded in a worker process: decord must not enter this process before MindSpore
    loader = ClipLoader(picked, preset, workers=1)
    clips = [item.clips[:1] for _, item in zip(range(calibration_videos), loader)]
    if not clips:
        raise InputError("random weights are calibrated on videos, and no video of the index decodes")
    clip = np.concatenate(clips)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, clip_path = os.path.join(tmp, "cfg.json"), os.path.join(tmp, "clip.npy")
        with open(cfg_path, "w") as f:
            json.dump(cfg.to_dict(), f)
        np.save(clip_path, clip.astype(np.float32))
        proc = run_module("harness.worker", ["--framework", "torch", "--config", cfg_path, "--input", clip_path,
                                             "--init-seed", str(seed), "--save-weights", path + ".tmp.npz"])
    if proc.returncode != 0:
        raise InputError(f"random weights need torch: {failure_line(proc, 'worker failed')}")
    os.replace(path + ".tmp.npz", path)
    return path


# ----------------------------------------------------------------------------- evaluate
def evaluate(args) -> dict:
    from harness.backends import BackendError, canonical_framework, make_runner
    from harness.checkpoints import CheckpointError, load_weights
    from harness.checkpoints.io import arrays_sha256
    from harness.data import ClipLoader, DatasetError, DatasetIndex, build_index

    if not args.framework or not args.data_root:
        raise InputError("--framework and --data-root are required to evaluate")
    try:
        framework = canonical_framework(args.framework)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if framework == "mmaction2":
        raise InputError("evaluate runs our implementations: --framework torch or ms")
    rank, world = _shard_from(args)
    cfg = get_preset(args.arch, **({"num_classes": args.num_classes} if args.num_classes else {}))
    preset = get_data_preset(args.data_preset)
    overrides = _parse_overrides(args.data_override, preset)
    if overrides:
        try:
            preset = preset.replace(**overrides)
        except (ValueError, TypeError) as exc:
            raise InputError(f"--data-override: {exc}") from None
    out = args.out or os.path.join("results", f"{framework}_{cfg.name}_{preset.name}.json")
    if world > 1:
        stem = out[:-5] if out.endswith(".json") else out
        out = f"{stem}.shard{rank}of{world}.json"
    summary_path, scores_dir = _paths(out)

    try:
        index = build_index(args.data_root, args.split, annotations=args.annotations, label_order=preset.label_order)
    except DatasetError as exc:
        raise InputError(str(exc)) from None
    n_index = len(index)
    index = index.limit(args.limit)
    positions = list(range(len(index)))[rank::world]

    # weights
    if args.checkpoint:
        try:
            loaded = load_weights(args.checkpoint, cfg)
        except CheckpointError as exc:
            raise InputError(str(exc)) from None
        arrays, checkpoint_label, checkpoint_sha = loaded.arrays, loaded.path, loaded.sha256
        print(f"weights: {loaded.describe()}", file=sys.stderr, flush=True)
    else:
        path = _random_weights(cfg, preset, args.seed, scores_dir, index)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        checkpoint_label = f"random (seed {args.seed}; BN statistics calibrated on clips of this dataset)"
        checkpoint_sha = arrays_sha256(arrays)  # no file to name: the weights' own digest

    # Only now the framework: the random weights' torch process must not inherit the oneDNN
    # ISA cap the MindSpore runner sets, and MindSpore 2.10 aborts ("random_device could not
    # be read") if decord entered this process before it (so nothing above decodes here).
    threads = args.threads or max(1, (os.cpu_count() or 1) // world)
    try:
        extra = {"mode": args.ms_mode} if framework == "ms" else {}
        runner = make_runner(framework, device=args.device, threads=threads, **extra)
    except (BackendError, ValueError) as exc:
        raise InputError(str(exc)) from None

    identity = {"framework": framework, "arch": cfg.name, "arch_hash": arch_hash(cfg),
                "data_preset": preset.name, "data_preset_hash": data_preset_hash(preset),
                "checkpoint_sha256": checkpoint_sha, "weights_sha256": arrays_sha256(arrays),
                "split": args.split, "n_index": n_index, "limit": args.limit, "num_classes": cfg.num_classes, "shard": [rank, world]}
    os.makedirs(scores_dir, exist_ok=True)
    run_file = os.path.join(scores_dir, "run.json")
    done = read_scores(scores_dir)
    if os.path.isfile(run_file) and (args.resume or done["covered_through"] >= 0):
        with open(run_file) as f:
            previous = json.load(f)
        if not args.resume:
            raise InputError(f"{scores_dir} holds scores of an earlier run; pass --resume to continue it "
                             "or remove the folder")
        changed = [k for k in identity if previous.get(k) != identity[k]]
        if changed:
            raise InputError(f"--resume: the saved run differs in {', '.join(changed)}; use another --out")
    elif done["covered_through"] >= 0:
        raise InputError(f"{scores_dir} holds scores but no run.json; remove it or use another --out")
    _atomic_write_json(run_file, identity)

    remaining = [p for p in positions if p > done["covered_through"]]
    sub_index = DatasetIndex([index.records[p] for p in remaining], index.label_map, type(index.faults)(),
                             index.split, index.root, index.annotation, index.source)
    position_of = {index.records[p].video_id: p for p in remaining}

    try:
        runner.build(cfg)
        runner.load(arrays)
    except (BackendError, ValueError) as exc:
        raise InputError(str(exc)) from None

    loader = ClipLoader(sub_index, preset, decoder=args.decoder, workers=args.workers)
    chunk_number = len(glob.glob(os.path.join(scores_dir, "chunk-*.npz")))
    chunk = _new_chunk(done["covered_through"])
    n_faults_seen = 0
    model_s = wait_s = 0.0
    first_batch_s, first_batch_views = None, 0
    views = 0
    t_loop = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(remaining), unit="video", disable=args.quiet, desc=f"{framework} {preset.protocol}",
               dynamic_ncols=True)
    t_wait = time.perf_counter()
    for batch in loader.batches(args.batch_size):
        wait_s += time.perf_counter() - t_wait
        clips = batch.flat()
        t0 = time.perf_counter()
        out_scores = runner.forward(clips)
        dt = time.perf_counter() - t0
        if first_batch_s is None:
            first_batch_s, first_batch_views = dt, clips.shape[0]
        model_s += dt
        views += clips.shape[0]
        per_video = out_scores.reshape(len(batch), batch.views_per_video, -1)
        for vid, label, view_scores in zip(batch.video_ids, batch.labels, per_video):
            score = preset.combine(view_scores) if cfg.head == "fc" else view_scores.astype(np.float64).mean(0)
            chunk["positions"].append(position_of[vid])
            chunk["video_ids"].append(vid)
            chunk["labels"].append(int(label))
            chunk["scores"].append(score.astype(np.float32))
        new_faults = loader.faults.faults[n_faults_seen:]
        n_faults_seen = len(loader.faults.faults)
        chunk["faults"].extend(dict(f.to_dict(), position=position_of[f.video_id]) for f in new_faults)
        chunk["covered_through"] = max([chunk["covered_through"]] + chunk["positions"][-len(batch):]
                                       + [position_of[f.video_id] for f in new_faults])
        chunk["seconds"].append([len(batch), int(clips.shape[0]), dt])
        bar.update(len(batch) + sum(1 for f in new_faults if f.skipped))
        bar.set_postfix(clips_s=f"{views / max(time.perf_counter() - t_loop, 1e-9):.2f}")
        if len(chunk["positions"]) >= args.chunk_videos:
            _write_chunk(scores_dir, chunk_number, chunk)
            chunk_number += 1
            chunk = _new_chunk(chunk["covered_through"])
        t_wait = time.perf_counter()
    wall = time.perf_counter() - t_loop
    bar.close()
    new_faults = loader.faults.faults[n_faults_seen:]
    chunk["faults"].extend(dict(f.to_dict(), position=position_of[f.video_id]) for f in new_faults)
    if remaining:
        chunk["covered_through"] = max(remaining)
    if chunk["positions"] or chunk["faults"] or remaining:
        _write_chunk(scores_dir, chunk_number, chunk)

    timing = {"wall_s": wall, "model_s": model_s, "data_wait_s": wait_s, "views": views,
              "first_batch_s": first_batch_s or 0.0, "first_batch_views": first_batch_views}
    summary = summarize(scores_dir, identity, index_faults=[f.to_dict() for f in index.faults.faults],
                        timing=timing)
    summary.update({
        "checkpoint": checkpoint_label, "protocol": preset.protocol, "spec_hash": spec_hash(cfg, preset),
        "data_root": os.path.abspath(args.data_root), "annotations": index.annotation,
        "data_override": overrides, "decoder": loader.decoder, "batch_size": args.batch_size,
        "workers": args.workers, "device": args.device, "threads": threads,
        "ms_mode": args.ms_mode if framework == "ms" else None,
        "hardware": runner.hardware(), "versions": runner.versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "scores": os.path.relpath(scores_dir, os.path.dirname(os.path.abspath(summary_path))),
        "resumed": bool(done["covered_through"] >= 0),
    })
    _atomic_write_json(summary_path, summary)
    summary["_path"] = summary_path
    return summary


def _new_chunk(covered_through: int) -> dict:
    return {"positions": [], "video_ids": [], "labels": [], "scores": [], "faults": [],
            "covered_through": covered_through, "seconds": []}


def summarize(scores_dir: str, identity: dict, index_faults: List[dict], timing: Optional[dict] = None) -> dict:
    """The summary of a run from its saved scores (and this session's timing, if any)."""
    saved = read_scores(scores_dir)
    faults = list(index_faults) + sorted(saved["faults"], key=lambda f: f["position"])
    counts: Dict[str, int] = {}
    for f in faults:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    acc = metrics.accuracy_summary(saved["scores"], saved["labels"]) if len(saved["labels"]) else \
        {"top1": float("nan"), "top5": float("nan"), "mean_class_accuracy": float("nan")}
    # throughput over every session that produced the saved chunks
    sessions = [s for chunk in saved["seconds"] for s in chunk]
    views = sum(s[1] for s in sessions)
    model_s = sum(s[2] for s in sessions)
    doc = {"summary_version": SUMMARY_VERSION, **{k: identity[k] for k in identity},
           "n_videos": int(len(saved["labels"])),
           "n_missing": sum(1 for f in faults if f.get("skipped", True)),
           "faults": {"counts": counts, "list": faults},
           **acc}
    doc["model_clips_per_s"] = views / model_s if model_s > 0 else None
    if timing:
        # the first forward pays for graph compilation / allocator warm-up: reported apart
        steady = timing["model_s"] - timing["first_batch_s"]
        steady_views = timing["views"] - timing["first_batch_views"]
        doc.update(
            clips_per_s=timing["views"] / timing["wall_s"] if timing["wall_s"] > 0 else None,
            data_wait_share=timing["data_wait_s"] / timing["wall_s"] if timing["wall_s"] > 0 else None,
            wall_s=timing["wall_s"], first_batch_s=timing["first_batch_s"],
            model_clips_per_s_steady=(steady_views / steady) if steady > 0 else None,
        )
    return doc


# ----------------------------------------------------------------------------- merge & compare
def _summary_files(items: List[str]) -> List[str]:
    files = []
    for item in items:
        if os.path.isdir(item):
            files += sorted(glob.glob(os.path.join(item, "*.shard*of*.json")))
        else:
            files.append(item)
    if not files:
        raise InputError("nothing to merge")
    return files


def _load_summary(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read summary {path}: {exc}") from None
    if "summary_version" not in doc or "scores" not in doc:
        raise InputError(f"{path} is not a harness.evaluate summary")
    doc["_scores_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), doc["scores"])
    return doc


def merge(items: List[str], out: str) -> dict:
    docs = [_load_summary(p) for p in _summary_files(items)]
    first = docs[0]
    for d in docs[1:]:
        changed = [k for k in IDENTITY_KEYS if d.get(k) != first.get(k)]
        if changed:
            raise InputError(f"shards differ in {', '.join(changed)}; they are not one run")
    worlds = {tuple(d["shard"])[1] for d in docs}
    ranks = sorted(d["shard"][0] for d in docs)
    if len(worlds) != 1 or ranks != list(range(worlds.pop())):
        raise InputError(f"shards {ranks} do not cover 0..n-1 exactly once")
    summary_path, scores_dir = _paths(out)
    os.makedirs(scores_dir, exist_ok=True)
    merged = {"positions": [], "video_ids": [], "labels": [], "scores": [], "faults": [], "seconds": []}
    for d in docs:
        s = read_scores(d["_scores_dir"])
        merged["positions"] += s["positions"].tolist()
        merged["video_ids"] += s["video_ids"]
        merged["labels"] += s["labels"].tolist()
        merged["scores"] += list(s["scores"])
        merged["faults"] += s["faults"]
        merged["seconds"] += [x for chunk in s["seconds"] for x in chunk]
    order = np.argsort(merged["positions"], kind="stable")
    for old in glob.glob(os.path.join(scores_dir, "chunk-*.npz")):
        os.remove(old)
    _write_chunk(scores_dir, 0, {
        "positions": [merged["positions"][i] for i in order], "video_ids": [merged["video_ids"][i] for i in order],
        "labels": [merged["labels"][i] for i in order], "scores": [merged["scores"][i] for i in order],
        "faults": merged["faults"], "covered_through": max(merged["positions"], default=-1),
        "seconds": merged["seconds"]})
    identity = {k: first[k] for k in IDENTITY_KEYS}
    identity["shard"] = [0, 1]
    index_faults = [f for f in first["faults"]["list"] if "position" not in f]
    summary = summarize(scores_dir, identity, index_faults)
    keep = ("checkpoint", "protocol", "spec_hash", "data_root", "annotations", "data_override", "decoder",
            "device", "hardware", "versions", "ms_mode")
    summary.update({k: first.get(k) for k in keep})
    walls = [d.get("wall_s") or 0.0 for d in docs]
    views = sum(x[1] for x in merged["seconds"])
    summary.update(merged_from=[os.path.relpath(p) for p in _summary_files(items)],
                   clips_per_s=views / max(walls) if max(walls) > 0 else None, wall_s=max(walls),
                   date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   scores=os.path.relpath(scores_dir, os.path.dirname(os.path.abspath(summary_path))))
    _atomic_write_json(summary_path, summary)
    summary["_path"] = summary_path
    return summary


def compare(path_a: str, path_b: str, tie_margin: float) -> dict:
    a, b = _load_summary(path_a), _load_summary(path_b)
    sa, sb = read_scores(a["_scores_dir"]), read_scores(b["_scores_dir"])
    result = metrics.agreement(sa["video_ids"], sa["scores"], sb["video_ids"], sb["scores"], tie_margin)
    result.update(a={"path": path_a, "framework": a["framework"], "top1": a["top1"], "top5": a["top5"]},
                  b={"path": path_b, "framework": b["framework"], "top1": b["top1"], "top5": b["top5"]},
                  tie_margin=tie_margin, same_weights=a["weights_sha256"] == b["weights_sha256"],
                  same_protocol=a["spec_hash"] == b["spec_hash"])
    return result


def _print_summary(s: dict) -> None:
    pct = lambda x: "nan" if x is None or x != x else f"{100 * x:.2f}"  # noqa: E731
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    print(f"{s['framework']} {s['arch']} {s['data_preset']} ({s.get('protocol', '')}): "
          f"top1 {pct(s['top1'])}  top5 {pct(s['top5'])}  mean class {pct(s['mean_class_accuracy'])}  "
          f"on {s['n_videos']} videos ({s['n_missing']} missing or unreadable)")
    if s.get("clips_per_s") is not None:
        print(f"throughput: {fmt(s['clips_per_s'])} clips/s end to end, {fmt(s.get('model_clips_per_s'))} "
              f"model-only, data wait {pct(s.get('data_wait_share'))}% of the time")
    counts = {k: v for k, v in s["faults"]["counts"].items() if v}
    if counts:
        print("faults: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"summary: {s['_path']}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.compare:
            result = compare(*args.compare, tie_margin=args.tie_margin)
            print(f"{result['a']['framework']} vs {result['b']['framework']} over {result['n_common']} videos: "
                  f"top-1 agreement {100 * result['top1_agreement']:.2f}%, top-5 set agreement "
                  f"{100 * result['top5_set_agreement']:.2f}%, max |delta score| {result['max_abs_delta']:.3g}, "
                  f"mean {result['mean_abs_delta']:.3g}; {result['n_top1_differ']} top-1 flips "
                  f"({result['n_near_ties']} near-ties)")
            for what in ("weights", "protocol"):
                if not result[f"same_{what}"]:
                    print(f"warning: the two runs used different {what}", file=sys.stderr)
            for d in result["top1_differ"]:
                print(f"  {d['video']}: {d['top1_a']} vs {d['top1_b']} (top-2 gaps {d['top2_gap_a']:.2g}, "
                      f"{d['top2_gap_b']:.2g})")
            if args.json:
                _atomic_write_json(args.json, result)
            return 0
        if args.merge:
            if not args.out:
                raise InputError("--merge needs --out")
            _print_summary(merge(args.merge, args.out))
            return 0
        _print_summary(evaluate(args))
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
