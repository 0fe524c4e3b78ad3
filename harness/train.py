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
and batches as an uninterrupted run. Exit status: 0 ok, 1 the loss became NaN or inf,
2 bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, arch_hash, get_preset
from frameworks.spec.data_presets import (DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, DataPreset, data_preset_hash,
                                          get_train_preset)
from frameworks.spec.train import (BN_MODES, DEFAULT_RECIPE, PARAMETER_KINDS, RECIPES, TrainRecipe, get_recipe,
                                   initial_weights, lr_schedule, recipe_hash, steps_per_epoch)
from harness.cli import (CheckFailed, InputError, OneLineParser, add_device, add_ms_mode, add_verbose,
                         nonnegative_int, positive_int, result_doc, run_main, setup_logging, tolerance, utc_now)
from harness.files import atomic_write_json, check_output_dir

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
    p.add_argument("--framework", required=True, help="torch/pt or mindspore/ms")
    p.add_argument("--data-root", required=True, help="dataset root (the seed's Kinetics layout)")
    p.add_argument("--split", default="train", help="split to train on: <root>/kinetics-400_<split>.csv (default train)")
    p.add_argument("--annotations", help="annotation file instead: the split's CSV or an mmaction2 list file")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoints, state.json, classes.txt, train.json")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    net = p.add_argument_group("network and initial weights")
    net.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default {DEFAULT_PRESET})")
    net.add_argument("--num-classes", type=positive_int, help="default: the classes of the dataset's label map")
    net.add_argument("--checkpoint", help="initial weights (any format harness.convert reads, or a registry name); "
                                          "default: mmaction2's initialisation, seeded")
    net.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file",
                                                                                        "--checkpoint"))
    net.add_argument("--reset-head", action="store_true",
                     help="give the classifier a fresh initialisation (fine-tuning to another number of classes)")
    net.add_argument("--checkpoint-classes", type=positive_int, default=400,
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
    add_ms_mode(run)
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
    ms_mode: str = "graph"
    threads: Optional[int] = None
    sync_bn: bool = False
    save_every: Optional[int] = None
    keep: int = 2
    max_steps: Optional[int] = None
    resume: bool = False
    quiet: bool = False

    @classmethod
    def from_args(cls, args) -> "TrainRequest":
        from harness.evaluate import parse_overrides, with_overrides
        from harness.runners import canonical_framework

        framework = canonical_framework(args.framework)
        if framework == "mmaction2":
            raise InputError("training runs our implementations: --framework torch or ms")
        changes = {field_name: getattr(args, option) for option, field_name in RECIPE_OPTIONS.items()
                   if getattr(args, option) is not None}
        try:
            recipe = get_recipe(args.recipe, **changes)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        preset = get_train_preset(args.train_preset)
        overrides = parse_overrides(args.data_override, preset)
        preset = with_overrides(preset, overrides)
        check_output_dir(args.out, "--out folder")
        return cls(framework, get_preset(args.arch), recipe, preset, args.data_root, args.out, overrides,
                   args.split, args.annotations, args.checkpoint, args.trust_checkpoint, args.reset_head,
                   args.checkpoint_classes, args.num_classes, args.seed, args.workers, args.device, args.ms_mode,
                   args.threads, args.sync_bn, args.save_every, args.keep, args.max_steps, args.resume, args.quiet)


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


# ----------------------------------------------------------------------------- state
def checkpoint_name(framework: str, step: int) -> str:
    return f"ckpt-{step:06d}.{'pth' if framework == 'torch' else 'ckpt'}"


def read_state(out: str) -> Optional[dict]:
    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _identity(req: TrainRequest, cfg: I3DNLConfig, index, init_sha: str, world) -> dict:
    """Everything that changes the loss curve: a resumed run must match it."""
    return {"framework": req.framework, "arch": cfg.name, "arch_hash": arch_hash(cfg),
            "recipe_hash": recipe_hash(req.recipe), "data_preset": req.preset.name,
            "data_preset_hash": data_preset_hash(req.preset), "n_videos": len(index),
            "annotation": index.annotation, "init_weights_sha256": init_sha, "seed": req.seed,
            "world_size": world.size, "device": req.device,
            "ms_mode": req.ms_mode if req.framework == "ms" else None}


def _prune(out: str, framework: str, keep: int) -> None:
    from harness.checkpoints.sidecar import sidecar_path

    ext = ".pth" if framework == "torch" else ".ckpt"
    done = sorted(f for f in os.listdir(out) if f.startswith("ckpt-") and f.endswith(ext))
    for name in done[:-keep]:
        for path in (os.path.join(out, name), sidecar_path(os.path.join(out, name))):
            try:
                os.remove(path)
            except OSError:
                pass


# ----------------------------------------------------------------------------- the loop
def train(req: TrainRequest) -> dict:
    from tqdm import tqdm

    from harness.data import build_index
    from harness.data.index import FaultLog
    from harness.train_data import TrainPlan
    from harness.training import make_trainer, world_from_env

    world = world_from_env(req.framework)
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
    lrs = lr_schedule(recipe, spe)
    total = len(lrs)
    stop = total if req.max_steps is None else min(req.max_steps, total)
    save_every = req.save_every or spe

    state = read_state(req.out)
    if state is not None and not req.resume:
        raise InputError(f"{req.out} holds a training run (step {state['step']}); pass --resume, or another --out")
    arrays, init_label, init_sha = initial_arrays(req, cfg)
    identity = _identity(req, cfg, index, init_sha, world)
    if state is not None and state["identity"] != identity:
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise InputError(f"--resume: the run in {req.out} differs in {', '.join(changed)}")

    threads = req.threads or max(1, (os.cpu_count() or 1) // world.size)
    trainer = make_trainer(req.framework, cfg, recipe, lrs, arrays, device=req.device, ms_mode=req.ms_mode,
                           threads=threads, world=world, seed=req.seed, sync_bn=req.sync_bn)
    world = trainer.world
    curve: List[dict] = []
    start = 0
    if state is not None:
        trainer.load(os.path.join(req.out, state["checkpoint"]))
        start = trainer.step_index
        curve = [row for row in state["curve"] if row["step"] < start]
        if world.is_main:
            print(f"resumed from {state['checkpoint']} at step {start}", file=sys.stderr, flush=True)
    if world.is_main:
        os.makedirs(req.out, exist_ok=True)
        with open(os.path.join(req.out, CLASSES_FILE), "w", encoding="utf-8") as f:
            f.write("\n".join(index.label_map.names[:cfg.num_classes]) + "\n")
        print(f"weights: {init_label}", file=sys.stderr, flush=True)
        for quirk in req.preset.known_quirks:
            print(f"data {req.preset.name}: {quirk}", file=sys.stderr, flush=True)

    plan = TrainPlan(index, recipe.batch_size, spe, recipe.epochs, req.seed, world.rank, world.size)
    faults = FaultLog()
    bar = tqdm(total=stop - start, disable=req.quiet or not world.is_main, unit="step", dynamic_ncols=True,
               desc=f"{req.framework} train")
    epoch_t0, epoch_steps = time.perf_counter(), 0
    meta_base = {"framework": req.framework, "arch": cfg.to_dict(), "recipe": recipe.to_dict(),
                 "data_preset": req.preset.to_dict(), "classes": list(index.label_map.names[:cfg.num_classes]),
                 "identity": identity}
    for batch in plan.batches(req.preset, start, stop, workers=req.workers, faults=faults):
        t0 = time.perf_counter()
        loss, lr = trainer.step(batch.clips, batch.labels)
        step_ms = 1000 * (time.perf_counter() - t0)
        step = batch.step + 1                 # steps done
        curve.append({"step": batch.step, "epoch": batch.epoch, "loss": loss, "lr": lr, "step_ms": step_ms,
                      "clips": int(len(batch.labels))})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", step_ms=f"{step_ms:.0f}")
        epoch_steps += 1
        if not np.isfinite(loss):
            bar.close()
            raise CheckFailed(f"step {batch.step}: the loss is {loss} (lr {lr:.3g}); the last checkpoint is kept")
        end_of_epoch = step % spe == 0
        if end_of_epoch and world.is_main:
            elapsed = time.perf_counter() - epoch_t0
            bar.write(f"epoch: {batch.epoch + 1} step: {spe}, loss is {loss}")
            bar.write(f"epoch time: {elapsed:.0f} s, per step time: {1000 * elapsed / max(epoch_steps, 1):.0f} ms")
        if end_of_epoch:
            epoch_t0, epoch_steps = time.perf_counter(), 0
        if step % save_every == 0 or end_of_epoch or step == stop:
            _save(req, trainer, world, step, batch.epoch, curve, identity, meta_base)
    bar.close()
    summary = {"framework": req.framework, "arch": cfg.name, "arch_hash": arch_hash(cfg),
               "num_classes": cfg.num_classes, "recipe": recipe.to_dict(), "recipe_hash": recipe_hash(recipe),
               "data_preset": req.preset.name, "data_preset_hash": data_preset_hash(req.preset),
               "data_override": req.overrides, "init_weights": init_label, "init_weights_sha256": init_sha,
               "steps_per_epoch": spe, "total_steps": total, "steps_done": trainer.step_index,
               "resumed_from": start if state is not None else None, "world_size": world.size,
               "launcher": world.launcher, "threads": threads, "checkpoint": checkpoint_name(req.framework, stop),
               "curve": curve, "final_loss": curve[-1]["loss"] if curve else None,
               "mean_step_ms": float(np.mean([r["step_ms"] for r in curve[1:]])) if len(curve) > 1 else None,
               "faults": faults.to_dict(), "versions": trainer.runner.versions(),
               "hardware": trainer.runner.hardware(), "date": utc_now()}
    if world.is_main:
        atomic_write_json(os.path.join(req.out, SUMMARY_FILE), result_doc("train", summary))
    return summary


def _save(req, trainer, world, step: int, epoch: int, curve, identity, meta_base) -> None:
    """Checkpoint, then the state that names it (so a kill between the two resumes from
    the previous checkpoint, which is still there)."""
    if not world.is_main:
        return
    from harness.checkpoints.sidecar import write_sidecar

    name = checkpoint_name(req.framework, step)
    path = os.path.join(req.out, name)
    trainer.save(path, dict(meta_base, epoch=epoch))
    # the arch and class count beside the weights, as harness.convert writes them: evaluate,
    # infer and convert then need no --arch / --num-classes for this file
    write_sidecar(path, trainer.cfg, source=f"harness.train step {step}",
                  source_sha256=identity["init_weights_sha256"])
    atomic_write_json(os.path.join(req.out, STATE_FILE),
                      {"step": step, "epoch": epoch, "checkpoint": name, "identity": identity, "curve": curve,
                       "date": utc_now()})
    _prune(req.out, req.framework, req.keep)


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
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
