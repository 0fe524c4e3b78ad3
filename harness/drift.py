"""The drift audit: which protocol or graph difference costs how much accuracy.

    python -m harness.drift --checkpoint C --data-root D --from seed_eval --to mmaction2_test_10x3 \\
        [--arch-from X --arch-to Y] [--framework torch|ms] [--out runs/drift.json] [--plot drift.png]
    python -m harness.drift --from seed_eval --to mmaction2_test_10x3 --list   # the differences only
    python -m harness.drift ... --resume                      # after a crash or kill -9
    torchrun --nproc_per_node 2 -m harness.drift ...          # one shard per process, then:
    python -m harness.drift --merge OUT.shard0of2.json OUT.shard1of2.json --out OUT.json

The differences are generated from the spec, not written here: every field of the data
presets (``DataPreset``) and of the architecture (``I3DNLConfig`` and its non-local config)
in which FROM and TO differ. Fields that only make sense together carry the same
``drift_group`` in their dataclass metadata (``frameworks/spec/data_presets.py``: the
sampler with its clip count and seed, the crop with its size and three-crop order, the
scale, mean, std and operation of one normalisation, the dataset-preparation resize) and
are one difference; any other field is a difference of its own; fields that only name or
document a preset never are one. A new preset is audited without new code.

The checkpoint is then evaluated (a) on FROM, (b) on FROM with each difference applied
alone, (c) along a cumulative path from FROM to TO (the differences in spec order, or
``--order``), and (d) on TO. Each step reports top-1, top-5 and mean-class accuracy, its
per-video top-1 agreement with FROM and the deltas, as a table, a JSON result (kind
``drift``) and a waterfall plot. Steps that run the same pipeline share one run; a
difference the preset refuses alone, or under which every video fails, is reported as
invalid alone. A graph difference changes which weights fit: only arch presets with
identical parameter names and shapes can be walked with one checkpoint (dot product ->
embedded Gaussian, mmaction2's stem -> the seed's); others are refused.

Each video is decoded once per distinct sampling (the frame indices a preset picks), not
once per step; resizing, cropping, normalisation and the forward pass run per step
(:mod:`harness.drift_data`). Every step's run is an ordinary ``harness.evaluate`` run, with
the same identity, score chunks and summary under ``<out>.steps/``: ``--resume`` continues
each from its saved chunks, shards follow the launcher (``RANK``/``WORLD_SIZE``,
``RANK_ID``/``RANK_SIZE``, SLURM arrays, ``--shard I/N``), and the evaluate command that
reproduces a step's scores is printed with it.

Every input is checked before the plan is printed: the data root and its index (a CSV with
no video to run is refused; a video outside the root is an ``outside_root`` fault unless
``--allow-outside-root``), the checkpoint, the presets, every output path (missing parent
folders are made, and removed again if the audit is refused; no output may be an input) and,
with ``--resume``, every step's saved run. A killed session's half-written temporaries are
removed when the next session takes the steps' locks. stdout carries the plan, the notes and
caveats and the table; stderr the progress bar and, on failure, one error line.

Exit status: 0 ok; 1 a step's scores are not finite, or FROM scored no video (every delta
would be void; the result is written); 2 bad input (one line), a refused resume included.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS as ARCH_PRESETS, I3DNLConfig, get_preset, parameter_specs
from frameworks.spec.data_presets import DRIFT_GROUP, PRESETS as DATA_PRESETS, DataPreset, canonical_json
from harness import metrics
from harness import scores as score_store
from harness.errors import CheckFailed, InputError
from harness.provenance import result_doc
from harness.cli import (add_device, add_verbose, nonnegative_int, num_classes, OneLineParser,
                         positive_int, run_main, setup_logging)
from harness.drift_data import SharedSampling, decode_views, sampling_key
from harness.cli import add_allow_outside_root, caveats_to_stdout, say
from harness.runners import add_runner_arguments, names_help, runner_settings
from harness.files import MadeFolders, undone_on_failure
from harness.files import atomic_write_json, check_output_dir, os_reason, read_json_input
from harness.text import printable

# a field named so is never a difference, metadata or not (the arch config carries no metadata)
ALWAYS_DESCRIBES = ("name",)


# ----------------------------------------------------------------------------- the differences
def leaves(obj, prefix: str = "") -> List[Tuple[str, Any, Optional[str]]]:
    """``(field path, value, drift group)`` of every field of a (nested) spec dataclass that
    can change a result; a nested dataclass (the non-local config) contributes its own fields."""
    out = []
    for f in dataclasses.fields(obj):
        if f.metadata.get("drift") == "describes" or f.name in ALWAYS_DESCRIBES:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += leaves(value, f"{prefix}{f.name}.")
        else:
            group = f.metadata.get(DRIFT_GROUP)
            out.append((prefix + f.name, value, prefix + group if group else None))
    return out


@dataclass(frozen=True)
class Difference:
    """One named difference: the fields (one, or a declared group) in which FROM and TO differ."""

    name: str
    kind: str                                   # "data" | "arch"
    fields: Tuple[Tuple[str, Any, Any], ...]    # (field path, FROM's value, TO's value)

    @property
    def label(self) -> str:
        return self.name if self.kind == "data" else f"arch.{self.name}"

    def changes(self) -> Dict[str, Any]:
        return {path: to for path, _, to in self.fields}

    def describe(self) -> str:
        return "; ".join(f"{path} {_short(a)} -> {_short(b)}" for path, a, b in self.fields)

    def to_dict(self) -> dict:
        return {"name": self.label, "kind": self.kind,
                "fields": {path: {"from": _jsonable(a), "to": _jsonable(b)} for path, a, b in self.fields}}


def differences(a, b, kind: str) -> List[Difference]:
    """Every difference between two instances of one spec dataclass, in field order."""
    if type(a) is not type(b):
        raise TypeError(f"cannot compare a {type(a).__name__} with a {type(b).__name__}")
    groups: Dict[str, List[Tuple[str, Any, Any]]] = {}
    for (path, va, group), (path_b, vb, _) in zip(leaves(a), leaves(b)):
        assert path == path_b
        if va == vb and type(va) is type(vb):
            continue
        groups.setdefault(group or path, []).append((path, va, vb))
    return [Difference(name, kind, tuple(fields)) for name, fields in groups.items()]


def apply_changes(obj, changes: Dict[str, Any]):
    """``obj`` with the fields at these (dotted) paths replaced; the dataclass validates it."""
    top: Dict[str, Any] = {}
    nested: Dict[str, Dict[str, Any]] = {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = apply_changes(getattr(obj, head), sub)
    return dataclasses.replace(obj, **top)


def behaviour(obj) -> str:
    """Everything of a preset or config that can change a score (its name and notes left out)."""
    return canonical_json({path: _jsonable(value) for path, value, _ in leaves(obj)})


def _jsonable(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: _jsonable(x) for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return str(v)


def override_text(value) -> str:
    """A value as ``harness.evaluate --data-override FIELD=VALUE`` reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return json.dumps(_jsonable(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Side:
    """FROM or TO: a named data preset with its overrides, and an arch config."""

    preset_name: str
    overrides: Dict[str, Any]
    preset: DataPreset
    cfg: I3DNLConfig


@dataclass
class Step:
    kind: str                      # from | alone | path | to
    label: str
    applied: Tuple[str, ...]       # difference labels applied on top of FROM
    preset: Optional[DataPreset] = None
    cfg: Optional[I3DNLConfig] = None
    base: str = ""                 # the named data preset the step's preset is built from
    overrides: Dict[str, Any] = field(default_factory=dict)   # relative to ``base``
    invalid: Optional[str] = None
    run: Optional[int] = None


@dataclass
class RunSpec:
    """One pipeline (data preset x arch) that one or more steps share: an evaluate run."""

    slug: str
    preset: DataPreset
    cfg: I3DNLConfig
    base: str
    overrides: Dict[str, Any]
    steps: List[int] = field(default_factory=list)


@dataclass
class Plan:
    a: Side
    b: Side
    diffs: List[Difference]
    steps: List[Step]
    runs: List[RunSpec]


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)
    return "-".join(x for x in keep.split("-") if x)[:60]


def parameter_changes(cfg_a: I3DNLConfig, cfg_b: I3DNLConfig) -> List[str]:
    """The parameter names (or, the names being equal, the shapes) in which two arch configs
    differ; empty when one checkpoint runs both."""
    sa, sb = parameter_specs(cfg_a), parameter_specs(cfg_b)
    return sorted(set(sa) ^ set(sb)) or [k for k in sa if sa[k] != sb[k]]


def build_plan(a: Side, b: Side, order: Optional[Sequence[str]] = None) -> Plan:
    """The differences between FROM and TO, and every step of the audit, deduplicated into runs."""
    diffs = _ordered(differences(a.preset, b.preset, "data") + differences(a.cfg, b.cfg, "arch"), order)
    graphs = f" / {a.cfg.name}" if a.cfg.name != b.cfg.name else ""
    steps = [Step(kind="from", label=f"FROM {a.preset_name}{graphs}", applied=(), preset=a.preset, cfg=a.cfg,
                  base=a.preset_name, overrides=dict(a.overrides)),
             Step(kind="to", label=f"TO {b.preset_name}" + (f" / {b.cfg.name}" if graphs else ""),
                  applied=tuple(d.label for d in diffs), preset=b.preset, cfg=b.cfg, base=b.preset_name,
                  overrides=dict(b.overrides))]
    steps += [_step(a, "alone", f"alone: {d.label}", [d]) for d in diffs]
    steps += [_step(a, "path", f"path {i}: +{diffs[i - 1].label}", diffs[:i]) for i in range(1, len(diffs) + 1)]
    if steps[-1].kind == "path" and (behaviour(steps[-1].preset), behaviour(steps[-1].cfg)) != (
            behaviour(b.preset), behaviour(b.cfg)):  # pragma: no cover - a bug in leaves()/apply_changes()
        raise RuntimeError("the cumulative path does not end at TO")
    runs = _share_runs(steps)
    # the order steps are shown in: FROM, each alone, the path, TO
    order_shown = [0] + [i for i, s in enumerate(steps) if s.kind == "alone"] + \
                  [i for i, s in enumerate(steps) if s.kind == "path"] + [1]
    remap = {old: new for new, old in enumerate(order_shown)}
    for run in runs:
        run.steps = sorted(remap[i] for i in run.steps)
    return Plan(a=a, b=b, diffs=diffs, steps=[steps[i] for i in order_shown], runs=runs)


def _ordered(diffs: List[Difference], order: Optional[Sequence[str]]) -> List[Difference]:
    """The differences in spec order, those ``--order`` names first (in its order)."""
    if not order:
        return diffs
    labels = [d.label for d in diffs]
    unknown = [o for o in order if o not in labels]
    if unknown:
        raise InputError(f"--order: {', '.join(unknown)} is not a difference between the two sides "
                         f"(they are: {', '.join(labels) or 'none'})")
    first = [next(d for d in diffs if d.label == o) for o in dict.fromkeys(order)]
    return first + [d for d in diffs if d not in first]


def _step(a: Side, kind: str, label: str, applied: Sequence[Difference]) -> Step:
    """FROM with these differences applied, or why it cannot run (``invalid``)."""
    data = {k: v for d in applied if d.kind == "data" for k, v in d.changes().items()}
    arch = {k: v for d in applied if d.kind == "arch" for k, v in d.changes().items()}
    step = Step(kind=kind, label=label, applied=tuple(d.label for d in applied), base=a.preset_name,
                overrides={**a.overrides, **data})
    try:
        step.preset = apply_changes(a.preset, data)
    except (ValueError, TypeError) as exc:
        step.invalid = f"the data preset refuses it: {exc}"
        return step
    try:
        step.cfg = apply_changes(a.cfg, arch)
    except (ValueError, TypeError) as exc:
        step.invalid = f"the arch config refuses it: {exc}"
        return step
    changed = parameter_changes(a.cfg, step.cfg)
    if changed:
        step.invalid = (f"it changes the network's parameters ({len(changed)} names or shapes, e.g. "
                        f"{changed[0]}): the checkpoint does not fit it")
    return step


def _share_runs(steps: List[Step]) -> List[RunSpec]:
    """One run per distinct pipeline (data preset x arch behaviour), in step order; each
    valid step learns its run's number and each run its steps' (original) numbers."""
    runs: List[RunSpec] = []
    by_key: Dict[Tuple[str, str], int] = {}
    for n, step in enumerate(steps):
        if step.invalid:
            continue
        key = (behaviour(step.preset), behaviour(step.cfg))
        if key not in by_key:
            by_key[key] = len(runs)
            runs.append(RunSpec(slug=f"{len(runs):02d}-{_slug(step.label.replace(': ', '-'))}", preset=step.preset,
                                cfg=step.cfg, base=step.base, overrides=dict(step.overrides)))
        step.run = by_key[key]
        runs[step.run].steps.append(n)
    return runs


def arch_command(step_cfg: I3DNLConfig, plan: Plan) -> Optional[str]:
    for side in (plan.a, plan.b):
        if behaviour(step_cfg) == behaviour(side.cfg):
            return side.cfg.name
    return None


def evaluate_command(run: RunSpec, plan: Plan, ctx: "Context") -> Optional[List[str]]:
    """The ``harness.evaluate`` arguments that reproduce a run's scores (None: the arch is
    between presets, which evaluate cannot express)."""
    arch = arch_command(run.cfg, plan)
    if arch is None:
        return None
    base = ctx.base
    argv = ["--framework", base.framework, "--data-root", base.data_root, "--checkpoint", base.checkpoint or "C",
            "--arch", arch, "--data-preset", run.base]
    for k, v in run.overrides.items():
        argv += ["--data-override", f"{k}={override_text(v)}"]
    for flag, value in (("--split", base.split if base.split != "val" else None), ("--annotations", base.annotations),
                        ("--limit", base.limit), ("--batch-size", base.batch_size if base.batch_size != 1 else None),
                        ("--threads", base.threads), ("--device", base.device if base.device != "cpu" else None),
                        ("--num-classes", ctx.num_classes)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The two presets, the weights, the data and the result first; the rest in groups."""
    p = OneLineParser(prog="python -m harness.drift", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="from_preset", choices=list(DATA_PRESETS), metavar="PRESET",
                   help=f"data preset A (one of {', '.join(DATA_PRESETS)})")
    p.add_argument("--to", dest="to_preset", choices=list(DATA_PRESETS), metavar="PRESET", help="data preset B")
    p.add_argument("--checkpoint", help="weights (any format harness.convert reads, or a registry name)")
    p.add_argument("--data-root", help="dataset root (the seed's Kinetics layout)")
    p.add_argument("--framework", default="torch", help=f"{names_help('evaluates')} (default torch)")
    p.add_argument("--out", help="result JSON (default runs/drift_<from>_to_<to>.json); each step's run goes "
                                 "to <out without .json>.steps/")
    p.add_argument("--list", action="store_true", help="print the differences and the steps, run nothing")
    _sides_options(p.add_argument_group("the two sides, further"))
    _evaluation_options(p.add_argument_group("data and network (as harness.evaluate)"))
    _speed_options(p.add_argument_group("speed, sharding and resuming"))
    add_runner_arguments(p.add_argument_group("framework options"))
    out = p.add_argument_group("output")
    out.add_argument("--plot", help="waterfall plot PNG (default <out without .json>.png)")
    out.add_argument("--no-plot", action="store_true", help="no plot")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_verbose(out)
    return p


def _sides_options(what) -> None:
    what.add_argument("--arch-from", choices=list(ARCH_PRESETS), metavar="ARCH",
                      help=f"arch of A (default: the checkpoint's registry entry or sidecar, else {DEFAULT_PRESET})")
    what.add_argument("--arch-to", choices=list(ARCH_PRESETS), metavar="ARCH",
                      help="arch of B (default: A's; must have A's parameter names and shapes)")
    what.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                      help="change a field of both presets (e.g. crop_size=64 for a test-sized run); not a difference")
    what.add_argument("--from-override", action="append", default=[], metavar="FIELD=VALUE",
                      help="change a field of A only (e.g. plant a wrong std)")
    what.add_argument("--to-override", action="append", default=[], metavar="FIELD=VALUE",
                      help="change a field of B only")
    what.add_argument("--order", metavar="D1,D2,...",
                      help="the cumulative path's order: these differences first (names as --list prints them), "
                           "the rest in spec order")


def _evaluation_options(run) -> None:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    run.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "--checkpoint"))
    run.add_argument("--split", default="val", help="split name (default val)")
    run.add_argument("--annotations", help="annotation file: the split's CSV, or an mmaction2 list file (.txt)")
    add_allow_outside_root(run)
    run.add_argument("--num-classes", type=num_classes, help="override the arch's number of classes")
    run.add_argument("--limit", type=positive_int, help="only the first N videos of the index")


def _speed_options(run) -> None:
    run.add_argument("--batch-size", type=positive_int, default=1, help="videos per forward pass (default 1)")
    run.add_argument("--workers", type=nonnegative_int, default=2, help="decoding processes (default 2; 0 = in process)")
    add_device(run)
    run.add_argument("--threads", type=positive_int, help="framework threads (default: cores / shards)")
    run.add_argument("--shard", metavar="I/N", help="run shard I of N (default: from the launcher's env)")
    run.add_argument("--chunk-videos", type=positive_int, default=32, help="videos per saved score chunk (default 32)")
    run.add_argument("--resume", action="store_true", help="continue every step from the chunks already saved")
    run.add_argument("--merge", nargs="+", metavar="SHARD", help="merge drift shard results (needs --out)")


@dataclass
class Context:
    """Everything but the plan: where the data and weights are, how to run (``base``: the
    evaluation every step is, but for its arch, data preset and output), where results go."""

    base: Any                      # harness.evaluate.EvaluationRequest (imported lazily)
    out: str
    steps_dir: str
    plot: Optional[str]
    num_classes: Optional[int] = None
    inputs: List[Optional[str]] = field(default_factory=list)   # data root, checkpoint, annotations


def _side(name: str, common: List[str], own: List[str], cfg: I3DNLConfig, flag: str) -> Side:
    from frameworks.spec.data_presets import get_data_preset
    from harness.evaluate import parse_overrides, with_overrides

    base = get_data_preset(name)   # the seed's std typo: one 'warning:' line per command (harness.cli)
    shared = parse_overrides(common, base)
    with_overrides(base, shared)   # a shared override the preset refuses is --data-override's fault
    overrides = {**shared, **parse_overrides(own, base)}
    preset = with_overrides(base, overrides, flag)
    return Side(preset_name=name, overrides=overrides, preset=preset, cfg=cfg)


def sides_from_args(args) -> Tuple[Side, Side]:
    from harness.checkpoints.sidecar import choose_arch

    if not args.from_preset or not args.to_preset:
        raise InputError("--from and --to (data presets) are required")
    choice = choose_arch(args.arch_from, args.checkpoint, DEFAULT_PRESET, num_classes=args.num_classes)
    cfg_a = choice.cfg
    cfg_b = cfg_a
    if args.arch_to:
        cfg_b = get_preset(args.arch_to).replace(num_classes=cfg_a.num_classes, depth=cfg_a.depth)
    changed = parameter_changes(cfg_a, cfg_b)
    if changed:
        raise InputError(f"arch {cfg_a.name} and {cfg_b.name} differ in their parameters ({len(changed)} names or "
                         f"shapes, e.g. {changed[0]}): one checkpoint cannot run both, so only arch presets with "
                         f"identical parameter names and shapes can be walked (e.g. i3d_nl_dot_product_r50 with "
                         f"i3d_nl_embedded_gaussian_r50 or i3d_nl_mindvideo_r50)")
    a = _side(args.from_preset, args.data_override, args.from_override, cfg_a, "--from-override")
    b = _side(args.to_preset, args.data_override, args.to_override, cfg_b, "--to-override")
    return a, b


def context_from_args(args, plan: Plan) -> Context:
    from harness.evaluate import EvaluationRequest, check_inputs, shard_from
    from harness.runners import require

    if not args.checkpoint or not args.data_root:
        raise InputError("--checkpoint and --data-root are required to run the audit (--list shows the plan only)")
    framework = require(args.framework, "evaluates", "the drift audit")
    rank, world = shard_from(args.shard)
    checkpoint_file = check_inputs(args.data_root, args.checkpoint, args.annotations)
    out = args.out or os.path.join("runs", f"drift_{plan.a.preset_name}_to_{plan.b.preset_name}.json")
    stem = out[:-5] if out.endswith(".json") else out
    if world > 1:
        stem = f"{stem}.shard{rank}of{world}"
    out = stem + ".json"
    plot = None if args.no_plot else (args.plot or stem + ".png")
    base = EvaluationRequest(framework=framework, cfg=plan.a.cfg, preset=plan.a.preset, data_root=args.data_root,
                             out=out, split=args.split, annotations=args.annotations, checkpoint=args.checkpoint,
                             trust=args.trust_checkpoint, limit=args.limit, batch_size=args.batch_size,
                             workers=args.workers, device=args.device, runner_settings=runner_settings(args),
                             threads=args.threads,
                             rank=rank, world=world, chunk_videos=args.chunk_videos, resume=args.resume,
                             quiet=args.quiet, allow_outside_root=args.allow_outside_root)
    return Context(base=base, out=out, steps_dir=stem + ".steps", plot=plot, num_classes=args.num_classes,
                   inputs=[args.data_root, checkpoint_file, args.annotations])


def check_outputs(ctx: Context, made: Optional[MadeFolders] = None) -> None:
    """Before any long work: every file and folder the audit will write (missing parent
    folders created, as evaluate does; none of them one of the audit's inputs)."""
    made = made if made is not None else MadeFolders()
    if ctx.plot and not ctx.plot.lower().endswith(".png"):
        raise InputError(f"--plot {ctx.plot}: the plot is a PNG; name it *.png")
    made.check_path(ctx.out, "--out", inputs=ctx.inputs)
    if ctx.plot:
        made.check_path(ctx.plot, "--plot", inputs=ctx.inputs + [ctx.out])
    check_output_dir(ctx.steps_dir, "steps folder", inputs=ctx.inputs)


def remove_temporaries(*paths: Optional[str]) -> None:
    """The half-written temporary files (``.<name>.*.tmp``, :func:`harness.files.atomic_path`)
    a killed run left beside these outputs."""
    import glob

    for path in paths:
        if not path:
            continue
        folder, name = os.path.split(os.path.abspath(path))
        for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            try:
                os.remove(stale)
            except OSError:
                pass


# ----------------------------------------------------------------------------- running
def _request(ctx: Context, run: RunSpec):
    return dataclasses.replace(ctx.base, cfg=run.cfg, preset=run.preset, overrides=run.overrides,
                               out=os.path.join(ctx.steps_dir, run.slug + ".json"))


@dataclass
class _Live:
    """A run of the plan while it is scored: its store and identity (set by :func:`prepare`),
    the videos it still needs, its scorer (:class:`harness.evaluate.Scorer`, set by
    :func:`execute`) and the clips waiting for a full batch."""

    spec: RunSpec
    req: Any
    store: Any
    identity: dict = field(default_factory=dict)
    resumed: bool = False
    needed: set = field(default_factory=set)
    scorer: Any = None
    pending: list = field(default_factory=list)   # (position, video id, label, clips)

    def add(self, position: int, video_id: str, label: int, clips: np.ndarray) -> None:
        self.pending.append((position, video_id, label, clips))
        if len(self.pending) >= self.req.batch_size:
            self.flush()

    def flush(self) -> None:
        """Score the waiting clips as one batch, as evaluate batches them."""
        if self.pending:
            positions, ids, labels, clips = zip(*self.pending)
            self.scorer.score(positions, ids, labels, np.stack(clips))   # (B, V, 3, T, H, W)
            self.pending = []


@dataclass
class Session:
    """An audit that has passed every check: its index, its weights, every step's store locked
    and its identity written (a resume that does not match is refused before this exists)."""

    live: List[_Live]
    indexes: Dict[str, Any]
    labels: Dict[str, Dict[str, int]]
    made_steps_dir: bool
    steps_dir: str
    loaded: Any = None
    weights_sha: str = ""
    notes: List[str] = field(default_factory=list)   # printed with the plan, once every check has passed

    def give_up(self) -> None:
        """A refused or failed audit leaves nothing it made and saved nothing into."""
        for lv in self.live:
            lv.store.abandon()
        self.remove_steps_dir()

    def remove_steps_dir(self) -> None:
        if self.made_steps_dir:
            try:
                os.rmdir(self.steps_dir)   # only if empty
            except OSError:
                pass


def _indexes(plan: Plan, ctx: Context) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """One index per label order the steps use; every one must list the same videos."""
    from harness.data import build_index

    indexes = {}
    for order in dict.fromkeys(r.preset.label_order for r in plan.runs):
        indexes[order] = build_index(ctx.base.data_root, ctx.base.split, annotations=ctx.base.annotations,
                                     label_order=order, allow_outside_root=ctx.base.allow_outside_root
                                     ).require_videos()
    n_index = {o: len(ix) for o, ix in indexes.items()}
    indexes = {o: ix.limit(ctx.base.limit) for o, ix in indexes.items()}
    ids = [r.video_id for r in next(iter(indexes.values())).records]
    for order, ix in indexes.items():
        if [r.video_id for r in ix.records] != ids:
            raise InputError(f"label orders {next(iter(indexes))} and {order} index different videos of "
                             f"{printable(ctx.base.data_root)}; the audit needs one list of videos")
    return indexes, n_index


def prepare(plan: Plan, ctx: Context, indexed: Optional[Tuple[Dict[str, Any], Dict[str, int]]] = None) -> Session:
    """Every check that needs the data, the weights or the saved steps, before anything is
    printed or run: the index, the checkpoint, each step's lock, saved files and identity
    (``--resume``). What a killed session left half-written is removed once the locks are held."""
    from harness.checkpoints.io import arrays_sha256
    from harness.evaluate import checkpoint_weights
    from harness.scores import ScoreStore

    indexes, n_index = indexed or _indexes(plan, ctx)
    session = Session(live=[], indexes=indexes, made_steps_dir=not os.path.isdir(ctx.steps_dir),
                      steps_dir=ctx.steps_dir,
                      labels={o: {r.video_id: r.label for r in ix.records} for o, ix in indexes.items()})
    try:
        os.makedirs(ctx.steps_dir, exist_ok=True)
        for run in plan.runs:
            req = _request(ctx, run)
            lv = _Live(spec=run, req=req, store=ScoreStore(req.out))
            lv.store.lock()            # also removes the temporaries a killed session left in its folder
            session.live.append(lv)
            lv.store.check(ctx.base.resume)
        remove_temporaries(ctx.out, ctx.plot)
        session.loaded = checkpoint_weights(ctx.base.checkpoint, plan.a.cfg, ctx.base.trust,
                                            report=session.notes.append)   # printed with the plan
        session.weights_sha = arrays_sha256(session.loaded.arrays)   # once: every run scores the same weights
        for lv in session.live:
            _begin(lv, ctx, session, n_index[lv.spec.preset.label_order])
    except OSError as exc:
        session.give_up()
        raise InputError(f"cannot write under {printable(ctx.steps_dir)}: {os_reason(exc)}") from None
    except BaseException:
        session.give_up()
        raise
    return session


def _begin(lv: _Live, ctx: Context, session: Session, n_index: int) -> None:
    """A run's identity checked against what it saved (or written), and the videos it still needs."""
    from harness.evaluate import run_identity

    index = session.indexes[lv.spec.preset.label_order]
    lv.identity = run_identity(lv.req, n_index, index.annotation, session.loaded.sha256, session.weights_sha)
    done = lv.store.begin(lv.identity, ctx.base.resume, lv.spec.cfg.num_classes)
    lv.resumed = bool(done.n_chunks)
    lv.needed = {p for p in range(ctx.base.rank, len(index), ctx.base.world) if p not in done.covered}


def execute(plan: Plan, ctx: Context, session: Optional[Session] = None) -> Tuple[List[dict], dict]:
    """Score every run of the plan through evaluate's scorer (what earlier sessions saved is
    kept); returns each run's summary, and this session's decoding counts."""
    from harness.evaluate import Scorer, runner_for, scoring

    session = session or prepare(plan, ctx)
    live = session.live
    with scoring([lv.store for lv in live], lambda exc: _write_failure(exc, ctx, live),
                 cleanup=session.remove_steps_dir):
        runners: Dict[str, Any] = {}
        for lv in live:   # every framework starts before anything decodes (MindSpore and decord)
            key = behaviour(lv.spec.cfg)
            if key not in runners:
                runners[key] = runner_for(lv.req, session.loaded.arrays)
            lv.scorer = Scorer(lv.req, runners[key], lv.store, lv.identity, resumed=lv.resumed)
        decoding = _score_samplings(ctx, session)
        summaries = [lv.scorer.summary(
            [f.to_dict() for f in session.indexes[lv.spec.preset.label_order].faults.faults], session.loaded.path,
            kind="drift_step", drift_steps=[plan.steps[i].label for i in lv.spec.steps],
            timing_note="model time only: decoding is shared between the steps of a drift audit")
            for lv in live]
    return summaries, decoding


def _write_failure(exc: OSError, ctx: Context, live: List[_Live]) -> str:
    name = exc.filename if isinstance(exc.filename, str) else ctx.steps_dir
    kept = "; the steps' scores saved so far are kept: run again with --resume" \
        if any(lv.store.next_chunk for lv in live) else ""
    return f"cannot write {printable(name)}: {os_reason(exc)}{kept}"


def _score_samplings(ctx: Context, session: Session) -> dict:
    """One pass over the videos per distinct sampling; returns the decoding counts."""
    from tqdm import tqdm

    groups: Dict[tuple, List[_Live]] = {}
    for lv in session.live:
        groups.setdefault(sampling_key(lv.spec.preset), []).append(lv)
    decoding = {"samplings": len(groups), "video_decodes": 0, "step_videos": 0}
    total = sum(len(set().union(*(lv.needed for lv in g))) for g in groups.values())
    first = next(iter(session.indexes.values()))
    with tqdm(total=total, unit="video", disable=ctx.base.quiet, dynamic_ncols=True, desc="drift") as bar:
        for g, group in enumerate(groups.values()):
            bar.set_description(f"drift: sampling {g + 1}/{len(groups)} ({len(group)} runs)")
            decodes, served = _score_group(ctx, group, first, session.labels, bar)
            decoding["video_decodes"] += decodes
            decoding["step_videos"] += served
    return decoding


def _score_group(ctx: Context, group: List[_Live], index, labels: Dict[str, Dict[str, int]], bar) -> Tuple[int, int]:
    """One pass over the videos for the runs that sample them alike: decode once, then each
    run's views, normalisation and scorer, in evaluate's order and batching. Returns (videos
    decoded, as many times as their frames were read; run x video pairs served)."""
    from harness.data import ClipLoader, DatasetIndex, FaultLog

    positions = sorted(set().union(*(lv.needed for lv in group)))
    if not positions:
        return 0, 0
    sub = DatasetIndex([index.records[p] for p in positions], index.label_map, FaultLog(), index.split,
                       index.root, index.annotation, index.source)
    loader = ClipLoader(sub, SharedSampling(tuple(lv.spec.preset for lv in group)), workers=ctx.base.workers,
                        normalize=False, process_fn=decode_views)
    faults = _LoaderFaults(loader, group, {r.video_id: p for r, p in zip(sub.records, positions)}, bar)
    n_decodes = n_served = 0
    for item in loader:
        p, payload = positions[item.position], item.clips
        n_decodes += payload["n_decodes"]
        faults.pass_on(used=[not isinstance(outcome, tuple) for outcome in payload["of_run"]])
        for lv, outcome in zip(group, payload["of_run"]):
            if p not in lv.needed:
                continue
            if isinstance(outcome, tuple):   # what evaluate's loader records for this preset alone
                kind, reason = outcome
                lv.scorer.fault({"id": item.video_id, "kind": kind, "reason": printable(reason), "skipped": True,
                                 "position": p})
                continue
            label = labels[lv.spec.preset.label_order][item.video_id]
            lv.add(p, item.video_id, label, lv.spec.preset.normalize(payload["views"][outcome]))
            n_served += 1
        bar.update(1)
    faults.pass_on()
    for lv in group:
        lv.flush()
        lv.scorer.flush()
    return n_decodes, n_served


class _LoaderFaults:
    """The shared loader's faults, handed to the runs that need their video: a video it could
    not read is every run's fault; one it used with a note (``short_video``) only the note of
    the runs that used it, as each run's own loader would have recorded it."""

    def __init__(self, loader, group: List[_Live], position_of: Dict[str, int], bar):
        self.loader, self.group, self.position_of, self.bar = loader, group, position_of, bar
        self.seen = 0

    def pass_on(self, used: Optional[List[bool]] = None) -> None:
        """Every fault recorded since the last call; ``used``: which runs used the video just read."""
        for f in self.loader.faults.faults[self.seen:]:
            p = self.position_of[f.video_id]
            for k, lv in enumerate(self.group):
                if p in lv.needed and (f.skipped or (used is not None and used[k])):
                    lv.scorer.fault(dict(f.to_dict(), position=p))
            if f.skipped:            # never yielded: the progress bar counts it here
                self.bar.update(1)
        self.seen = len(self.loader.faults.faults)


# ----------------------------------------------------------------------------- the table
def _metrics_of(summary_path: str) -> Tuple[dict, Any]:
    doc = score_store.load_summary(summary_path)
    saved = score_store.read_scores(doc["_scores_dir"], doc.get("num_classes", 0))
    return doc, saved


def tabulate(plan_doc: dict, folder: str) -> List[dict]:
    """Every step's numbers, from its run's saved scores (the summary's folder is ``folder``)."""
    runs = plan_doc["runs"]
    loaded: Dict[int, Tuple[dict, Any]] = {}
    for i, run in enumerate(runs):
        loaded[i] = _metrics_of(os.path.join(folder, run["summary"]))
    steps = plan_doc["steps"]
    a_run = steps[0]["run"]
    a_doc, a_saved = loaded[a_run]
    rows = []
    previous = None
    for step in steps:
        row = {k: step[k] for k in ("kind", "label", "applied", "run")}
        row["invalid"] = step.get("invalid")
        if step["run"] is None:
            row["status"] = "invalid alone" if step["kind"] == "alone" else "invalid"
            rows.append(row)
            continue
        doc, saved = loaded[step["run"]]
        row.update({k: doc.get(k) for k in ("top1", "top5", "mean_class_accuracy", "n_videos", "n_missing",
                                            "n_listed", "n_non_finite")})
        row["summary"] = runs[step["run"]]["summary"]
        row["evaluate_command"] = runs[step["run"]].get("evaluate_command")
        scored = doc.get("n_videos", 0)
        if not scored:
            kinds = doc.get("faults", {}).get("counts", {})
            first = next((f for f in doc.get("faults", {}).get("list", []) if f.get("position") is not None), None)
            row["status"] = "invalid alone" if step["kind"] == "alone" else "invalid"
            row["invalid"] = ("every video failed" + (f": {first['kind']} ({first['reason']})" if first else "")
                              + (f" [{', '.join(f'{k} {v}' for k, v in kinds.items() if v)}]" if kinds else ""))
        else:
            row["status"] = "ok"
        agree = metrics.agreement(a_saved.video_ids, a_saved.scores, saved.video_ids, saved.scores) \
            if len(a_saved.video_ids) and len(saved.video_ids) else {"n_common": 0}
        row["top1_agreement_with_from"] = agree.get("top1_agreement")
        row["n_common_with_from"] = agree.get("n_common", 0)
        row["max_abs_delta_score"] = agree.get("max_abs_delta")
        for k in ("top1", "top5", "mean_class_accuracy"):
            mine, base = row.get(k), a_doc.get(k)
            row[f"delta_{k}"] = None if mine is None or base is None else mine - base
        if step["kind"] == "path":
            prev = previous if previous is not None else a_doc.get("top1")
            row["delta_top1_step"] = None if row.get("top1") is None or prev is None else row["top1"] - prev
            if row.get("top1") is not None:
                previous = row["top1"]
        rows.append(row)
    return rows


def plan_to_doc(plan: Plan, ctx: Optional[Context]) -> dict:
    def side(s: Side) -> dict:
        return {"data_preset": s.preset_name, "data_override": {k: _jsonable(v) for k, v in s.overrides.items()},
                "arch": s.cfg.name, "num_classes": s.cfg.num_classes}

    runs = []
    for run in plan.runs:
        entry = {"slug": run.slug, "summary": (os.path.basename(ctx.steps_dir) + "/" if ctx else "") + run.slug + ".json",
                 "data_preset": run.base, "data_override": {k: _jsonable(v) for k, v in run.overrides.items()},
                 "arch": run.cfg.name, "behaviour": [behaviour(run.preset), behaviour(run.cfg)],
                 "steps": [plan.steps[i].label for i in run.steps]}
        if ctx:
            argv = evaluate_command(run, plan, ctx)
            entry["evaluate_command"] = ("python -m harness.evaluate " + " ".join(_quote(x) for x in argv)
                                         if argv else None)
        runs.append(entry)
    return {"from": side(plan.a), "to": side(plan.b),
            "differences": [d.to_dict() for d in plan.diffs],
            "path_order": [d.label for d in plan.diffs],
            "steps": [{"kind": s.kind, "label": s.label, "applied": list(s.applied), "run": s.run,
                       "invalid": s.invalid} for s in plan.steps],
            "runs": runs}


def _quote(x: str) -> str:
    import shlex

    return shlex.quote(str(x))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _dpct(x) -> str:
    return "" if x is None else f"{100 * x:+.2f}"


def format_differences(plan: Plan) -> str:
    if not plan.diffs:
        return "no differences: the two sides run the same pipeline"
    width = max(len(d.label) for d in plan.diffs)
    lines = [f"{len(plan.diffs)} differences ({plan.a.preset_name} -> {plan.b.preset_name}"
             + (f", {plan.a.cfg.name} -> {plan.b.cfg.name}" if plan.a.cfg.name != plan.b.cfg.name else "") + "):"]
    for i, d in enumerate(plan.diffs, 1):
        lines.append(f"  {i:2d}. {d.label:<{width}}  {d.describe()}")
    return "\n".join(lines)


def format_plan(plan: Plan) -> str:
    lines = [f"{len(plan.steps)} steps, {len(plan.runs)} distinct runs "
             f"({len({sampling_key(r.preset) for r in plan.runs})} distinct samplings: each video decoded once per sampling):"]
    for s in plan.steps:
        share = [plan.steps[i].label for i in plan.runs[s.run].steps if plan.steps[i] is not s] if s.run is not None else []
        note = f"invalid: {s.invalid}" if s.invalid else (f"run {plan.runs[s.run].slug}"
                                                           + (f" (= {', '.join(share)})" if share else ""))
        lines.append(f"  {s.label:<34} {note}")
    return "\n".join(lines)


def format_table(rows: List[dict]) -> str:
    width = max([len(r["label"]) for r in rows] + [4])
    head = (f"{'step':<{width}}  {'top-1':>6} {'Δ':>7}  {'top-5':>6} {'Δ':>7}  {'mean-cl':>7} {'Δ':>7}  "
            f"{'agree A':>7}  {'path Δ':>7}  videos")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['label']:<{width}}  {r['status']}: {r['invalid']}")
            continue
        lines.append(f"{r['label']:<{width}}  {_pct(r['top1']):>6} {_dpct(r['delta_top1']):>7}  "
                     f"{_pct(r['top5']):>6} {_dpct(r['delta_top5']):>7}  {_pct(r['mean_class_accuracy']):>7} "
                     f"{_dpct(r['delta_mean_class_accuracy']):>7}  {_pct(r['top1_agreement_with_from']):>7}  "
                     f"{_dpct(r.get('delta_top1_step')):>7}  {r['n_videos']}"
                     + (f" ({r['n_missing']} missing)" if r.get("n_missing") else ""))
    lines.append("accuracies in %, deltas in percentage points against FROM; 'agree A': share of videos whose "
                 "top-1 class equals FROM's; 'path Δ': the step's top-1 change over the previous path step")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the commands
def audit(args, made: MadeFolders) -> int:
    a, b = sides_from_args(args)
    plan = build_plan(a, b, [x for x in (args.order or "").split(",") if x] or None)
    if args.list:
        say(format_differences(plan))
        say(format_plan(plan))
        return 0
    # every input and output is checked (and a --resume matched) before the plan is printed
    ctx = context_from_args(args, plan)
    check_outputs(ctx, made)     # the folders it makes go again if anything below refuses the audit
    indexes = _indexes(plan, ctx)
    session = prepare(plan, ctx, indexes)
    for note in session.notes:
        say(note)
    say(format_differences(plan))
    say(format_plan(plan))
    if ctx.base.world > 1:
        say(f"note: shard {ctx.base.rank} of {ctx.base.world}: this result covers that shard's videos only; "
            f"--merge the shards for the audit")
    summaries, decoding = execute(plan, ctx, session)
    return finish(plan_to_doc(plan, ctx), ctx.out, ctx.plot,
                  {"framework": ctx.base.framework, "checkpoint": ctx.base.checkpoint,
                   "checkpoint_sha256": summaries[0].get("checkpoint_sha256") if summaries else None,
                   "data_root": os.path.abspath(ctx.base.data_root), "split": ctx.base.split, "limit": ctx.base.limit,
                   "batch_size": ctx.base.batch_size, "threads": ctx.base.threads, "device": ctx.base.device,
                   "shard": [ctx.base.rank, ctx.base.world],
                   "resumed": any(s.get("resumed") for s in summaries),
                   # this session's: every video read once per sampling, however many steps use it
                   "decoding": decoding})


def finish(plan_doc: dict, out: str, plot: Optional[str], facts: dict) -> int:
    folder = os.path.dirname(os.path.abspath(out))
    rows = tabulate(plan_doc, folder)
    say(format_table(rows))
    end = next(r for r in rows if r["kind"] == "to")
    path_end = [r for r in rows if r["kind"] == "path"]
    body = {**facts, **plan_doc, "table": rows,
            "path_ends_at_to": (not path_end) or path_end[-1]["run"] == end["run"],
            "notes": ["every step's run is a harness.evaluate run (summary and score chunks under the steps "
                      "folder); steps that run the same pipeline share one run",
                      "the cumulative path depends on its order (--order): a difference's effect can depend on "
                      "the ones applied before it; the 'alone' rows are each measured on FROM",
                      "a graph (arch) difference is walked with the same weights, which fit both graphs; "
                      "they were trained on one of them"]}
    if plot:
        from harness.drift_plot import waterfall

        waterfall(rows, plot, title=f"{plan_doc['from']['data_preset']} -> {plan_doc['to']['data_preset']}"
                  + (f" ({facts.get('framework')}, {facts.get('checkpoint')})" if facts.get("checkpoint") else ""))
        body["plot"] = os.path.relpath(os.path.abspath(plot), folder)
    atomic_write_json(out, result_doc("drift", body))
    say(f"result: {printable(out)}" + (f"; plot: {printable(plot)}" if plot else ""))
    bad = [r["label"] for r in rows if r.get("n_non_finite")]
    if bad:
        raise CheckFailed(f"non-finite scores (NaN or inf) in steps {', '.join(bad)}; result {printable(out)}")
    start = rows[0]
    if start["kind"] == "from" and not start.get("n_videos"):   # no baseline: every delta of the audit is void
        if (facts.get("shard") or [0, 1])[1] > 1:
            say("note: this shard scored no video on FROM; --merge the shards for the audit")
        else:
            raise CheckFailed(f"no video was scored on FROM ({start.get('invalid') or 'every video failed'}): the "
                              f"audit has no baseline; result {printable(out)}")
    return 0


def merge(args, made: MadeFolders) -> int:
    """Merge drift shards: each step's run is merged as harness.evaluate merges, then the table."""
    if not args.out:
        raise InputError("--merge needs --out")
    out = args.out if args.out.endswith(".json") else args.out + ".json"
    stem = out[:-5]
    plot = None if args.no_plot else (args.plot or stem + ".png")
    steps_dir = stem + ".steps"
    docs = _shard_results(args.merge)
    inputs = [d["_path"] for d in docs] + [os.path.join(os.path.dirname(os.path.abspath(d["_path"])),
                                                        os.path.dirname(r["summary"]))
                                           for d in docs for r in d.get("runs", [])[:1] if isinstance(r, dict)]
    if plot and not plot.lower().endswith(".png"):
        raise InputError(f"--plot {plot}: the plot is a PNG; name it *.png")
    made.check_path(out, "--out", inputs=inputs)
    if plot:
        made.check_path(plot, "--plot", inputs=inputs + [out])
    check_output_dir(steps_dir, "steps folder", inputs=inputs)
    first = docs[0]
    shape = lambda d: ([r["behaviour"] for r in d["runs"]], [r["slug"] for r in d["runs"]], d["differences"])  # noqa: E731
    for d in docs[1:]:
        if shape(d) != shape(first):
            raise InputError(f"{d['_path']} audits other steps than {first['_path']}; they are not one audit")
    score_store.check_shards([d.get("shard", [0, 1]) for d in docs])   # before any folder is made
    os.makedirs(steps_dir, exist_ok=True)
    runs = []
    for i, run in enumerate(first["runs"]):
        parts = [os.path.join(os.path.dirname(os.path.abspath(d["_path"])), d["runs"][i]["summary"]) for d in docs]
        score_store.merge(parts, os.path.join(steps_dir, run["slug"] + ".json"), kind="drift_step")
        runs.append(dict(run, summary=os.path.basename(steps_dir) + "/" + run["slug"] + ".json"))
    plan_doc = {k: first[k] for k in ("from", "to", "differences", "path_order", "steps")}
    plan_doc["runs"] = runs
    facts = {k: first.get(k) for k in ("framework", "checkpoint", "checkpoint_sha256", "data_root", "split", "limit",
                                       "batch_size", "threads", "device")}
    facts.update(shard=[0, 1], merged_from=[os.path.relpath(d["_path"]) for d in docs])
    return finish(plan_doc, out, plot, facts)


def _shard_results(items: List[str]) -> List[dict]:
    """The drift results to merge (each with its ``_path``); anything else is bad input."""
    docs = []
    for path in score_store.summary_files(items):
        doc = read_json_input(path, "a harness.drift result")
        if not isinstance(doc, dict) or doc.get("kind") != "drift":
            raise InputError(f"{printable(path)} is not a harness.drift result")
        doc["_path"] = path
        docs.append(doc)
    return docs


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    caveats_to_stdout()

    def body() -> int:
        with undone_on_failure(MadeFolders()) as made:   # a refused audit leaves no empty folder either
            return merge(args, made) if args.merge else audit(args, made)

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
