"""Fine-tune the I3D-NL network in PyTorch or MindSpore, with the seed's recipe as defaults.

    python -m harness.train --framework ms --data-root /data/k400 --checkpoint i3d_nl.pth --reset-head \\
        --out runs/ms_finetune
    python -m harness.train ... --resume                      # after a crash or kill -9
    torchrun --nproc_per_node 2 -m harness.train --framework torch ...       # data parallel (DDP)
    msrun --worker_num 2 --local_worker_num 2 python -m harness.train --framework ms ...

The recipe (:mod:`frameworks.spec.train`, ``seed_finetune``): SGD, momentum 0.9, weight
decay 1e-4 on every parameter but the BN scales and shifts (the seed's rule, by way of
MindSpore's default filter, here explicit in both frameworks), lr 3e-4 with one warm-up
epoch then the seed's cosine (t_max 100 epochs, per epoch, to eta_min 0), 5 epochs, a
global batch of 6, softmax cross entropy, dropout 0.5. The data (``seed_train``): one
32x6 clip at a random offset, short edge 256 (bicubic), a random 224 crop, a flip with
probability 1/2, the seed's normalisation; every draw seeded by the video and the epoch.
Every option below changes one of these; the run records all of them.

Initial weights: ``--checkpoint`` (any format ``harness.convert`` reads: mmaction2 ``.pth``,
Caffe2 ``.pkl``, the seed's ``.ckpt``, ours), with ``--reset-head`` for another number of
classes; without one, mmaction2's initialisation (seeded, the same arrays in both
frameworks).

``--out DIR`` receives ``ckpt-<step>.pth`` (torch: weights, optimiser state and meta) or
``ckpt-<step>.ckpt`` (MindSpore: the training cell's parameters, optimiser state included),
written atomically every ``--save-every`` steps and at each epoch's end (the last
``--keep`` are kept); ``state.json`` (the latest checkpoint, the loss and lr of every step
so far, the run's identity); ``classes.txt``; and at the end ``train.json`` (a result
with provenance). ``--resume`` continues from the latest checkpoint: the same steps, lrs
and batches as an uninterrupted run. Every checkpoint's ``.nlparity.json`` sidecar carries
the arch, the class names (the label map's order) and the training data preset, so
``harness.infer`` names the classes of a trained (and converted) checkpoint.

One run writes a folder at a time: ``--out/.lock`` (a lock the kernel drops when its
process dies) refuses a second run in one line. A run killed mid-write leaves a temporary
(``.ckpt-*.pth.*.tmp``, MindSpore's ``.ckpt-*.ckpt.<pid>.partial.ckpt``); the next start or
``--resume`` removes those of dead writers and says how many bytes. A video that fails to
decode is left out of its batch and counted; a batch left with one clip (training-mode
BatchNorm needs two) is filled from the next videos of the epoch's order
(:mod:`harness.train_data`), the same way on ``--resume``. Exit status: 0 ok, 1 the loss
became NaN or inf, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, arch_hash, get_preset
from frameworks.spec.data_presets import (DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, DataPreset, data_preset_hash,
                                          get_train_preset)
from frameworks.spec.train import (BN_MODES, DEFAULT_RECIPE, PARAMETER_KINDS, RECIPES, TrainRecipe, get_recipe,
                                   initial_weights, lr_schedule, recipe_hash, steps_per_epoch)
from harness.errors import CheckFailed, InputError
from harness.provenance import result_doc, utc_now
from harness.cli import (add_device, add_verbose, nonnegative_int, num_classes, OneLineParser,
                         positive_int, run_main, setup_logging, tolerance)
from harness.runners import add_runner_arguments, names_help, runner_class, runner_options, runner_settings
from harness.files import (OutputPathError, atomic_path, atomic_write_json, check_input_file, check_output_dir,
                           check_output_path, os_reason, refuse_overwriting_inputs)

STATE_FILE = "state.json"
SUMMARY_FILE = "train.json"
CLASSES_FILE = "classes.txt"


def _fraction(text: str) -> float:
    value = tolerance(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _momentum(text: str) -> float:
    value = tolerance(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _no_decay(text: str) -> tuple:
    kinds = tuple(k for k in text.split(",") if k)
    bad = [k for k in kinds if k not in PARAMETER_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown parameter kinds {bad}; use some of {', '.join(PARAMETER_KINDS)} "
                                         "(or an empty string: decay everything)")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    p = OneLineParser(prog="python -m harness.train", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", required=True, help=names_help("trains"))
    p.add_argument("--data-root", required=True, help="dataset root (the seed's Kinetics layout)")
    p.add_argument("--split", default="train", help="split to train on: <root>/kinetics-400_<split>.csv (default train)")
    p.add_argument("--annotations", help="annotation file instead: the split's CSV or an mmaction2 list file")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoints, state.json, classes.txt, train.json")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    net = p.add_argument_group("network and initial weights")
    net.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default {DEFAULT_PRESET})")
    net.add_argument("--num-classes", type=num_classes, help="default: the classes of the dataset's label map")
    net.add_argument("--checkpoint", help="initial weights (any format harness.convert reads, or a registry name); "
                                          "default: mmaction2's initialisation, seeded")
    net.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file",
                                                                                        "--checkpoint"))
    net.add_argument("--reset-head", action="store_true",
                     help="give the classifier a fresh initialisation (fine-tuning to another number of classes)")
    net.add_argument("--checkpoint-classes", type=num_classes, default=400,
                     help="with --reset-head: the classes of --checkpoint's classifier (default 400)")
    rec = p.add_argument_group("recipe (default: the seed's)")
    rec.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                     help=f"a named recipe in frameworks/spec/train.py; the options below override it (default {DEFAULT_RECIPE})")
    rec.add_argument("--lr", type=tolerance, help="base learning rate (seed 3e-4)")
    rec.add_argument("--epochs", type=positive_int, help="epochs (seed 5)")
    rec.add_argument("--batch-size", type=positive_int, help="global batch, all processes together (seed 6)")
    rec.add_argument("--momentum", type=tolerance, help="SGD momentum (seed 0.9)")
    rec.add_argument("--weight-decay", type=tolerance, help="weight decay (seed 1e-4)")
    rec.add_argument("--no-decay", type=_no_decay, metavar="KINDS",
                     help="parameter kinds without weight decay, comma-separated: bn, bias, weight (seed: bn)")
    rec.add_argument("--warmup-epochs", type=tolerance, help="linear warm-up epochs (seed 1)")
    rec.add_argument("--t-max", type=tolerance, dest="t_max", help="cosine period in epochs (seed 100)")
    rec.add_argument("--dropout", type=_fraction, help="dropout before the classifier (seed 0.5)")
    rec.add_argument("--bn-mode", choices=BN_MODES, help="train: batch statistics (seed); frozen: running "
                                                         "statistics, never updated (mmaction2's norm_eval)")
    rec.add_argument("--bn-momentum", type=_momentum, help="BN momentum, PyTorch's convention (default 0.1)")
    data = p.add_argument_group("data")
    data.add_argument("--train-preset", default=DEFAULT_TRAIN_PRESET, choices=list(TRAIN_PRESETS), metavar="NAME",
                      help=f"training pipeline (default {DEFAULT_TRAIN_PRESET})")
    data.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                      help="change one field of the training pipeline (e.g. crop_size=64); recorded")
    data.add_argument("--workers", type=positive_int, default=1, help="decoding processes (default 1)")
    data.add_argument("--seed", type=int, default=0, help="seed of the data order, the draws and the initial weights")
    run = p.add_argument_group("run")
    add_device(run)
    add_runner_arguments(run, "trains")
    run.add_argument("--threads", type=positive_int,
                     help="framework threads (default: cores / processes; on a machine others also use, 1: a "
                          "two-thread OpenMP team on two busy cores made torch's step 10-30x slower, measured)")
    run.add_argument("--sync-bn", action="store_true", help="torch on GPUs: SyncBatchNorm across processes")
    run.add_argument("--save-every", type=positive_int, help="checkpoint every N steps (default: each epoch's end)")
    run.add_argument("--keep", type=positive_int, default=2, help="checkpoints kept (default 2: the latest two)")
    run.add_argument("--max-steps", type=nonnegative_int,
                     help="stop after this global step (the schedule is still the whole recipe's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_verbose(p)
    return p


RECIPE_OPTIONS = {"lr": "lr", "epochs": "epochs", "batch_size": "batch_size", "momentum": "momentum",
                  "weight_decay": "weight_decay", "no_decay": "no_decay", "warmup_epochs": "warmup_epochs",
                  "t_max": "cosine_t_max_epochs", "dropout": "dropout", "bn_mode": "bn_mode",
                  "bn_momentum": "bn_momentum"}


@dataclass
class TrainRequest:
    framework: str
    cfg: I3DNLConfig
    recipe: TrainRecipe
    preset: DataPreset
    data_root: str
    out: str
    overrides: dict = field(default_factory=dict)
    split: str = "train"
    annotations: Optional[str] = None
    checkpoint: Optional[str] = None
    trust: bool = False
    reset_head: bool = False
    checkpoint_classes: int = 400
    num_classes: Optional[int] = None
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    runner_settings: dict = field(default_factory=dict)   # every framework's own options (runner_settings)
    threads: Optional[int] = None
    sync_bn: bool = False
    save_every: Optional[int] = None
    keep: int = 2
    max_steps: Optional[int] = None
    resume: bool = False
    quiet: bool = False

    @property
    def inputs(self) -> List[str]:
        """What this run reads: never written over, never pruned."""
        from harness.checkpoints.registry import registry_entry

        files = [self.data_root, self.annotations]
        if self.checkpoint and registry_entry(self.checkpoint) is None:
            files.append(self.checkpoint)
        return [f for f in files if f]

    @classmethod
    def from_args(cls, args) -> "TrainRequest":
        from harness.evaluate import parse_overrides, with_overrides
        from harness.runners import require

        framework = require(args.framework, "trains", "training")
        changes = {field_name: getattr(args, option) for option, field_name in RECIPE_OPTIONS.items()
                   if getattr(args, option) is not None}
        try:
            recipe = get_recipe(args.recipe, **changes)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        preset = get_train_preset(args.train_preset)
        overrides = parse_overrides(args.data_override, preset)
        preset = with_overrides(preset, overrides)
        check_inputs_and_out(args)
        return cls(framework=framework, cfg=get_preset(args.arch), recipe=recipe, preset=preset,
                   data_root=args.data_root, out=args.out, overrides=overrides, split=args.split,
                   annotations=args.annotations, checkpoint=args.checkpoint, trust=args.trust_checkpoint,
                   reset_head=args.reset_head, checkpoint_classes=args.checkpoint_classes,
                   num_classes=args.num_classes, seed=args.seed, workers=args.workers, device=args.device,
                   runner_settings=runner_settings(args), threads=args.threads, sync_bn=args.sync_bn, save_every=args.save_every,
                   keep=args.keep, max_steps=args.max_steps, resume=args.resume, quiet=args.quiet)


def check_inputs_and_out(args) -> None:
    """The initial checkpoint (a file, or a registry name already fetched) and the annotation
    file are readable; ``--out`` is a folder this run may write, holding neither of them."""
    checkpoint = args.checkpoint
    if checkpoint:
        from harness.checkpoints.registry import registry_entry, resolve

        if registry_entry(checkpoint) is not None:     # a registry name: its cached file
            checkpoint = resolve(checkpoint, verify_digest=False)
        checkpoint = check_input_file(checkpoint, "--checkpoint")
    if args.annotations:
        check_input_file(args.annotations, "--annotations")
    check_output_dir(args.out, "--out folder", inputs=[args.data_root, checkpoint, args.annotations])
    if checkpoint and CHECKPOINT_NAME.match(os.path.basename(checkpoint)) and \
            os.path.realpath(os.path.dirname(os.path.abspath(checkpoint))) == os.path.realpath(args.out):
        raise InputError(f"--checkpoint {checkpoint} is inside --out {args.out}, where this run writes and prunes "
                         "its checkpoints: copy it elsewhere, or use another --out")


# ----------------------------------------------------------------------------- weights
def initial_arrays(req: TrainRequest, cfg: I3DNLConfig):
    """(canonical arrays, what they are, their digest)."""
    from harness.checkpoints import check_runnable, load_weights
    from harness.checkpoints.io import arrays_sha256

    if not req.checkpoint:
        arrays = initial_weights(cfg, req.seed)
        return arrays, f"mmaction2 initialisation (seed {req.seed})", arrays_sha256(arrays)
    source_cfg = cfg.replace(num_classes=req.checkpoint_classes) if req.reset_head else cfg
    loaded = load_weights(req.checkpoint, source_cfg, trust=req.trust)
    check_runnable(loaded.arrays, req.checkpoint)
    arrays = dict(loaded.arrays)
    what = loaded.describe()
    if req.reset_head:
        fresh = initial_weights(cfg, req.seed)
        arrays.update({k: fresh[k] for k in ("head.fc.weight", "head.fc.bias")})
        what += f"; classifier re-initialised for {cfg.num_classes} classes"
    return arrays, what, loaded.sha256


# ----------------------------------------------------------------------------- the run folder
LOCK_FILE = ".lock"
CHECKPOINT_NAME = re.compile(r"ckpt-(\d{6})\.\w+\Z")   # its suffix: the framework's (Runner.checkpoint_suffix)
# what this command writes into --out, each through a temporary beside it: atomic_path's
# ``.<name>.<random><suffix>.tmp`` and MindSpore's ``.<name>.<pid>.partial.ckpt`` (written by
# save_checkpoint as ``.<name>.<pid>.partial.tmp`` first)
TEMPORARY = re.compile(r"\.(ckpt-\d{6}\.(?:pth|ckpt)(?:\.nlparity\.json)?|state\.json|train\.json|classes\.txt)"
                       r"\..+(?:\.tmp|\.partial\.ckpt)\Z")
WRITER_PID = re.compile(r"\.(\d+)\.partial\.(?:ckpt|tmp)\Z")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_writer(pid: int) -> bool:
    """Whether ``pid`` is a live process of this tool (a dead writer's pid may have been
    reused by an unrelated process)."""
    if pid == os.getpid() or not _pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"harness" in f.read()
    except OSError:
        return True            # no /proc: a live pid is taken as a writer (the file is left)


class RunFolder:
    """``--out``, locked (``.lock``, a POSIX record lock holding the pid) while this process
    writes into it: the kernel drops the lock when its process dies, however it dies, and
    a forked child never inherits it, so a SIGKILLed run never blocks the next start."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None
        self.created_folder = False
        self.created_lock = False
        self.made: List[str] = []     # files of this run that a failure before any checkpoint takes back

    def _refuse(self, holder: str):
        raise InputError(f"another training run (pid {holder or '?'}) is writing {self.path}; wait for it to "
                         "end, or use another --out")

    def lock(self) -> None:
        import errno
        import fcntl

        lock_path = os.path.join(self.path, LOCK_FILE)
        try:
            self.created_folder = not os.path.isdir(self.path)
            os.makedirs(self.path, exist_ok=True)
            self.created_lock = not os.path.exists(lock_path)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputPathError(f"cannot write --out folder {self.path}: {os_reason(exc)}") from None
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                self._refuse(holder)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # a file system without record locks: the pid the file holds decides
            if holder.isdigit() and _is_writer(int(holder)):
                os.close(fd)
                self._refuse(holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self, failed: bool) -> None:
        """Unlock; after a failure, a folder (or lock file) this process made and nothing was
        written into is removed again: a refused run leaves nothing behind."""
        if self.fd is None:
            return
        if failed and self.created_lock:
            left = [n for n in os.listdir(self.path) if n != LOCK_FILE and n not in self.made]
            if not left:
                try:
                    for name in self.made + [LOCK_FILE]:
                        os.remove(os.path.join(self.path, name))
                    if self.created_folder:
                        os.rmdir(self.path)
                except OSError:
                    pass
        os.close(self.fd)
        self.fd = None

    def clean_temporaries(self) -> Tuple[int, int]:
        """Remove the temporaries a killed run left (a checkpoint's can be a GB); with the
        lock held no other run writes here, and a MindSpore temporary whose writer (the pid
        in its name) still runs is left. Returns (files, bytes) removed."""
        count = size = 0
        for name in sorted(os.listdir(self.path)):
            if not TEMPORARY.match(name):
                continue
            writer = WRITER_PID.search(name)
            if writer and _is_writer(int(writer.group(1))):
                continue
            path = os.path.join(self.path, name)
            try:
                nbytes = os.lstat(path).st_size
                os.remove(path)
            except OSError:
                continue
            count, size = count + 1, size + nbytes
        return count, size


