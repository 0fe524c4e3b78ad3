"""Training alignment, the last rung of a port's reproduction: fine-tune the network in
PyTorch and in MindSpore from the same weights on the same data order, and judge whether
the two train alike against the noise of PyTorch against itself.

    python -m harness.align                               # a generated dataset, 3 epochs
    python -m harness.align --data-root DIR --epochs 5 --json results/train_alignment_cpu.json

What runs, one ``python -m harness.train`` child after another (their commands are in the
result), then one ``python -m harness.evaluate`` per trained checkpoint:

  reference   torch, ``--threads T`` (default 1)
  band        torch again, the same seed, data order, augmentation draws and initial weights,
              only ``--threads`` changed (``--band-threads``, default 2): a different summation
              order in some kernels, float32 rounding, nothing else; and, when the candidate ran
              its oneDNN with another vector ISA than torch's (MindSpore's runner caps it at AVX2
              on AVX-512 CPUs), torch with that same cap (``ONEDNN_MAX_CPU_ISA``): other
              convolution kernels, float rounding again (``--no-isa-band``: none)
  candidate   MindSpore (``--ms-mode``, default graph), ``--threads T``

``--seed`` seeds the data order, the augmentation draws and the initial weights, which are
made in numpy and are therefore the same arrays in both frameworks.

The band, per step: the largest |loss_a - loss_b| over every pair of torch runs, at that
step or any before it (a running maximum: once two runs' weights have drifted apart they do
not come back together, even at a step where their losses happen to cross), never less than
``--floor`` x the reference's loss. The candidate passes where |loss_candidate - loss_reference| <= ``--multiple``
x band at every step; FAIL names the first step that leaves it. INCONCLUSIVE when the band
measured nothing (every torch run bit-identical at every step: the thread count did not
change the arithmetic) or is not finite. Then each run's last checkpoint is evaluated on the
held-out split (``seed_eval`` at the training size): the candidate's top-1 difference and
per-video top-1 disagreement against the reference must stay within ``--multiple`` x the
largest among the torch runs (never less than one video). The default multiple, 4, is about
twice the worst ratio float rounding alone reached in measurements here, and far under what a
1% larger learning rate or weight decay switched off reached (thousands): see the source.

Dropout is 0 by default. Dropout masks come from each framework's own generator, so with
dropout on, torch and MindSpore never see the same masks and their curves part for a reason
the thread-count band does not cover. The seed's committed nonlocal.yaml has ``keep_prob:
1.0`` (no dropout); the yaml in the seed's README says 0.5 (``harness.train``'s default).
``--dropout P > 0`` adds to the band a torch run that differs from the reference only in its
dropout-mask seed, which needs ``harness.train --dropout-seed`` (``--seed`` alone also moves
the data order, the draws and the initial weights); without that option it is refused.

Without ``--data-root`` a small dataset is made into the run folder (``harness.data.synthetic``:
4 classes, 32 train and 8 val videos per class, 2 s of 128x96) and trained at the demo's size
(8 frames, short edge 54, 48x48 crops, batch 8, lr 3e-3, cosine over the run). Written to
``--out`` (default ``runs/align/<date>``): the dataset, every run's folder, log and evaluation,
the result JSON (``--json``) and the plot (``--plot``). Exit status: 0 PASS, 1 FAIL or
INCONCLUSIVE (or a child run failed its own check), 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS
from harness.errors import CheckFailed, InputError
from harness.provenance import result_doc, utc_now
from harness.cli import (add_verbose, int_list, OneLineParser, positive_int, positive_seconds, run_main,
                         setup_logging, tolerance)
from harness.runners import add_runner_arguments, runner_argv, runner_settings
from harness.files import atomic_write_json, check_output_dir, check_output_path, sha256_file

# the demo's test size (harness/demo.py): the seed's pipelines at 8 frames of 48x48
DEFAULT_OVERRIDES = ("clip_len=8", "short_edge=54", "crop_size=48")
DATASET = {"classes": 4, "videos_per_class": 32, "val_videos_per_class": 8, "seconds": 2.0, "size": "128x96"}
EVAL_PRESET = "seed_eval"
# measured on this 2-core CPU (seeds 0 and 1, 48 steps): MindSpore graph reached 1.03 and 1.18 x
# this band; torch itself (oneDNN capped at AVX2) reached 1.88 x a thread-count-only band late
# in the run; a 1% larger lr reached 16,765 x (from step 1), weight decay off 1,614 x (from step 9).
# 4 is about twice the worst noise ratio, and hundreds of times under the smallest bug tried
DEFAULT_MULTIPLE = 4.0
DEFAULT_FLOOR = 2e-6      # of the loss: 8-17 float32 ulps
DROPOUT_SEED_OPTION = "--dropout-seed"
ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"   # read by oneDNN in torch and MindSpore alike
# a band at least this share of the mean loss cannot tell a port from noise
WIDE_BAND = 0.5
DROPOUT_NOTE = ("dropout masks come from each framework's own generator, so with dropout on torch and MindSpore "
                "never see the same masks; the run uses dropout {dropout} (the seed's committed nonlocal.yaml has "
                "keep_prob 1.0, the yaml in the seed's README 0.5, harness.train's default)")


# ----------------------------------------------------------------------------- the judgement
def loss_band(torch_curves: Sequence[Sequence[float]], floor: float) -> dict:
    """Per step: the widest |loss_a - loss_b| over every pair of torch runs (``raw``), its
    running maximum (``envelope``) and the band, the envelope never under ``floor`` x the
    first run's (the reference's) |loss| at the step: float32 rounds a loss relative to its size."""
    n = min(len(c) for c in torch_curves)
    raw = []
    for s in range(n):
        values = [float(c[s]) for c in torch_curves]
        raw.append(max(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]))
    envelope, widest = [], 0.0
    for r in raw:
        widest = max(widest, r) if math.isfinite(r) else math.inf
        envelope.append(widest)
    floors = [floor * abs(float(x)) for x in torch_curves[0][:n]]
    return {"raw": raw, "envelope": envelope, "band": [max(e, f) for e, f in zip(envelope, floors)]}


def judge_losses(reference: Sequence[float], others: Sequence[Sequence[float]], candidate: Sequence[float],
                 multiple: float, floor: float) -> dict:
    """The loss-curve verdict: PASS, FAIL (the first step outside ``multiple`` x band named)
    or INCONCLUSIVE (a band of fewer than two runs, one not finite, or one that measured nothing)."""
    curves = [list(reference), *map(list, others)]
    n = min(len(c) for c in [*curves, list(candidate)])
    out = {"multiple": multiple, "floor": floor, "steps": n}
    if len(curves) < 2 or n == 0:
        return dict(out, verdict="INCONCLUSIVE", reason="the band needs two torch runs with at least one step")
    band = loss_band([c[:n] for c in curves], floor)
    error = [abs(float(candidate[s]) - float(reference[s])) for s in range(n)]
    limit = [multiple * b for b in band["band"]]
    out.update(band_raw=band["raw"], band=band["band"], limit=limit, candidate_error=error,
               max_band_raw=max(band["raw"]), max_candidate_error=max(error),
               max_error_over_band=max(e / b for e, b in zip(error, band["band"])))
    if not all(math.isfinite(x) for c in curves for x in c[:n]):
        return dict(out, verdict="INCONCLUSIVE", reason="a torch run's loss is not finite: no band")
    if max(band["raw"]) == 0.0:
        return dict(out, verdict="INCONCLUSIVE",
                    reason=f"the torch runs are bit-identical at all {n} steps: the band measured nothing")
    typical = sum(abs(float(x)) for x in reference[:n]) / n
    if max(band["raw"]) >= WIDE_BAND * typical:
        return dict(out, verdict="INCONCLUSIVE",
                    reason=f"the band is as wide as the loss ({max(band['raw']):.3g} against a mean loss of "
                           f"{typical:.3g}): the torch runs disagree too much to judge anything")
    outside = [s for s in range(n) if not error[s] <= limit[s]]    # a NaN error is outside
    if outside:
        s = outside[0]
        return dict(out, verdict="FAIL", first_step_outside=s, n_steps_outside=len(outside),
                    reason=f"step {s}: |candidate - reference| {error[s]:.3g} > {multiple:g} x band "
                           f"{band['band'][s]:.3g}")
    return dict(out, verdict="PASS", first_step_outside=None, n_steps_outside=0,
                reason=f"every step inside {multiple:g} x band (worst {out['max_error_over_band']:.2f} x band)")


def judge_accuracy(torch_pairs: Sequence[dict], candidate_pair: dict, multiple: float, n_videos: int) -> dict:
    """The candidate's final top-1 difference and top-1 disagreement against the reference,
    inside ``multiple`` x the widest among the torch pairs (at least one video's worth).
    Each pair: ``{"top1_diff": fraction, "n_top1_differ": videos}``."""
    unit = 1.0 / n_videos if n_videos else math.inf
    top1_spread = max([abs(p["top1_diff"]) for p in torch_pairs] + [unit])
    flips_spread = max([p["n_top1_differ"] for p in torch_pairs] + [1])
    top1_ok = abs(candidate_pair["top1_diff"]) <= multiple * top1_spread + 1e-12
    flips_ok = candidate_pair["n_top1_differ"] <= multiple * flips_spread
    reasons = []
    if not top1_ok:
        reasons.append(f"top-1 differs by {100 * abs(candidate_pair['top1_diff']):.1f} points > {multiple:g} x "
                       f"{100 * top1_spread:.1f}")
    if not flips_ok:
        reasons.append(f"{candidate_pair['n_top1_differ']} videos' top-1 differ > {multiple:g} x {flips_spread}")
    return {"verdict": "PASS" if top1_ok and flips_ok else "FAIL", "top1_spread": top1_spread,
            "top1_limit": multiple * top1_spread, "flips_spread": flips_spread, "flips_limit": multiple * flips_spread,
            "reason": "; ".join(reasons) or "inside the torch runs' spread"}


def overall(losses: dict, accuracy: Optional[dict]) -> tuple:
    """(verdict, reason): INCONCLUSIVE if the band is, else FAIL if either check fails."""
    if losses["verdict"] == "INCONCLUSIVE":
        return "INCONCLUSIVE", losses["reason"]
    failed = [f"loss: {losses['reason']}"] if losses["verdict"] == "FAIL" else []
    if accuracy is not None and accuracy["verdict"] == "FAIL":
        failed.append(f"held-out: {accuracy['reason']}")
    if failed:
        return "FAIL", "; ".join(failed)
    return "PASS", f"loss: {losses['reason']}" + (f"; held-out: {accuracy['reason']}" if accuracy else "")


def _frame_size(text: str) -> str:
    """``WxH``, even numbers of at least 16 (H.264's yuv420p), refused before anything is made."""
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) >= 16 and int(h) >= 16 and not int(w) % 2
            and not int(h) % 2):
        raise argparse.ArgumentTypeError(f"expected WxH, even numbers of at least 16, got {text!r}")
    return f"{int(w)}x{int(h)}"


