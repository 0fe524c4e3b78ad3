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
ends with the same scores and summary as an uninterrupted run (see :mod:`harness.scores`).
Accuracy is reported over the scored videos and over every listed video with the missing
ones counted wrong (``top1_listed``: Caffe2's denominator).

Sharding follows the launcher: ``RANK``/``WORLD_SIZE`` (torchrun), ``RANK_ID``/``RANK_SIZE``
(MindSpore), ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, or ``--shard i/n``; shard
``i`` takes videos ``i, i+n, ...`` of the index and writes ``<out>.shard<i>of<n>.json``.

Without ``--checkpoint`` the weights are seeded random ones (made by the torch runner,
BN statistics calibrated on clips of the dataset), labelled as such in the summary: useful to
compare frameworks, meaningless as accuracy.

Videos are read from under ``--data-root`` only: a row whose video lies outside it (an id
such as ``../../x``, an absolute list-file path, a symbolic link out of it) is an
``outside_root`` fault of that video, never opened; ``--allow-outside-root`` reads them
(see :mod:`harness.data.index`).

Exit status (one line on stderr for 1 and 2, never a traceback):

* 0: the run scored videos (an unlabelled split gives scores and no accuracy; that is a
  result). A shard (``WORLD_SIZE`` > 1) that scored nothing also exits 0, with a note: a
  non-zero exit would make torchrun stop the other shards; ``--merge`` judges the whole run.
* 1: the run happened and what it exists to produce is not there: no video was scored
  (every listed video failed to decode, timed out or crashed its worker; the summary with
  every fault is written and named), or some video's scores are not finite (NaN or inf).
  ``--merge`` of shards that scored no video is 1 too.
* 2: bad input, refused before any work where it can be: arguments, paths, the checkpoint,
  a resume that does not match, and an index with no video to run (a CSV with only its
  header, or every row refused while indexing: unknown labels, missing or empty files,
  bad rows, paths outside the root); also a write that fails (full disk, ``ulimit -f``):
  every file is written atomically, so nothing half-written is left, and the score chunks
  already saved are kept for ``--resume``.

stdout carries what is run and its results (arch, weights, notes and caveats, the
summary); stderr carries the progress bar and, on failure, the one error line. Names that
come from files (class names, video ids, paths) are printed through
:func:`harness.text.printable`: a terminal escape in a CSV prints as its characters.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, arch_hash
from frameworks.spec.data_presets import DEFAULT_DATA_PRESET, PRESETS as DATA_PRESETS
from frameworks.spec.data_presets import DECODERS, DataPreset, data_preset_hash, get_data_preset, spec_hash
from harness import scores as score_store
from harness.errors import CheckFailed, InputError
from harness.provenance import provenance, result_doc, utc_now
from harness.cli import (OneLineParser, add_allow_outside_root, add_device, add_verbose,
                         caveats_to_stdout, nonnegative_int, num_classes, positive_int, run_main, say, setup_logging,
                         tolerance)
from harness.runners import add_runner_arguments, names_help, runner_settings
from harness.files import (MadeFolders, atomic_path, atomic_write_json, check_input_file, check_output_dir,
                           os_reason, undone_on_failure)
from harness.scores import Chunk, ScoreStore, read_scores  # noqa: F401 - read_scores: public here too
from harness.text import printable


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The options of a usual run first; data, network, speed, other modes in groups of their own."""
    p = OneLineParser(prog="python -m harness.evaluate", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", help=names_help("evaluates"))
    p.add_argument("--data-root", help="dataset root (the seed's Kinetics layout, or the prefix of a list file)")
    p.add_argument("--checkpoint", help="weights (any format harness.convert reads, or a registry name); "
                                        "default: seeded random weights")
    p.add_argument("--out", help="summary JSON (default runs/<framework>_<arch>_<preset>.json); "
                                 "scores go to <out without .json>.scores/")
    p.add_argument("--resume", action="store_true", help="continue from the chunks already saved")
    p.add_argument("--limit", type=positive_int, help="only the first N videos of the index")
    _data_options(p.add_argument_group("data"))
    _network_options(p.add_argument_group("network and weights"))
    _speed_options(p.add_argument_group("speed and sharding"))
    add_runner_arguments(p.add_argument_group("framework options"))
    mode = p.add_argument_group("other modes (instead of an evaluation)")
    mode.add_argument("--merge", nargs="+", metavar="SHARD", help="merge shard summaries (JSON files or folders)")
    mode.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                      help="agreement of two runs over their common videos")
    mode.add_argument("--json", metavar="OUT", help="(--compare) also write the agreement as JSON")
    mode.add_argument("--tie-margin", type=tolerance, default=1e-4,
                      help="(--compare) a top-1 flip whose top-two scores lie within this margin is a near-tie "
                           "(default 1e-4)")
    out = p.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_verbose(out)
    return p


def _data_options(data) -> None:
    data.add_argument("--data-preset", choices=list(DATA_PRESETS), metavar="NAME",
                      help=f"clip protocol (default: the checkpoint's registry entry's, else {DEFAULT_DATA_PRESET}; "
                           f"one of {', '.join(DATA_PRESETS)})")
    data.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                      help="change one field of the data preset (e.g. crop_size=64 for a test-sized run); recorded")
    data.add_argument("--split", default="val", help="split name: <root>/kinetics-400_<split>.csv (default val)")
    data.add_argument("--annotations", help="annotation file: the split's CSV, or an mmaction2 list file (.txt)")
    data.add_argument("--decoder", choices=DECODERS, help="default: the data preset's")
    add_allow_outside_root(data)


def _network_options(net) -> None:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    net.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default: the checkpoint's registry entry, or the arch convert "
                          f"recorded beside it, else {DEFAULT_PRESET})")
    net.add_argument("--num-classes", type=num_classes, help="override the preset's number of classes")
    net.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "--checkpoint"))
    net.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")


def _speed_options(run) -> None:
    run.add_argument("--batch-size", type=positive_int, default=1, help="videos per forward pass (default 1)")
    run.add_argument("--workers", type=nonnegative_int, default=2,
                     help="decoding processes (default 2; 0 = in process)")
    add_device(run)
    run.add_argument("--threads", type=positive_int, help="framework threads (default: cores / shards)")
    run.add_argument("--shard", metavar="I/N", help="evaluate shard I of N (default: from the launcher's env)")
    run.add_argument("--chunk-videos", type=positive_int, default=32, help="videos per saved score chunk (default 32)")


def check_inputs(data_root: Optional[str], checkpoint: Optional[str], annotations: Optional[str]) -> Optional[str]:
    """The inputs of a run, refused in one line before any output is made: the data root is
    a folder, the annotation file a readable file, the checkpoint a readable file or a
    registry name already fetched. Returns the checkpoint's file."""
    from harness.checkpoints.registry import resolve

    if data_root is not None:
        if not os.path.exists(data_root):
            raise InputError(f"--data-root {data_root}: no such folder")
        if not os.path.isdir(data_root):
            raise InputError(f"--data-root {data_root} is a file, not a folder")
    if annotations:
        check_input_file(annotations, "--annotations")
    if not checkpoint:
        return None
    path = resolve(checkpoint, verify_digest=False)
    return check_input_file(path, "--checkpoint")


def shard_from(shard: Optional[str], env=os.environ) -> Tuple[int, int]:
    """``(rank, world)`` from ``--shard I/N`` or the launcher's environment variables."""
    def number(key: str, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise InputError(f"{key}={text!r} is not an integer") from None

    if shard:
        head, sep, tail = shard.partition("/")
        if not sep:
            raise InputError(f"--shard must be I/N, got {shard!r}")
        i, n = number("--shard I", head), number("--shard N", tail)
    else:
        for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("RANK_ID", "RANK_SIZE")):
            if rank_key in env and size_key in env:
                i, n = number(rank_key, env[rank_key]), number(size_key, env[size_key])
                break
        else:
            if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
                i = number("SLURM_ARRAY_TASK_ID", env["SLURM_ARRAY_TASK_ID"]) - number(
                    "SLURM_ARRAY_TASK_MIN", env.get("SLURM_ARRAY_TASK_MIN", "0"))
                n = number("SLURM_ARRAY_TASK_COUNT", env["SLURM_ARRAY_TASK_COUNT"])
            else:
                i, n = 0, 1
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard {i}/{n} is out of range")
    return i, n


def parse_overrides(items: List[str], preset) -> dict:
    """``FIELD=VALUE`` strings -> typed changes of a data preset (validated by the preset)."""
    fields = {f.name: f for f in dataclasses.fields(preset)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise InputError(f"--data-override {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(k for k in fields if k != 'name')}")
        current = getattr(preset, key)
        try:
            if value.lower() in ("null", "none") and "Optional" in str(fields[key].type):
                out[key] = None  # offset_seed=null, pre_resize_height=null: an optional field unset
            elif isinstance(current, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            elif isinstance(current, (tuple, type(None))):
                parsed = json.loads(value)
                out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
            else:
                out[key] = type(current)(value)
        except (ValueError, TypeError):
            raise InputError(f"--data-override {item!r}: bad value for {key}") from None
    return out


def with_overrides(preset, overrides: dict, flag: str = "--data-override"):
    """``preset`` with the changes of :func:`parse_overrides` applied; one it refuses is bad input."""
    if not overrides:
        return preset
    try:
        return preset.replace(**overrides)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{flag}: {exc}") from None


# ----------------------------------------------------------------------------- the request
@dataclass
class EvaluationRequest:
    """One evaluation run, decided from the command line (or by a caller) before any work."""

    framework: str
    cfg: I3DNLConfig
    preset: DataPreset
    data_root: str
    out: str
    overrides: dict = field(default_factory=dict)
    split: str = "val"
    annotations: Optional[str] = None
    checkpoint: Optional[str] = None
    trust: bool = False
    seed: int = 0
    limit: Optional[int] = None
    batch_size: int = 1
    workers: int = 2
    device: str = "cpu"
    runner_settings: dict = field(default_factory=dict)   # every framework's own options (runner_settings)
    threads: Optional[int] = None
    rank: int = 0
    world: int = 1
    chunk_videos: int = 32
    resume: bool = False
    quiet: bool = False
    allow_outside_root: bool = False

    @classmethod
    def from_args(cls, args, made: Optional[MadeFolders] = None) -> "EvaluationRequest":
        from harness.runners import require

        if not args.framework or not args.data_root:
            raise InputError("--framework and --data-root are required to evaluate")
        framework = require(args.framework, "evaluates", "evaluate")
        rank, world = shard_from(args.shard)
        check_inputs(args.data_root, args.checkpoint, args.annotations)
        cfg, preset, overrides, notes = protocol_from_args(args)
        out = args.out or os.path.join("runs", f"{framework}_{cfg.name}_{preset.name}.json")
        if world > 1:
            stem = out[:-5] if out.endswith(".json") else out
            out = f"{stem}.shard{rank}of{world}.json"
        check_run_outputs(out, [args.data_root, check_inputs(None, args.checkpoint, None), args.annotations],
                          made)
        for note in notes:
            say(note)
        return cls(framework=framework, cfg=cfg, preset=preset, data_root=args.data_root, out=out,
                   overrides=overrides, split=args.split, annotations=args.annotations, checkpoint=args.checkpoint,
                   trust=args.trust_checkpoint, seed=args.seed, limit=args.limit, batch_size=args.batch_size,
                   workers=args.workers, device=args.device, runner_settings=runner_settings(args), threads=args.threads,
                   rank=rank, world=world, chunk_videos=args.chunk_videos, resume=args.resume, quiet=args.quiet,
                   allow_outside_root=args.allow_outside_root)


def protocol_from_args(args) -> Tuple[I3DNLConfig, DataPreset, dict, List[str]]:
    """The arch and the data preset (with its overrides) a run's arguments choose, and the
    notes that say where each came from (printed once every check has passed)."""
    from harness.checkpoints.registry import registry_entry
    from harness.checkpoints.sidecar import choose_arch

    choice = choose_arch(args.arch, args.checkpoint, DEFAULT_PRESET, num_classes=args.num_classes)
    entry = registry_entry(args.checkpoint) if args.checkpoint else None
    preset_name = args.data_preset or (entry.data_preset if entry else DEFAULT_DATA_PRESET)
    source = "--data-preset" if args.data_preset else f"the registry entry {entry.name}" if entry else "the default"
    notes = [f"arch: {choice.cfg.name} (from {printable(choice.source)}); data preset: {preset_name} (from {source})"]
    for note in (choice.note(), f"note: --data-preset {preset_name} differs from the published protocol of this "
                 f"checkpoint ({entry.data_preset})" if entry and preset_name != entry.data_preset else None):
        if note:
            notes.append(printable(note))
    preset = get_data_preset(preset_name)
    overrides = parse_overrides(args.data_override, preset)
    if args.decoder:
        overrides["decoder"] = args.decoder
    return choice.cfg, with_overrides(preset, overrides), overrides, notes


def check_run_outputs(out: str, inputs: List[Optional[str]], made: Optional[MadeFolders] = None) -> None:
    """A run's summary file and scores folder: writable, never one of its inputs (the data
    root, the checkpoint, the annotation file), missing parent folders created."""
    summary_path, scores_dir = score_store.paths(out)
    (made if made is not None else MadeFolders()).check_path(summary_path, "--out", inputs=inputs)
    check_output_dir(scores_dir, "--out scores folder", inputs=inputs)


# ----------------------------------------------------------------------------- weights
def seeded_weights_for(req: EvaluationRequest, index, calibration_videos: int = 16) -> str:
    """Seeded random weights made by the torch runner in a child process (MindSpore and
    torch never share one), kept once in the cache (``$NLPARITY_CACHE/seeded/``) under a
    digest of everything they depend on, so that a resumed run, the other framework's run
    and a rerun reuse one file instead of writing 140 MB beside every run's scores.

    BN statistics are calibrated on one clip from each of up to ``calibration_videos``
    videos spread over the index (decoded by a loader worker process, since decord must
    not enter this process before MindSpore): noise calibration does not transfer to real
    clips, nor does one video's to another's, and five dot-product non-local blocks
    (cubic in their input's scale) amplify any mismatch into NaN.
    """
    import hashlib

    from harness.checkpoints.registry import cache_dir
    from harness.data import ClipLoader, DatasetIndex
    from harness.runners import RunnerError
    from harness.runners.child import run_job, seeded_weights_job

    step = max(1, len(index.records) // calibration_videos)
    picked = DatasetIndex(index.records[::step][: 2 * calibration_videos], index.label_map, type(index.faults)())
    loader = ClipLoader(picked, req.preset, workers=1)
    clips = [item.clips[:1] for _, item in zip(range(calibration_videos), loader)]
    if not clips:   # the run started, and not one video decodes: nothing scored (exit 1)
        raise CheckFailed(f"no video was scored: none of the {len(picked)} videos read to calibrate the random "
                          f"weights decodes ({_fault_line(f.to_dict() for f in loader.faults.faults)})")
    clip = np.ascontiguousarray(np.concatenate(clips), dtype=np.float32)
    key = hashlib.sha256(f"{arch_hash(req.cfg)}:{req.seed}:{clip.shape}".encode() + clip.tobytes()).hexdigest()[:24]
    folder = os.path.join(cache_dir(), "seeded")
    path = os.path.join(folder, f"{req.cfg.name}-seed{req.seed}-{key}.npz")
    if os.path.isfile(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot keep seeded weights in {folder}: {os_reason(exc)} (set NLPARITY_CACHE)") from None
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = os.path.join(tmp, "clip.npy")
        try:
            _save_clip(clip_path, clip)
        except OSError as exc:
            raise InputError(f"cannot write the calibration clip {clip_path}: {os_reason(exc)}") from None
        try:
            with atomic_path(path, suffix=".npz") as partial:
                run_job(seeded_weights_job(req.cfg, req.seed, partial, clip_path), tmp, "weights")
        except (OSError, RunnerError) as exc:
            code = getattr(exc, "errno", None)   # the child's OSError (writing the temporary file) carries its errno
            if not code:
                raise
            reason = os_reason(OSError(code, str(exc)))
            raise InputError(f"cannot write the seeded weights {path}: {reason} (they are kept under "
                             f"$NLPARITY_CACHE)") from None
    return path


def _save_clip(path: str, clip: np.ndarray) -> str:
    """``np.save`` through ``write``: numpy's own writer of a real file fails without an errno
    ("393216 requested and 16352 written"), this one with the reason (full disk, ``ulimit -f``)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(clip, dtype=np.float32))
    with open(path, "wb") as f:
        f.write(buf.getbuffer())
    return path


def _fault_line(faults) -> str:
    """Faults counted by kind, and the first one's video and reason: one printable line."""
    faults = list(faults)
    if not faults:
        return "no fault recorded"
    counts: Dict[str, int] = {}
    for f in faults:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    first = faults[0]
    return (", ".join(f"{k} {v}" for k, v in counts.items())
            + f"; first: {printable(first.get('id'), 80)}: {printable(first.get('reason'), 200)}")


def checkpoint_weights(checkpoint: str, cfg: I3DNLConfig, trust: bool, report=None):
    """A checkpoint's weights, loaded, checked runnable and named (on stdout, or to ``report``)."""
    from harness.checkpoints import check_runnable, load_weights

    loaded = load_weights(checkpoint, cfg, trust=trust)
    check_runnable(loaded.arrays, checkpoint)
    (report or say)(f"weights: {printable(loaded.describe())}")
    return loaded


def _weights(req: EvaluationRequest, index, store: ScoreStore) -> Tuple[Dict[str, np.ndarray], str, str]:
    """(canonical arrays, what they are, the checkpoint's digest or the arrays' own)."""
    from harness.checkpoints import check_runnable
    from harness.checkpoints.io import arrays_sha256

    if req.checkpoint:
        loaded = checkpoint_weights(req.checkpoint, req.cfg, req.trust)
        return loaded.arrays, loaded.path, loaded.sha256
    store.weights_file = seeded_weights_for(req, index)
    with np.load(store.weights_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    check_runnable(arrays, "random weights")
    say(f"weights: seeded random (seed {req.seed}) - a framework comparison, not an accuracy")
    label = f"random (seed {req.seed}; BN statistics calibrated on clips of this dataset)"
    return arrays, label, arrays_sha256(arrays)  # no file to name: the weights' own digest


# ----------------------------------------------------------------------------- evaluate
def evaluate(req: EvaluationRequest) -> dict:
    """plan (the request) -> index -> store -> weights -> runner -> scorer -> summary."""
    from harness.checkpoints.io import arrays_sha256
    from harness.data import build_index

    index = build_index(req.data_root, req.split, annotations=req.annotations, label_order=req.preset.label_order,
                        allow_outside_root=req.allow_outside_root).require_videos()
    n_index = len(index)
    index = index.limit(req.limit)
    store = ScoreStore(req.out)
    store.lock()
    with scoring([store], lambda exc: write_failure(exc, store)):
        store.check(req.resume)  # damaged files and an unasked-for resume: refused before any work
        arrays, checkpoint_label, checkpoint_sha = _weights(req, index, store)
        # seeded weights have no file: their checkpoint digest already is the arrays' own
        weights_sha = arrays_sha256(arrays) if req.checkpoint else checkpoint_sha
        identity = run_identity(req, n_index, index.annotation, checkpoint_sha, weights_sha)
        done = store.begin(identity, req.resume, req.cfg.num_classes)
        remaining = [p for p in range(req.rank, len(index), req.world) if p not in done.covered]
        scorer = Scorer(req, runner_for(req, arrays), store, identity, resumed=bool(done.n_chunks))
        timing = _score_videos(scorer, index, remaining)
        return scorer.summary([f.to_dict() for f in index.faults.faults], checkpoint_label, session=timing)


def write_failure(exc: OSError, store: ScoreStore) -> str:
    """The one line of a write that failed: the file it names (or the summary), the reason in
    words, and what was kept."""
    name = exc.filename if isinstance(exc.filename, str) else store.summary_path
    kept = (f"; the scores saved so far are kept in {store.dir}: run again with --resume" if store.next_chunk
            else "")
    return f"cannot write {printable(name)}: {os_reason(exc)}{kept}"


def run_identity(req: EvaluationRequest, n_index: int, annotation: str, checkpoint_sha: str,
                 weights_sha: str) -> dict:
    """Everything that changes a score (see :data:`harness.scores.IDENTITY_KEYS`)."""
    from harness.runners import runner_options

    return {"framework": req.framework, "arch": req.cfg.name, "arch_hash": arch_hash(req.cfg),
            "data_preset": req.preset.name, "data_preset_hash": data_preset_hash(req.preset),
            "checkpoint_sha256": checkpoint_sha, "weights_sha256": weights_sha,
            "split": req.split, "n_index": n_index, "limit": req.limit, "num_classes": req.cfg.num_classes,
            "data_root": os.path.abspath(req.data_root), "annotations": annotation,
            "decoder": req.preset.decoder, "device": req.device,
            "runner_options": runner_options(req.framework, req.runner_settings), "batch_size": req.batch_size,
            "shard": [req.rank, req.world]}


def runner_for(req: EvaluationRequest, arrays):
    """The framework, only now: the seeded weights' torch process must not inherit the
    oneDNN ISA cap the MindSpore runner sets, and MindSpore 2.10 aborts ("random_device
    could not be read") if decord entered this process before it (nothing above decodes here)."""
    threads = req.threads or max(1, (os.cpu_count() or 1) // req.world)
    return built_runner(req.framework, req.cfg, arrays, req.device, threads, req.runner_settings)


def built_runner(framework: str, cfg: I3DNLConfig, arrays, device: str, threads: Optional[int], settings: dict):
    """A runner with the network built and the weights loaded (a refusal is a one-line InputError)."""
    from harness.runners import make_runner, runner_options

    runner = make_runner(framework, device=device, threads=threads, **runner_options(framework, settings))
    try:
        runner.build(cfg)
        runner.load(arrays)
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None
    return runner


# ----------------------------------------------------------------------------- scoring
@contextlib.contextmanager
def scoring(stores: Sequence[ScoreStore], failure_line: Callable[[OSError], str],
            cleanup: Optional[Callable[[], None]] = None):
    """Run the block that scores into these locked stores. On success each is unlocked; on
    failure each is abandoned (a folder this process made and saved nothing into goes),
    ``cleanup`` runs, and a write that failed becomes bad input in ``failure_line``'s words."""
    def give_up() -> None:
        for store in stores:
            store.abandon()
        if cleanup:
            cleanup()

    try:
        yield
    except OSError as exc:
        give_up()
        raise InputError(failure_line(exc)) from None
    except BaseException:
        give_up()
        raise
    for store in stores:
        store.unlock()


class Scorer:
    """One run's scoring, the same for evaluate and drift: a batch of clips -> the network ->
    each video's score (its views combined as the preset says) -> the chunk in progress,
    written atomically every ``chunk_videos`` scored videos; a fault joins the chunk of the
    videos around it. :meth:`summary` writes the run's summary from what its chunks hold."""

    def __init__(self, req: EvaluationRequest, runner, store: ScoreStore, identity: dict, resumed: bool = False):
        self.req, self.runner, self.store = req, runner, store
        self.identity, self.resumed = identity, resumed
        self.chunk = Chunk()
        self.views = 0

    def fault(self, fault: dict) -> None:
        """A fault of the video at ``fault["position"]`` (a :meth:`Fault.to_dict` with its position)."""
        self.chunk.faults.append(fault)

    def score(self, positions: Sequence[int], video_ids: Sequence[str], labels: Sequence[int], clips: np.ndarray,
              wait_s: float = 0.0, since: Optional[float] = None) -> None:
        """Score one batch: ``clips`` is ``(B, V, 3, T, H, W)``. ``since``: when the batch was
        asked for (its wall time then counts the data wait); without it, the forward pass alone."""
        t0 = time.perf_counter()
        flat = clips.reshape((-1,) + clips.shape[2:])     # view v of video b is row b * V + v
        out = self.runner.forward(flat)
        model_s = time.perf_counter() - t0
        per_video = out.reshape(len(video_ids), clips.shape[1], -1)
        for position, vid, label, view_scores in zip(positions, video_ids, labels, per_video):
            self.chunk.add(position, vid, label, self.req.preset.video_score(view_scores, self.req.cfg.head))
        wall_s = model_s if since is None else time.perf_counter() - since
        self.chunk.seconds.append([len(video_ids), int(flat.shape[0]), model_s, wait_s, wall_s])
        self.views += int(flat.shape[0])
        if len(self.chunk.positions) >= self.req.chunk_videos:
            self.flush()

    def flush(self) -> None:
        """Write the chunk in progress (if it holds anything)."""
        if self.chunk:
            self.store.write(self.chunk, self.req.cfg.num_classes)
            self.chunk = Chunk()

    def summary(self, index_faults: List[dict], checkpoint: str, kind: str = "evaluation", **more) -> dict:
        """The run's summary, computed from its saved chunks and written beside them; ``more``
        adds the caller's own keys (evaluate's session timing, drift's steps)."""
        self.flush()
        req, runner = self.req, self.runner
        extra = {"kind": kind, "checkpoint": checkpoint, "weights_file": self.store.weights_file,
                 "protocol": req.preset.protocol, "spec_hash": spec_hash(req.cfg, req.preset),
                 "data_override": req.overrides, "workers": req.workers, "threads": runner.threads,
                 "hardware": runner.hardware(), "versions": runner.versions(), "date": utc_now(),
                 "resumed": self.resumed, **more, "provenance": provenance()}
        summary = score_store.summarize(self.store.dir, self.identity, index_faults=index_faults, extra=extra)
        atomic_write_json(self.store.summary_path, summary)
        summary["_path"] = self.store.summary_path
        return summary


def _score_videos(scorer: Scorer, index, remaining: List[int]) -> dict:
    """Score every remaining video of the index as the clip loader yields them, in batches."""
    from tqdm import tqdm

    from harness.data import ClipLoader, DatasetIndex

    req = scorer.req
    sub_index = DatasetIndex([index.records[p] for p in remaining], index.label_map, type(index.faults)(),
                             index.split, index.root, index.annotation, index.source)
    position_of = {index.records[p].video_id: p for p in remaining}
    loader = ClipLoader(sub_index, req.preset, workers=req.workers)
    n_faults_seen = 0
    bar = tqdm(total=len(remaining), unit="video", disable=req.quiet, dynamic_ncols=True,
               desc=f"{req.framework} {req.preset.protocol}")
    t_loop = t_wait = time.perf_counter()
    for batch in loader.batches(req.batch_size):
        wait = time.perf_counter() - t_wait
        new_faults = loader.faults.faults[n_faults_seen:]
        n_faults_seen = len(loader.faults.faults)
        for f in new_faults:
            scorer.fault(dict(f.to_dict(), position=position_of[f.video_id]))
        scorer.score([position_of[v] for v in batch.video_ids], batch.video_ids, batch.labels, batch.clips,
                     wait_s=wait, since=t_wait)
        bar.update(len(batch) + sum(1 for f in new_faults if f.skipped))
        bar.set_postfix(clips_s=f"{scorer.views / max(time.perf_counter() - t_loop, 1e-9):.2f}")
        t_wait = time.perf_counter()
    bar.close()
    for f in loader.faults.faults[n_faults_seen:]:
        scorer.fault(dict(f.to_dict(), position=position_of[f.video_id]))
    scorer.flush()
    return {"videos": len(remaining), "views": scorer.views, "wall_s": time.perf_counter() - t_loop}


# ----------------------------------------------------------------------------- printing
def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def print_summary(s: dict) -> None:
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    P = printable  # noqa: N806 - every name below may come from a file
    acc = (f"top1 {_pct(s['top1'])}  top5 {_pct(s['top5'])}  mean class {_pct(s['mean_class_accuracy'])}"
           if s.get("top1") is not None else f"no accuracy ({P(s.get('accuracy_note', 'no labels'))})")
    say(f"{P(s['framework'])} {P(s['arch'])} {P(s['data_preset'])} ({P(s.get('protocol', ''))}): {acc}  "
        f"on {s['n_videos']} videos ({s['n_missing']} missing or unreadable)")
    if s.get("top1_listed") is not None and s["n_missing"]:
        say(f"over all {s['n_listed']} listed videos (missing counted wrong): top1 {_pct(s['top1_listed'])}  "
            f"top5 {_pct(s['top5_listed'])}")
    if s.get("clips_per_s") is not None:
        say(f"throughput: {fmt(s['clips_per_s'])} clips/s end to end, {fmt(s.get('model_clips_per_s'))} "
            f"model-only, data wait {_pct(s.get('data_wait_share'))}% of the time")
    counts = {k: v for k, v in s["faults"]["counts"].items() if v}
    if counts:
        say("faults: " + ", ".join(f"{P(k)} {v}" for k, v in counts.items()))
    if s.get("data_override"):
        say("data preset overridden: " + ", ".join(f"{P(k)}={P(v)}" for k, v in s["data_override"].items())
            + " (not the published protocol)")
    if s.get("limit"):
        say(f"limited to the first {s['limit']} of {s.get('n_index')} listed videos (--limit)")
    if str(s.get("checkpoint", "")).startswith("random"):
        say("WEIGHTS: SEEDED RANDOM - these numbers compare frameworks; they are not an accuracy")
    else:
        say(f"weights: {P(s.get('checkpoint'))} (sha256 {P(str(s.get('checkpoint_sha256'))[:12])})")
    say(f"summary: {P(s['_path'])}")


def check_scored(summary: dict, shard: bool = False) -> None:
    """"No accuracy" is a failed run: a summary that scored no video is exit 1 (its faults
    named), except one shard of several (a non-zero exit would stop the others: the merge judges)."""
    if summary.get("n_videos"):
        return
    where = f"summary {printable(summary['_path'])}"
    listed = [f for f in summary["faults"]["list"] if f.get("skipped", True) and f["kind"] != "duplicate_row"]
    if shard:
        say(f"note: this shard scored no video ({_fault_line(listed)}); --merge the shards for the run")
        return
    raise CheckFailed(f"no video was scored: every one of the {summary.get('n_listed', 0)} listed videos failed "
                      f"({_fault_line(listed)}); {where}")


def _compare(args, made: MadeFolders) -> None:
    if args.json:
        made.check_path(args.json, "--json", inputs=args.compare)
    docs = [score_store.load_summary(p) for p in args.compare]
    if args.json:   # nor into either run's scores
        made.check_path(args.json, "--json", inputs=[d["_scores_dir"] for d in docs])
    result = score_store.compare_runs(*args.compare, tie_margin=args.tie_margin)
    P = printable  # noqa: N806
    say(f"{P(result['a']['framework'])} vs {P(result['b']['framework'])} over {result['n_common']} videos: "
        f"top-1 agreement {100 * result['top1_agreement']:.2f}%, top-5 set agreement "
        f"{100 * result['top5_set_agreement']:.2f}%, max |delta score| {result['max_abs_delta']:.3g}, "
        f"mean {result['mean_abs_delta']:.3g}; {result['n_top1_differ']} top-1 flips "
        f"({result['n_near_ties']} near-ties)")
    for what in ("weights", "protocol"):
        if not result[f"same_{what}"]:
            say(f"warning: the two runs used different {what}")
    for d in result["top1_differ"]:
        say(f"  {P(d['video'], 120)}: {P(d['top1_a'])} vs {P(d['top1_b'])} (top-2 gaps {d['top2_gap_a']:.2g}, "
            f"{d['top2_gap_b']:.2g})")
    if args.json:
        atomic_write_json(args.json, result_doc("agreement", result))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    caveats_to_stdout()

    def body() -> int:
        with undone_on_failure(MadeFolders()) as made:
            return run(made)

    def run(made: MadeFolders) -> int:
        if args.compare:
            _compare(args, made)
            return 0
        if args.merge:
            if not args.out:
                raise InputError("--merge needs --out")
            made.check_path(score_store.paths(args.out)[0], "--out")
            summary = score_store.merge(args.merge, args.out)
            print_summary(summary)
            check_scored(summary)
            return 0
        summary = evaluate(EvaluationRequest.from_args(args, made))
        print_summary(summary)
        check_scored(summary, shard=summary.get("shard", [0, 1])[1] > 1)
        if summary.get("n_non_finite"):
            raise CheckFailed(f"{summary['n_non_finite']} of {summary['n_videos']} videos got non-finite scores "
                              f"(NaN or inf): the weights or the input overflow; summary {printable(summary['_path'])}")
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