# ----------------------------------------------------------------------------- state
def checkpoint_name(framework: str, step: int) -> str:
    return f"ckpt-{step:06d}{runner_class(framework).checkpoint_suffix}"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def state_problem(doc) -> Optional[str]:
    """What makes ``doc`` not a state.json this command wrote, or None."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    missing = [k for k in ("step", "epoch", "checkpoint", "identity", "curve") if k not in doc]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)}"
    if not _is_int(doc["step"]) or doc["step"] < 1:
        return f"step {doc['step']!r} is not a positive integer"
    name = doc["checkpoint"]
    match = CHECKPOINT_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        return f"checkpoint {name!r} is not a checkpoint name of this folder (ckpt-NNNNNN.pth or .ckpt)"
    if int(match.group(1)) != doc["step"]:
        return f"checkpoint {name} is not the one of step {doc['step']}"
    if not isinstance(doc["identity"], dict):
        return "identity is not an object"
    curve = doc["curve"]
    if not isinstance(curve, list) or not all(isinstance(r, dict) and _is_int(r.get("step")) for r in curve):
        return "curve is not a list of steps"
    if [r["step"] for r in curve] != list(range(len(curve))) or len(curve) < doc["step"]:
        return f"curve holds steps {len(curve)} of {doc['step']}, or out of order"
    return None


def read_state(out: str) -> Optional[dict]:
    """The run state.json describes, None for a folder without one; a damaged or foreign
    file is one line of bad input naming it."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {os_reason(exc)}") from None
    except ValueError as exc:     # JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{path} is damaged (not valid JSON: {str(exc).splitlines()[0]}); it cannot be "
                         "resumed: use another --out") from None
    problem = state_problem(doc)
    if problem:
        raise InputError(f"{path} is not a training state written by harness.train ({problem}); it cannot be "
                         "resumed: use another --out")
    return doc