def train_can_vary_dropout_seed() -> bool:
    """Whether harness.train takes a dropout-mask seed apart from ``--seed`` (which also moves
    the data order, the draws and the initial weights)."""
    from harness.train import build_parser as train_parser

    return any(DROPOUT_SEED_OPTION in action.option_strings for action in train_parser()._actions)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Run:
    name: str
    role: str            # reference | band | candidate
    framework: str
    threads: int
    extra: List[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)   # set for this run's processes only


@dataclass
class AlignRequest:
    out: str
    json_path: str
    plot_path: Optional[str]
    data_root: Optional[str]
    overrides: List[str]
    epochs: int
    batch_size: int
    lr: float
    dropout: float
    seed: int
    threads: int
    band_threads: List[int]
    runner_settings: dict
    multiple: float
    floor: float
    max_steps: Optional[int]
    workers: int
    arch: Optional[str]
    quiet: bool
    dataset: dict = field(default_factory=lambda: dict(DATASET))
    isa_band: bool = True

    def runs(self) -> List[Run]:
        """Reference, band runs, candidate. With dropout, the band also holds a torch run whose
        dropout masks alone differ (the reference's thread count, another mask seed)."""
        masks = (lambda seed: [DROPOUT_SEED_OPTION, str(seed)]) if self.dropout > 0 else (lambda seed: [])
        runs = [Run(f"torch_t{self.threads}", "reference", "torch", self.threads, masks(self.seed))]
        runs += [Run(f"torch_t{t}", "band", "torch", t, masks(self.seed)) for t in self.band_threads]
        if self.dropout > 0:
            runs.append(Run(f"torch_t{self.threads}_masks{self.seed + 1}", "band", "torch", self.threads,
                            masks(self.seed + 1)))
        runs.append(Run(f"ms_t{self.threads}", "candidate", "ms", self.threads))
        return runs

    def recipe_args(self) -> List[str]:
        args = ["--epochs", str(self.epochs), "--batch-size", str(self.batch_size), "--lr", repr(self.lr),
                "--t-max", str(self.epochs), "--dropout", repr(self.dropout), "--seed", str(self.seed)]
        args += [a for o in self.overrides for a in ("--data-override", o)]
        if self.arch:
            args += ["--arch", self.arch]
        if self.max_steps is not None:
            args += ["--max-steps", str(self.max_steps)]
        return args


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.align", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="dataset in the seed's Kinetics layout (train and val splits); default: "
                                       "make a small one into the run folder")
    p.add_argument("--out", help="run folder: dataset, runs, logs, evaluations (default runs/align/<UTC date-time>)")
    p.add_argument("--json", metavar="FILE", help="the result (default <out>/train_alignment.json)")
    p.add_argument("--plot", metavar="PNG", help="loss curves, band and error per step (default: beside --json, .png)")
    p.add_argument("--no-plot", action="store_true", help="no plot")
    data = p.add_argument_group("the generated dataset (without --data-root; harness.data.synthetic)")
    data.add_argument("--classes", type=positive_int, help=f"classes (default {DATASET['classes']})")
    data.add_argument("--videos-per-class", type=positive_int,
                      help=f"train videos per class (default {DATASET['videos_per_class']})")
    data.add_argument("--val-videos-per-class", type=positive_int,
                      help=f"held-out videos per class (default {DATASET['val_videos_per_class']})")
    data.add_argument("--seconds", type=positive_seconds, help=f"length of each video (default {DATASET['seconds']:g})")
    data.add_argument("--size", type=_frame_size, metavar="WxH",
                      help=f"frame size, even numbers (default {DATASET['size']})")
    rec = p.add_argument_group("recipe (the seed's, at the demo's size)")
    rec.add_argument("--epochs", type=positive_int, default=3, help="epochs; the cosine spans them (default 3)")
    rec.add_argument("--batch-size", type=positive_int, default=8, help="global batch (default 8)")
    rec.add_argument("--lr", type=tolerance, default=3e-3, help="base learning rate (default 3e-3: from scratch)")
    rec.add_argument("--dropout", type=tolerance, default=0.0,
                     help="dropout before the classifier (default 0: each framework draws its own masks; > 0 needs "
                          "harness.train --dropout-seed, see above)")
    rec.add_argument("--seed", type=int, default=0, help="data order, augmentation draws, initial weights (default 0)")
    rec.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                     help=f"one more change of the training and evaluation pipelines, after the defaults "
                          f"{', '.join(DEFAULT_OVERRIDES)}")
    rec.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default {DEFAULT_PRESET}, harness.train's)")
    rec.add_argument("--max-steps", type=positive_int, help="stop every run after this step (default: every epoch)")
    runs = p.add_argument_group("runs and band")
    runs.add_argument("--threads", type=positive_int, default=1,
                      help="threads of the reference torch run, the candidate and every evaluation (default 1)")
    runs.add_argument("--band-threads", type=int_list, default=[2], metavar="N[,N...]",
                      help="threads of the other torch runs, which with the reference make the band (default 2)")
    runs.add_argument("--no-isa-band", action="store_true",
                      help="no torch run with the candidate's oneDNN ISA in the band (by default there is one "
                           f"when the candidate ran with another {ISA_VARIABLE} than torch, e.g. MindSpore's AVX2 "
                           "cap on an AVX-512 CPU)")
    add_runner_arguments(runs, "trains")
    runs.add_argument("--multiple", type=tolerance, default=DEFAULT_MULTIPLE,
                      help=f"the candidate may leave the reference by this many bands (default {DEFAULT_MULTIPLE:g})")
    runs.add_argument("--floor", type=tolerance, default=DEFAULT_FLOOR,
                      help=f"the smallest band, as a share of the reference's loss at the step (default "
                           f"{DEFAULT_FLOOR:g}: 8-17 float32 ulps; where the torch runs agree to the bit)")
    runs.add_argument("--workers", type=positive_int, default=1, help="decoding processes per run (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_verbose(p)
    return p


def request_from(args) -> AlignRequest:
    """Every refusal before any work: bad overrides, a used run folder, unwritable outputs."""
    from frameworks.spec.data_presets import get_data_preset, get_train_preset
    from harness.evaluate import parse_overrides, with_overrides

    if args.dropout >= 1:
        raise InputError(f"--dropout must be in [0, 1), got {args.dropout:g}")
    if args.dropout > 0 and not train_can_vary_dropout_seed():
        raise InputError(f"--dropout {args.dropout:g}: torch and MindSpore draw different dropout masks and "
                         f"harness.train cannot vary the mask seed alone (it needs {DROPOUT_SEED_OPTION}), so no "
                         "band covers it; run with --dropout 0")
    if args.threads in args.band_threads or len(set(args.band_threads)) != len(args.band_threads):
        raise InputError(f"--band-threads {','.join(map(str, args.band_threads))}: each torch run needs its own "
                         f"thread count, none equal to --threads {args.threads}")
    sizes = {k: getattr(args, k) for k in DATASET if getattr(args, k) is not None}
    if args.data_root is not None and sizes:
        raise InputError(f"--{next(iter(sizes)).replace('_', '-')} sizes the generated dataset; with --data-root "
                         "there is none")
    overrides = [*DEFAULT_OVERRIDES, *args.data_override]
    with warnings.catch_warnings():     # the presets' quirks: the runs print them in their logs
        warnings.simplefilter("ignore")
        for preset in (get_train_preset("seed_train"), get_data_preset(EVAL_PRESET)):
            with_overrides(preset, parse_overrides(overrides, preset))
    if args.data_root is not None:
        for split in ("train", "val"):
            csv = os.path.join(args.data_root, f"kinetics-400_{split}.csv")
            if not os.path.isfile(csv):
                raise InputError(f"--data-root {args.data_root}: no {os.path.basename(csv)} (the seed's layout)")
    out = args.out or os.path.join("runs", "align", utc_now().replace(":", "").replace("+0000", "Z"))
    check_output_dir(out, "--out folder", inputs=[args.data_root])
    for sub in ("train", "eval"):
        if os.path.isdir(os.path.join(out, sub)) and os.listdir(os.path.join(out, sub)):
            raise InputError(f"--out {out} holds an alignment run already; choose another --out")
    json_path = args.json or os.path.join(out, "train_alignment.json")
    check_output_path(json_path, "--json", inputs=[args.data_root])
    plot_path = None if args.no_plot else (args.plot or os.path.splitext(json_path)[0] + ".png")
    if plot_path:
        check_output_path(plot_path, "--plot", inputs=[args.data_root, json_path])
        from harness.plots import figure

        figure(1, 1, missing="the plot needs matplotlib (pip install matplotlib), or pass --no-plot")
    return AlignRequest(out, json_path, plot_path, args.data_root, overrides, args.epochs, args.batch_size, args.lr,
                        args.dropout, args.seed, args.threads, args.band_threads, runner_settings(args), args.multiple,
                        args.floor, args.max_steps, args.workers, args.arch, args.quiet, {**DATASET, **sizes},
                        not args.no_isa_band)


# ----------------------------------------------------------------------------- children
def _say(req: AlignRequest, text: str) -> None:
    if not req.quiet:
        print(text, flush=True)


def _child(module: str, argv: List[str], log: str, env: Optional[Dict[str, str]] = None) -> dict:
    """``python -m module argv`` (with ``env`` added to ours) and its output in ``log``; the
    command and its seconds. A child's bad input is ours (exit 2); any other failure is a
    failed check (exit 1)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    load_before = _load()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", module, *argv], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(log, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        why = (errors or lines or [f"exit {proc.returncode}"])[-1].removeprefix("error: ")
        text = f"{module} failed (exit {proc.returncode}, log {log}): {why}"
        raise InputError(text) if proc.returncode == 2 else CheckFailed(text)
    command = shlex.join(["python", "-m", module, *argv])
    if env:
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + command
    return {"command": command, "seconds": round(seconds, 2), "log": log,
            "load_before": load_before, "load_after": _load()}


def _load() -> Optional[float]:
    """The 1-minute load average (others' work on the machine slows a run, never changes its numbers)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:   # pragma: no cover - not on Linux
        return None


def prepare_dataset(req: AlignRequest) -> dict:
    """The dataset's description: made here, or the given root's CSVs."""
    root, generated, description, made = req.data_root, req.data_root is None, None, None
    if generated:
        root = os.path.join(req.out, "k400")
        summary = os.path.join(req.out, "dataset.json")
        d = req.dataset
        made = _child("harness.data.synthetic", [root, "--classes", str(d["classes"]), "--videos-per-class",
                                               str(d["videos_per_class"]), "--val-videos-per-class",
                                               str(d["val_videos_per_class"]), "--seconds", str(d["seconds"]),
                                               "--size", d["size"], "--no-progress", "--json", summary],
                      os.path.join(req.out, "logs", "make_dataset.log"))
        with open(summary) as f:
            description = json.load(f)
        _say(req, f"dataset: {description['videos']['train']} train + {description['videos']['val']} val videos, "
                  f"{len(description['classes'])} classes, made in {made['seconds']:.0f} s under {root}")
    csvs = {s: os.path.join(root, f"kinetics-400_{s}.csv") for s in ("train", "val")}
    rows = {}
    for s, path in csvs.items():
        with open(path) as f:
            rows[s] = sum(1 for line in f if line.strip()) - 1
    return {"root": root, "generated": generated, "description": description, "made_by": made,
            "csv_sha256": {s: sha256_file(p) for s, p in csvs.items()}, "csv_rows": rows}


def env_text(run: Run) -> str:
    return "".join(f", {k}={v}" for k, v in run.env.items())


def train_run(req: AlignRequest, run: Run, data_root: str, number: str) -> None:
    folder = os.path.join(req.out, "train", run.name)
    argv = ["--framework", run.framework, "--data-root", data_root, "--out", folder, *req.recipe_args(),
            "--threads", str(run.threads), "--workers", str(req.workers), *runner_argv(req.runner_settings), "--keep", "1",
            "-q", *run.extra]
    _say(req, f"[{number}] {run.name} ({run.role}{env_text(run)}) ...")
    info = _child("harness.train", argv, os.path.join(req.out, "logs", f"train_{run.name}.log"), run.env)
    with open(os.path.join(folder, "train.json")) as f:
        summary = json.load(f)
    curve = summary["curve"]
    run.record.update(name=run.name, role=run.role, framework=run.framework, threads=run.threads, env=run.env,
                      hardware=summary.get("hardware"),
                      load_before=info["load_before"], load_after=info["load_after"],
                      train=dict(info, folder=folder, checkpoint=os.path.join(folder, summary["checkpoint"]),
                                 mean_step_ms=summary.get("mean_step_ms"), steps=len(curve),
                                 versions=summary.get("versions"),
                                 init_weights_sha256=summary.get("init_weights_sha256")),
                      losses=[r["loss"] for r in curve], lrs=[r["lr"] for r in curve],
                      final_loss=curve[-1]["loss"] if curve else None)
    _say(req, f"[{number}] {run.name}: {len(curve)} steps in {info['seconds']:.0f} s, loss "
              f"{curve[0]['loss']:.4f} -> {curve[-1]['loss']:.4f}")


def evaluate_run(req: AlignRequest, run: Run, data_root: str, number: str) -> None:
    out = os.path.join(req.out, "eval", f"{run.name}.json")
    argv = ["--framework", run.framework, "--checkpoint", run.record["train"]["checkpoint"], "--data-root", data_root,
            "--split", "val", "--data-preset", EVAL_PRESET, *[a for o in req.overrides for a in ("--data-override", o)],
            "--threads", str(req.threads), "--workers", str(req.workers), *runner_argv(req.runner_settings), "--out", out,
            "-q"]
    info = _child("harness.evaluate", argv, os.path.join(req.out, "logs", f"eval_{run.name}.log"), run.env)
    with open(out) as f:
        summary = json.load(f)
    run.record["eval"] = dict(info, summary=out, top1=summary.get("top1"), top5=summary.get("top5"),
                              n_videos=summary.get("n_videos"), n_missing=summary.get("n_missing"))
    _say(req, f"[{number}] {run.name}: top-1 {100 * (summary.get('top1') or 0):.1f}% on "
              f"{summary.get('n_videos')} held-out videos ({info['seconds']:.0f} s)")


def compare_evaluations(runs: List[Run]) -> dict:
    """Each other run against the reference: top-1 difference and per-video top-1 agreement."""
    from harness.scores import compare_runs

    ref = runs[0]
    pairs = {}
    for run in runs[1:]:
        c = compare_runs(ref.record["eval"]["summary"], run.record["eval"]["summary"], tie_margin=1e-4)
        pairs[f"{run.name} vs {ref.name}"] = {
            "role": run.role, "top1_diff": run.record["eval"]["top1"] - ref.record["eval"]["top1"],
            "top1_agreement": c["top1_agreement"], "n_top1_differ": c["n_top1_differ"], "n_common": c["n_common"],
            "n_near_ties": c["n_near_ties"], "max_abs_delta_score": c["max_abs_delta"]}
    return pairs


# ----------------------------------------------------------------------------- the command
def isa_band_run(req: AlignRequest, candidate_hardware: Optional[dict], environ=os.environ) -> Optional[Run]:
    """A torch run with the candidate's oneDNN ISA, when the candidate ran with another one
    than the torch runs (MindSpore's runner caps its oneDNN at AVX2 on AVX-512 CPUs, where
    MindSpore 2.10 would run reference convolutions): the same network, data and weights in
    torch, only the convolutions' vector kernels changed, which is float rounding alone."""
    hardware = candidate_hardware or {}
    cap = hardware.get("onednn_max_cpu_isa")
    torch_isa = environ.get(ISA_VARIABLE) or environ.get("DNNL_MAX_CPU_ISA") or hardware.get("cpu_isa")
    if not req.isa_band or not cap or cap == "oneDNN default" or str(cap).upper() == str(torch_isa).upper():
        return None
    masks = [DROPOUT_SEED_OPTION, str(req.seed)] if req.dropout > 0 else []
    return Run(f"torch_t{req.threads}_{str(cap).lower()}", "band", "torch", req.threads, masks,
               env={ISA_VARIABLE: str(cap)})


def align(req: AlignRequest) -> dict:
    t0 = time.perf_counter()
    dataset = prepare_dataset(req)
    runs = req.runs()
    for i, run in enumerate(runs):
        train_run(req, run, dataset["root"], f"train {i + 1}")
    isa_run = isa_band_run(req, runs[-1].record.get("hardware"))
    if isa_run is not None:
        runs.insert(len(runs) - 1, isa_run)
        train_run(req, isa_run, dataset["root"], f"train {len(runs)}")
    for i, run in enumerate(runs):
        evaluate_run(req, run, dataset["root"], f"evaluate {i + 1}")
    reference, candidate = runs[0], runs[-1]
    losses = judge_losses(reference.record["losses"], [r.record["losses"] for r in runs[1:-1]],
                          candidate.record["losses"], req.multiple, req.floor)
    pairs = compare_evaluations(runs)
    torch_pairs = [p for p in pairs.values() if p["role"] == "band"]
    accuracy = judge_accuracy(torch_pairs, pairs[f"{candidate.name} vs {reference.name}"], req.multiple,
                              reference.record["eval"]["n_videos"] or 0)
    verdict, reason = overall(losses, accuracy)
    same_isa = None
    if isa_run is not None:   # a diagnostic: the candidate against torch with its own kernels' ISA
        diff = [abs(a - b) for a, b in zip(candidate.record["losses"], isa_run.record["losses"])]
        apart = [s for s, (d, b) in enumerate(zip(diff, isa_run.record["losses"]))
                 if not d <= req.multiple * req.floor * abs(b)]
        same_isa = {"run": isa_run.name, "abs_diff": diff, "max_abs_diff": max(diff) if diff else None,
                    "first_step_above_multiple_x_floor": apart[0] if apart else None}
    return {"verdict": verdict, "reason": reason,
            "reference": reference.name, "candidate": candidate.name,
            "band_runs": [r.name for r in runs[1:-1]],
            "dropout_note": DROPOUT_NOTE.format(dropout=req.dropout),
            "band_definition": ("per step s: max over torch pairs (a, b) and steps t <= s of |loss_a(t) - loss_b(t)|, "
                                f"at least --floor {req.floor:g} x |loss_reference(s)|; the candidate must keep "
                                f"|loss_candidate(s) - loss_reference(s)| <= {req.multiple:g} x band(s)"),
            "dataset": dataset, "recipe": _recipe(req), "losses": losses,
            "candidate_vs_same_isa_torch": same_isa,
            "held_out": {"split": "val", "data_preset": EVAL_PRESET, "pairs": pairs, "verdict": accuracy["verdict"],
                         "check": accuracy},
            "runs": [r.record for r in runs], "wall_s": round(time.perf_counter() - t0, 1),
            "plot": req.plot_path}


def _recipe(req: AlignRequest) -> dict:
    return {"train_preset": "seed_train", "recipe": "seed_finetune", "epochs": req.epochs,
            "batch_size": req.batch_size, "lr": req.lr, "t_max_epochs": req.epochs, "dropout": req.dropout,
            "seed": req.seed, "data_override": req.overrides, "arch": req.arch or "harness.train's default",
            "threads": req.threads, "band_threads": req.band_threads, "isa_band": req.isa_band,
            "runner_settings": req.runner_settings,
            "max_steps": req.max_steps, "harness_train_args": req.recipe_args()}


def print_result(doc: dict) -> None:
    losses = doc["losses"]
    if "band" in losses:
        print(f"loss over {losses['steps']} steps: worst |{doc['candidate']} - {doc['reference']}| "
              f"{losses['max_candidate_error']:.3g}, widest torch band {losses['max_band_raw']:.3g}, worst "
              f"error / band {losses['max_error_over_band']:.2f} (limit {losses['multiple']:g})")
    for name, p in doc["held_out"]["pairs"].items():
        print(f"held-out {name}: top-1 {100 * p['top1_diff']:+.1f} points, top-1 agreement "
              f"{100 * p['top1_agreement']:.1f}% ({p['n_top1_differ']} of {p['n_common']} videos differ)")
    same = doc.get("candidate_vs_same_isa_torch")
    if same:
        apart = same["first_step_above_multiple_x_floor"]
        print(f"{doc['candidate']} against {same['run']} (torch, the same oneDNN ISA): "
              + ("within the floor's limit at every step" if apart is None else
                 f"within the floor's limit until step {apart}") + f", worst {same['max_abs_diff']:.3g}")
    print(f"{doc['verdict']}: {doc['reason']}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        req = request_from(args)
        body_doc = align(req)
        doc = result_doc("train_alignment", body_doc)
        if req.plot_path:
            from harness.align_plot import alignment_plot

            alignment_plot(doc, req.plot_path)
        atomic_write_json(req.json_path, doc)
        print_result(doc)
        print(f"result: {req.json_path}" + (f"; plot: {req.plot_path}" if req.plot_path else ""))
        return 0 if doc["verdict"] == "PASS" else 1

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