def _load_problem(exc: BaseException) -> str:
    """Why a trainer could not load a checkpoint, in words."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, KeyError):
        return f"is not a training checkpoint of harness.train (it has no {text} entry; a weights-only file?)"
    if "central directory" in text or "zip archive" in text or "PytorchStreamReader" in text:
        return "is truncated or damaged (not a complete torch zip archive)"
    if "Failed to read the checkpoint file" in text or "cannot be parsed" in text:
        return "is truncated or damaged (MindSpore cannot parse it)"
    if "state_dict" in text or "does not fit" in text or "size mismatch" in text:
        return f"does not fit this run's network ({text[:200]})"
    return f"cannot be loaded ({type(exc).__name__}: {text[:200]})"


def resume_trainer(trainer, out: str, state: dict, identity: dict) -> int:
    """Load the checkpoint ``state`` names into ``trainer``; returns its step."""
    path = os.path.join(out, state["checkpoint"])
    if not os.path.isfile(path):
        raise InputError(f"--resume: {os.path.join(out, STATE_FILE)} names {state['checkpoint']}, which is not "
                         f"in {out}")
    if not state["checkpoint"].endswith(runner_class(identity["framework"]).checkpoint_suffix):
        raise InputError(f"--resume: checkpoint {path} is not a {identity['framework']} checkpoint")
    try:
        meta = trainer.load(path)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the framework raises, the file is what is wrong
        raise InputError(f"--resume: checkpoint {path} {_load_problem(exc)}") from None
    if trainer.step_index != state["step"]:
        raise InputError(f"--resume: checkpoint {path} holds step {trainer.step_index}, {STATE_FILE} says "
                         f"{state['step']}")
    theirs = (meta or {}).get("identity") if isinstance(meta, dict) else None
    if isinstance(theirs, dict) and theirs != identity:
        changed = sorted(k for k in identity if theirs.get(k) != identity[k])
        raise InputError(f"--resume: checkpoint {path} belongs to another run (it differs in {', '.join(changed)})")
    return trainer.step_index


def _identity(req: TrainRequest, cfg: I3DNLConfig, index, init_sha: str, world) -> dict:
    """Everything that changes the loss curve: a resumed run must match it."""
    return {"framework": req.framework, "arch": cfg.name, "arch_hash": arch_hash(cfg),
            "recipe_hash": recipe_hash(req.recipe), "data_preset": req.preset.name,
            "data_preset_hash": data_preset_hash(req.preset), "n_videos": len(index),
            "annotation": index.annotation, "init_weights_sha256": init_sha, "seed": req.seed,
            "world_size": world.size, "device": req.device,
            "runner_options": runner_options(req.framework, req.runner_settings)}


def _prune(out: str, framework: str, keep: int, inputs: List[str]) -> None:
    from harness.checkpoints.sidecar import sidecar_path
    from harness.files import same_file

    ext = runner_class(framework).checkpoint_suffix
    done = sorted(f for f in os.listdir(out) if CHECKPOINT_NAME.match(f) and f.endswith(ext))
    for name in done[:-keep]:
        path = os.path.join(out, name)
        if any(os.path.exists(i) and same_file(path, i) for i in inputs):
            continue              # --checkpoint may be an earlier run's file: an input is never removed
        for victim in (path, sidecar_path(path)):
            try:
                os.remove(victim)
            except OSError:
                pass


# ----------------------------------------------------------------------------- the loop
@dataclass
class Setup:
    """What a run needs before its first step, every input checked."""

    cfg: I3DNLConfig
    index: object
    spe: int
    total: int
    stop: int
    state: Optional[dict]
    arrays: dict
    init_label: str
    init_sha: str
    identity: dict
    min_clips: int


def prepare(req: TrainRequest, world) -> Setup:
    """Read and check everything (dataset, classes, batch split, state.json, initial weights)
    before any output is written."""
    from harness.data import build_index

    index = build_index(req.data_root, req.split, annotations=req.annotations, label_order=req.preset.label_order)
    if not len(index):
        raise InputError(f"no usable video in {req.data_root} split {req.split}")
    cfg = req.cfg.replace(num_classes=req.num_classes or len(index.label_map))
    labels = [r.label for r in index.records]
    if max(labels) >= cfg.num_classes:
        raise InputError(f"the dataset has class ids up to {max(labels)}; --num-classes {cfg.num_classes} is too few")
    recipe = req.recipe
    if recipe.batch_size % world.size:
        raise InputError(f"--batch-size {recipe.batch_size} does not split over {world.size} processes")
    try:
        spe = steps_per_epoch(len(index), recipe.batch_size)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    total = len(lr_schedule(recipe, spe))
    stop = total if req.max_steps is None else min(req.max_steps, total)
    state = read_state(req.out)
    if state is not None and not req.resume:
        raise InputError(f"{req.out} holds a training run (step {state['step']}); pass --resume, or another --out")
    arrays, init_label, init_sha = initial_arrays(req, cfg)
    identity = _identity(req, cfg, index, init_sha, world)
    if state is not None and state["identity"] != identity:
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise InputError(f"--resume: the run in {req.out} differs in {', '.join(changed) or 'its identity'}")
    # training-mode BatchNorm normalises over the batch: a step never runs on one clip when
    # the batch asks for more (a batch short of faulty videos is filled; see train_data)
    local = recipe.batch_size // world.size
    min_clips = min(2, local) if recipe.bn_mode == "train" else 1
    return Setup(cfg, index, spe, total, stop, state, arrays, init_label, init_sha, identity, min_clips)


def say(text: str) -> None:
    """A line of what the run does or found (stdout: stderr is kept for the one error line)."""
    print(text, flush=True)


def class_names(index, num_classes: int) -> List[str]:
    """The label map's names in its order, one per classifier output (an output past the
    label map's classes is named as what it is)."""
    names = list(index.label_map.names[:num_classes])
    return names + [f"(no class: output {i})" for i in range(len(names), num_classes)]


def train(req: TrainRequest) -> dict:
    """The run, with ``--out`` locked for its whole length (by the process that writes it)."""
    from harness.runners import world_from_env

    world = world_from_env(req.framework)
    folder = RunFolder(req.out)
    # msrun on several nodes may leave RANK_ID unset: the rank is known once the cluster is joined
    rank_known = not (world.launcher == "msrun" and "RANK_ID" not in os.environ)
    if world.is_main and rank_known:
        folder.lock()
    failed = True
    try:
        summary = _train(req, world, folder)
        failed = False
        return summary
    finally:
        folder.release(failed)


# the messages of a step that cannot run on this input (one line, exit 2), not a bug
_INPUT_STEP_ERRORS = ("Expected more than 1 value per channel", "Output size is too small",
                      "can't allocate memory", "out of memory")


def _step(trainer, batch):
    try:
        return trainer.step(batch.clips, batch.labels)
    except (RuntimeError, ValueError) as exc:
        text = (str(exc).strip().splitlines() or [""])[0]
        if not any(m in text for m in _INPUT_STEP_ERRORS):
            raise
        shape = "x".join(map(str, batch.clips.shape))
        raise InputError(f"step {batch.step}: the network cannot train on a batch of {shape} ({text[:160]}); "
                         "use larger clips (--data-override crop_size / clip_len), a larger --batch-size "
                         "or --bn-mode frozen") from None


def _train(req: TrainRequest, world, folder: RunFolder) -> dict:
    from harness.runners import make_trainer

    s = prepare(req, world)
    threads = req.threads or max(1, (os.cpu_count() or 1) // world.size)
    trainer = make_trainer(req.framework, s.cfg, req.recipe, s.arrays, steps_per_epoch=s.spe, device=req.device,
                           settings=req.runner_settings, threads=threads, world=world, seed=req.seed, sync_bn=req.sync_bn)
    world = trainer.world
    if world.is_main and folder.fd is None:
        folder.lock()
    start, curve, faults, filled = _resumed(req, trainer, s)
    if world.is_main:
        _start_folder(req, folder, s, start)
    _run_steps(req, trainer, world, s, start, curve, faults, filled)
    summary = _summary(req, s, trainer, threads, start, curve, faults, filled)
    if world.is_main:
        path = check_output_path(os.path.join(req.out, SUMMARY_FILE), "summary", inputs=req.inputs)
        atomic_write_json(path, result_doc("train", summary))
    return summary


def _resumed(req: TrainRequest, trainer, s: Setup):
    """``(first step, curve, faults, filled steps)``: what a resumed run's state kept (its
    decode faults and filled steps too), the trainer loaded; empty for a new run."""
    from harness.data.index import Fault, FaultLog

    faults = FaultLog()      # this run's decode faults, kept across --resume
    if s.state is None:
        return 0, [], faults, []
    state = s.state
    start = resume_trainer(trainer, req.out, state, s.identity)
    curve = [row for row in state["curve"] if row["step"] < start]
    faults.extend(Fault(f["id"], f["kind"], f["reason"], bool(f.get("skipped", True)))
                  for f in state.get("faults", []) if isinstance(f, dict) and {"id", "kind", "reason"} <= set(f))
    filled = [f for f in state.get("filled", []) if isinstance(f, dict) and f.get("step", s.stop) < start]
    return start, curve, faults, filled


def _start_folder(req: TrainRequest, folder: RunFolder, s: Setup, start: int) -> None:
    """The main process, before the first step: a killed run's temporaries removed, the class
    names written, and what the run starts from said."""
    removed, nbytes = folder.clean_temporaries()
    if removed:
        say(f"removed {removed} temporary file{'s' * (removed != 1)} a killed run left in {req.out}: "
            f"{nbytes:,} bytes ({nbytes / 2 ** 20:.1f} MiB)")
    if s.state is not None:
        say(f"resumed from {s.state['checkpoint']} at step {start}")
    classes_path = check_output_path(os.path.join(req.out, CLASSES_FILE), "classes file", inputs=req.inputs)
    with atomic_path(classes_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names(s.index, s.cfg.num_classes)) + "\n")
    folder.made.append(CLASSES_FILE)
    say(f"weights: {s.init_label}")
    for quirk in req.preset.known_quirks:
        say(f"data {req.preset.name}: {quirk}")


def _run_steps(req: TrainRequest, trainer, world, s: Setup, start: int, curve, faults, filled) -> None:
    """The steps from ``start`` to the stop, under a progress bar (the main process's)."""
    from tqdm import tqdm

    from harness.train_data import TrainPlan

    plan = TrainPlan(s.index, req.recipe.batch_size, s.spe, req.recipe.epochs, req.seed, world.rank, world.size,
                     min_clips=s.min_clips)
    bar = tqdm(total=s.stop - start, disable=req.quiet or not world.is_main, unit="step", dynamic_ncols=True,
               desc=f"{req.framework} train")
    meta_base = {"framework": req.framework, "arch": s.cfg.to_dict(), "recipe": req.recipe.to_dict(),
                 "data_preset": req.preset.to_dict(), "classes": class_names(s.index, s.cfg.num_classes),
                 "identity": s.identity}
    try:
        _loop(req, trainer, world, plan, bar, s, start, curve, faults, filled, meta_base)
    except BaseException:
        bar.leave = False        # an error is the only line on stderr: the bar goes
        raise
    finally:
        bar.close()


def _summary(req: TrainRequest, s: Setup, trainer, threads: int, start: int, curve, faults, filled) -> dict:
    """What train.json says of the run."""
    from harness.data.index import FaultLog

    cfg, recipe, world = s.cfg, req.recipe, trainer.world
    all_faults = FaultLog(list(s.index.faults.faults) + list(faults.faults))
    return {"framework": req.framework, "arch": cfg.name, "arch_hash": arch_hash(cfg),
            "num_classes": cfg.num_classes, "recipe": recipe.to_dict(), "recipe_hash": recipe_hash(recipe),
            "data_preset": req.preset.name, "data_preset_hash": data_preset_hash(req.preset),
            "data_override": req.overrides, "init_weights": s.init_label, "init_weights_sha256": s.init_sha,
            "steps_per_epoch": s.spe, "total_steps": s.total, "steps_done": trainer.step_index,
            "resumed_from": start if s.state is not None else None, "world_size": world.size,
            "launcher": world.launcher, "threads": threads, "checkpoint": checkpoint_name(req.framework, s.stop),
            "curve": curve, "final_loss": curve[-1]["loss"] if curve else None,
            "mean_step_ms": float(np.mean([r["step_ms"] for r in curve[1:]])) if len(curve) > 1 else None,
            "faults": all_faults.to_dict(), "min_clips": s.min_clips, "filled_steps": filled,
            "versions": trainer.runner.versions(), "hardware": trainer.runner.hardware(), "date": utc_now()}


def _loop(req, trainer, world, plan, bar, s: Setup, start: int, curve, faults, filled, meta_base) -> None:
    """The steps from ``start``, each checkpointed as ``--save-every`` and the epochs say."""
    spe, stop = s.spe, s.stop
    epoch_t0, epoch_steps = time.perf_counter(), 0
    for batch in plan.batches(req.preset, start, stop, workers=req.workers, faults=faults):
        t0 = time.perf_counter()
        loss, lr = _step(trainer, batch)
        step_ms = 1000 * (time.perf_counter() - t0)
        step = batch.step + 1                 # steps done
        curve.append({"step": batch.step, "epoch": batch.epoch, "loss": loss, "lr": lr, "step_ms": step_ms,
                      "clips": int(len(batch.labels)), "filled": len(batch.filled)})
        if batch.filled:
            filled.append({"step": batch.step, "rank": world.rank, "videos": list(batch.filled)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", step_ms=f"{step_ms:.0f}")
        epoch_steps += 1
        if not np.isfinite(loss):
            raise CheckFailed(f"step {batch.step}: the loss is {loss} (lr {lr:.3g}); the last checkpoint is kept")
        end_of_epoch = step % spe == 0
        if end_of_epoch and world.is_main:
            elapsed = time.perf_counter() - epoch_t0
            bar.write(f"epoch: {batch.epoch + 1} step: {spe}, loss is {loss}")
            bar.write(f"epoch time: {elapsed:.0f} s, per step time: {1000 * elapsed / max(epoch_steps, 1):.0f} ms")
        if end_of_epoch:
            epoch_t0, epoch_steps = time.perf_counter(), 0
        if step % (req.save_every or spe) == 0 or end_of_epoch or step == stop:
            _save(req, trainer, world, step, batch.epoch, curve, s.identity, meta_base,
                  {"faults": [f.to_dict() for f in faults.faults], "filled": filled})


def _save(req, trainer, world, step: int, epoch: int, curve, identity, meta_base, data: dict) -> None:
    """Checkpoint, then the state that names it (so a kill between the two resumes from
    the previous checkpoint, which is still there)."""
    if not world.is_main:
        return
    from harness.checkpoints.sidecar import write_sidecar

    name = checkpoint_name(req.framework, step)
    path = os.path.join(req.out, name)
    # (not check_output_path: MindSpore leaves its checkpoints read-only, and a resumed run
    # writes the step a killed one had reached again)
    refuse_overwriting_inputs(path, "checkpoint", req.inputs)
    trainer.save(path, dict(meta_base, epoch=epoch))
    # the arch, the class names and the data preset beside the weights, as harness.convert
    # writes them: evaluate, infer and convert need no --arch / --num-classes / --labels
    write_sidecar(path, trainer.cfg, source=f"harness.train step {step}",
                  source_sha256=identity["init_weights_sha256"], classes=meta_base["classes"],
                  data_preset=req.preset.name)
    state_path = check_output_path(os.path.join(req.out, STATE_FILE), "state file", inputs=req.inputs)
    atomic_write_json(state_path, {"step": step, "epoch": epoch, "checkpoint": name, "identity": identity,
                                   "curve": curve, **data, "date": utc_now()})
    _prune(req.out, req.framework, req.keep, req.inputs)


def _fault_line(summary: dict) -> Optional[str]:
    """One line on what the data did to the run: videos left out, used with a note, steps filled."""
    faults = summary["faults"]
    left = {k: 0 for k in faults["counts"]}
    used = dict(left)
    for f in faults["faults"]:
        (left if f.get("skipped", True) else used)[f["kind"]] += 1
    left = {k: v for k, v in left.items() if v}
    used = {k: v for k, v in used.items() if v}
    if not (left or used or summary["filled_steps"]):
        return None
    parts = [f"{sum(left.values())} left out ({', '.join(f'{k} {v}' for k, v in left.items()) or 'none'})"]
    if used:
        parts.append(f"{sum(used.values())} used as they are ({', '.join(f'{k} {v}' for k, v in used.items())})")
    n = len(summary["filled_steps"])
    if n:
        parts.append(f"{n} step{'s' * (n != 1)} filled to {summary['min_clips']} clips from the next videos")
    return "faults: " + "; ".join(parts) + f" ({SUMMARY_FILE} lists each)"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        summary = train(TrainRequest.from_args(args))
        if summary["curve"]:
            first, last = summary["curve"][0], summary["curve"][-1]
            print(f"{summary['framework']} {summary['arch']}: steps {first['step'] + 1}-{last['step'] + 1} of "
                  f"{summary['total_steps']}, loss {first['loss']:.4f} -> {last['loss']:.4f}, "
                  f"{summary['mean_step_ms'] or 0:.0f} ms/step; checkpoint {os.path.join(args.out, summary['checkpoint'])}")
        line = _fault_line(summary)
        if line:
            print(line)
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
