"""Layer-by-layer output parity of the I3D-NL network across frameworks, or of your own port.

Each framework runs in a process of its own and writes every canonical intermediate to
``<framework>.npz``; the comparison reads those files and imports no framework, so
saved outputs can be compared again later, or on another machine (``--load-outputs``).

Examples::

    python -m harness.parity --frameworks torch --reference mmaction2 --input-shape 1,3,8,64,64
    python -m harness.parity --frameworks torch,ms --checkpoint i3d_nl.pth --json parity.json
    python -m harness.parity --frameworks torch,ms --mode isolated      # each layer's own error
    python -m harness.parity --load-outputs out/ --frameworks torch,ms  # compare saved outputs
    python -m harness.parity --weights torch=original.pth --weights ms=mine.ckpt   # your weights
    python -m harness.parity --frameworks torch --candidate myport=mypkg.port:build  # your model
    python -m harness.parity --frameworks torch --candidate myport=myport.npz         # its outputs

Weights: ``--checkpoint`` for every framework (a file in any format, or a fetched registry
name, whose published arch is then used), ``--weights FRAMEWORK=FILE`` for one of them, or
seeded random weights whose BN statistics are calibrated on the very clip compared (so five
non-local blocks stay finite and each still changes its input).

Candidates that are not our models: ``--candidate NAME=FILE.npz`` compares outputs another
program saved in :mod:`harness.outputs`' schema (canonical layer names, ``input``, ``logits``);
``--candidate NAME=[ms:]module:function`` builds your own torch or MindSpore network (see
:mod:`harness.runners.plugin`) and reads its layers through forward hooks.

When a propagated comparison fails, parity explains it: it reruns the failing framework in
isolated mode (each layer on the reference's input to it); if every layer then passes, the
failure is accumulated float32 noise, not a fault; otherwise it drills into the first layer
that fails on its own and names the first failing sub-operation (a block's conv / BN /
ReLU / add, a non-local block's theta, phi, g, affinity, y, out, BN). ``--noise-floor`` adds
torch in float64 and sets each layer's tolerance to a multiple of the reference's own float32
error there: tolerances calibrated for your weights instead of ours.

Exit status: 0 all layers pass, 1 a layer is out of tolerance, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, arch_hash, layer_names, subop_names
from frameworks.spec.train import DEFAULT_RECIPE, RECIPES
from harness.errors import InputError
from harness.provenance import result_doc, utc_now
from harness.cli import (add_device, add_verbose, clip_shape, OneLineParser, positive_int, run_main,
                         setup_logging, tolerance)
from harness.comparator import (COLUMNS, DEFAULT_RTOL, DEFAULT_STAGE_ATOL, ParityReport, compare_arrays,
                                compare_outputs, default_atol, flag_outliers, format_report)
from harness.files import atomic_write_json, check_output_dir, check_output_path
from harness.outputs import check_same_input, read_outputs, write_outputs
from harness.runners import able, add_runner_arguments, names_help, runner_class, runner_settings

log = logging.getLogger("harness.parity")

NOISE_FLOOR_FACTOR = 5.0   # --noise-floor: tolerance = this x the reference's float32-vs-float64 error


def build_parser() -> argparse.ArgumentParser:
    """The options most runs need first, the rest in groups; the long text after them."""
    intro, _, details = __doc__.partition("\n\nWeights: ")
    p = OneLineParser(prog="python -m harness.parity", description=intro,
                      epilog=(f"Weights: {details}\n" if details else "") + COLUMNS,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", default="torch,ms",
                   help=f"comma-separated: {names_help()} (default torch,ms); the first is the reference "
                        "unless --reference is given")
    p.add_argument("--reference", help="the implementation every other one is compared with (mmaction2, or one "
                                       "of the frameworks; default: the first of --frameworks)")
    p.add_argument("--checkpoint", help="weights for every framework: a file in any format harness.convert reads, "
                                        "or a fetched registry name (default: seeded random weights)")
    p.add_argument("--input-shape", type=clip_shape, default=(1, 3, 32, 224, 224), metavar="N,C,T,H,W",
                   help="shape of the seeded random clip (default 1,3,32,224,224)")
    p.add_argument("--mode", choices=["propagated", "isolated"], default="propagated",
                   help="propagated (default): each framework runs end to end; isolated: every layer of a "
                        "candidate runs on the reference's input to that layer, showing each layer's own error")
    p.add_argument("--json", metavar="OUT", help="write the comparison as JSON (default: none)")
    p.add_argument("--train-steps", type=positive_int, metavar="K",
                   help="training parity instead of a forward pass: the loss, first BN and dropout alone; "
                        "the optimiser alone on given gradients; each of K steps from the same state (loss, "
                        "every gradient and BN statistic, against torch float64, kinks named); the K-step "
                        "trajectory against the float32 floor band; --input-shape is each step's batch "
                        "(default 2,3,8,64,64); see harness/train_parity.py and the group below")
    _network_options(p.add_argument_group("network and weights"))
    _port_options(p.add_argument_group("your own port (its weights, its model or its saved outputs)"))
    _input_and_tolerance_options(p)
    run = p.add_argument_group("run")
    run.add_argument("--no-explain", action="store_true",
                     help="on a failure, do not rerun isolated and drill into the failing layer (default: explain)")
    add_device(run)
    add_runner_arguments(p.add_argument_group("framework options"))
    _output_options(p.add_argument_group("saved outputs and weights"), p.add_argument_group("output"))
    train = p.add_argument_group("training-step parity (with --train-steps; harness.train_parity)")
    train.add_argument("--recipe", choices=list(RECIPES), metavar="RECIPE",
                       help=f"the training recipe, one of {', '.join(RECIPES)} (default {DEFAULT_RECIPE})")
    train.add_argument("--threads", type=positive_int, default=1,
                       help="threads of each framework process (default 1: repeatable, and steady on a shared "
                            "machine)")
    return p


def _network_options(net) -> None:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    net.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default: the checkpoint's, from its registry entry or the "
                          f"arch convert recorded beside it; else {DEFAULT_PRESET}; one of: {', '.join(PRESETS)})")
    net.add_argument("--depth", type=int, choices=[50, 101], help="override the preset's depth (default: the preset's)")
    net.add_argument("--num-classes", type=int, help="override the preset's number of classes (default: the preset's)")
    net.add_argument("--trust-checkpoint", action="store_true",
                     help=TRUST_HELP.replace("the weights file", "--checkpoint / --weights files"))


def _port_options(port) -> None:
    port.add_argument("--weights", action="append", default=[], metavar="FRAMEWORK=FILE",
                      help="weights for one framework only (repeatable), e.g. --weights torch=orig.pth "
                           "--weights ms=mine.ckpt; the others use --checkpoint or seeded weights")
    port.add_argument("--candidate", action="append", default=[], metavar="NAME=SOURCE",
                      help="also compare your own port: SOURCE is a .npz of outputs (harness.outputs' schema), "
                           "[ms:]module:function building your torch / MindSpore network, or your exported "
                           "model.onnx[:layers.json] (harness.runners.plugin); repeatable")


def _input_and_tolerance_options(p) -> None:
    clip = p.add_argument_group("input")
    clip.add_argument("--input", help="a float32 clip (N,C,T,H,W) saved with numpy.save, instead of a random one")
    clip.add_argument("--seed", type=int, default=0, help="seed for the random clip and weights (default 0)")
    tol = p.add_argument_group("tolerances")
    tol.add_argument("--atol", type=tolerance, default=None,
                     help="scaled absolute tolerance: a fraction of each layer's max |reference| (not an absolute "
                          "number), for every layer (default: per stage, "
                          + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_STAGE_ATOL.items())
                          + "; 3-6x measured float32 noise, see harness/comparator.py)")
    tol.add_argument("--rtol", type=tolerance, default=DEFAULT_RTOL,
                     help=f"relative tolerance per element (default {DEFAULT_RTOL:g}); an element fails only "
                          "if it exceeds both")
    tol.add_argument("--noise-floor", action="store_true",
                     help=f"also run torch in float64 and set each layer's atol to {NOISE_FLOOR_FACTOR:g}x the "
                          "reference's own float32 error against it: tolerances for your weights (default: off)")


def _output_options(saved, out) -> None:
    saved.add_argument("--save-outputs", metavar="DIR", help="keep <name>.npz (every intermediate, logits, input)")
    saved.add_argument("--stats-only", action="store_true",
                       help="with --save-outputs: keep per-layer statistics (min, max, mean, std, mean |x|, "
                            "non-finite count) instead of the arrays, about 200x smaller; compared as statistics "
                            "later")
    saved.add_argument("--load-outputs", metavar="DIR",
                       help="compare outputs saved earlier (<name>.npz); run nothing")
    saved.add_argument("--save-weights", metavar="FILE.npz",
                       help="keep the weights every framework ran (canonical names): the seeded random ones, "
                            "or the checkpoint's; any command that takes --checkpoint reads them")
    out.add_argument("--only-failures", action="store_true", help="print only the layers that fail or are flagged")
    out.add_argument("-q", "--quiet", action="store_true", help="only the verdicts (default: the tables)")
    add_verbose(out)


@dataclass
class ParityRequest:
    """What one parity run compares, decided from the command line (or by a caller)."""

    cfg: I3DNLConfig
    reference: str
    candidates: List[str]                       # our frameworks
    checkpoint: Optional[str] = None
    weights: Dict[str, str] = field(default_factory=dict)       # framework -> file (--weights)
    external: Dict[str, str] = field(default_factory=dict)      # candidate name -> .npz or [ms:]module:function
    trust: bool = False
    input: Optional[str] = None
    input_shape: Sequence[int] = (1, 3, 32, 224, 224)
    seed: int = 0
    atol: Optional[float] = None
    rtol: float = DEFAULT_RTOL
    mode: str = "propagated"
    device: str = "cpu"
    runner_settings: dict = field(default_factory=dict)   # every framework's own options (runner_settings)
    save_outputs: Optional[str] = None
    stats_only: bool = False
    load_outputs: Optional[str] = None
    save_weights: Optional[str] = None
    noise_floor: bool = False
    explain: bool = True

    @classmethod
    def from_args(cls, args) -> "ParityRequest":
        from harness.checkpoints.sidecar import choose_arch
        from harness.runners import canonical_framework, is_framework

        frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
        reference = canonical_framework(args.reference) if args.reference else None
        external = _pairs(args.candidate, "--candidate")
        if reference is None:
            if len(frameworks) < 2 and not (frameworks and external):
                raise InputError("give two frameworks, or one framework and --reference or --candidate")
            reference, frameworks = frameworks[0], frameworks[1:]
        frameworks = [f for f in frameworks if f != reference]
        clash = [n for n in external if is_framework(n)]
        if clash:
            raise InputError(f"--candidate name {clash[0]!r} is taken by a framework; choose another name")
        if not frameworks and not external:
            raise InputError("nothing to compare: every framework is the reference")
        weights = {canonical_framework(k): v for k, v in _pairs(args.weights, "--weights").items()}
        choice = choose_arch(args.arch, args.checkpoint or next(iter(weights.values()), None), DEFAULT_PRESET,
                             depth=args.depth, num_classes=args.num_classes)
        print(f"arch: {choice.cfg.name} (from {choice.source})", flush=True)
        if choice.note():
            print(choice.note(), file=sys.stderr, flush=True)
        if args.stats_only and not args.save_outputs:
            raise InputError("--stats-only says what --save-outputs keeps; give --save-outputs DIR")
        return cls(cfg=choice.cfg, reference=reference, candidates=frameworks, checkpoint=args.checkpoint, weights=weights, external=external,
                   trust=args.trust_checkpoint, input=args.input, input_shape=tuple(args.input_shape),
                   seed=args.seed, atol=args.atol, rtol=args.rtol, mode=args.mode, device=args.device,
                   runner_settings=runner_settings(args), save_outputs=args.save_outputs, stats_only=args.stats_only,
                   load_outputs=args.load_outputs, save_weights=args.save_weights, noise_floor=args.noise_floor,
                   explain=not args.no_explain)


def _pairs(items: List[str], flag: str) -> Dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise InputError(f"{flag} names {name!r} twice")
        out[name] = value
    return out


def _read_clip(path: str) -> np.ndarray:
    try:
        clip = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read --input {path}: {exc}") from None
    if not isinstance(clip, np.ndarray):
        raise InputError(f"--input {path} is not one array saved with numpy.save")
    if clip.ndim != 5 or not np.issubdtype(clip.dtype, np.floating):
        raise InputError(f"--input must be a float (N,C,T,H,W) array; got {clip.dtype} {clip.shape}")
    return clip.astype(np.float32)


# ----------------------------------------------------------------------------- the run
@dataclass
class ParityRun:
    """Everything one parity run produced."""

    reports: List[ParityReport]
    runs: Dict[str, dict] = field(default_factory=dict)       # per framework process: versions, hardware, timings
    explanations: Dict[str, dict] = field(default_factory=dict)   # candidate -> isolated rerun / drill-down
    not_provided: Dict[str, List[str]] = field(default_factory=dict)   # external candidate -> layers it lacks


def run(req: ParityRequest) -> ParityRun:
    """Run (or load) every framework and candidate and compare each with the reference."""
    names = layer_names(req.cfg)
    result = ParityRun([])
    with tempfile.TemporaryDirectory(prefix="nlparity-") as tmp:
        work = _Work(req, tmp, result.runs)
        outputs, metas = work.outputs()
        per_layer = work.noise_floor(outputs[req.reference]) if req.noise_floor else None
        stats = any(m.get("mode") == "stats" for m in metas.values())
        for name in req.candidates + list(req.external):
            problem = check_same_input(outputs[req.reference], outputs[name], req.reference, name)
            if problem:
                raise InputError(f"{problem}; compare outputs of one clip")
            compared = names
            if name in req.external:   # a port need not expose every layer: compare the ones it gives
                compared = [n for n in names if n in outputs[name]]
                result.not_provided[name] = [n for n in names if n not in outputs[name]]
                if "logits" not in outputs[name]:
                    raise InputError(f"candidate {name} gives no logits")
            report = compare_outputs(outputs[req.reference], outputs[name], compared, atol=req.atol, rtol=req.rtol,
                                     per_layer_atol=per_layer and per_layer[0], reference_name=req.reference,
                                     candidate_name=name, mode=req.mode, stats=stats)
            if per_layer:
                for layer in report.layers:
                    layer.floor = per_layer[1].get(layer.name)
            if req.mode == "isolated":
                flag_outliers(report)
            result.reports.append(report)
            if not report.passed and req.explain and name in req.candidates and not stats and not req.load_outputs:
                result.explanations[name] = work.explain(name, report, outputs[req.reference])
    return result


class _Work:
    """The files and child processes of one parity run."""

    def __init__(self, req: ParityRequest, tmp: str, runs: Dict[str, dict]):
        self.req, self.tmp, self.runs = req, tmp, runs
        self.out_dir = req.save_outputs or tmp
        self.clip_path: Optional[str] = None
        self.weight_files: Dict[str, str] = {}

    # -------------------------------------------------------------- inputs
    def outputs(self) -> Tuple[Dict[str, Dict[str, np.ndarray]], Dict[str, dict]]:
        req = self.req
        outputs: Dict[str, Dict[str, np.ndarray]] = {}
        metas: Dict[str, dict] = {}
        external_files = {n: s for n, s in req.external.items() if s.endswith(".npz")}
        plugins = {n: s for n, s in req.external.items() if n not in external_files}
        if req.load_outputs:
            for name in [req.reference] + req.candidates:
                outputs[name], metas[name] = read_outputs(os.path.join(req.load_outputs, f"{name}.npz"))
        else:
            os.makedirs(self.out_dir, exist_ok=True)
            clip = _read_clip(req.input) if req.input else \
                np.random.default_rng(req.seed).standard_normal(req.input_shape).astype(np.float32)
            if clip.shape[1] != req.cfg.in_channels:
                raise InputError(f"the clip has {clip.shape[1]} channels; arch {req.cfg.name} takes "
                                 f"{req.cfg.in_channels}")
            from harness.runners.child import save_clip

            self.clip_path = save_clip(os.path.join(self.tmp, "input.npy"), clip)
            for name in [req.reference] + req.candidates:
                outputs[name], metas[name] = self._run_framework(name)
            for name, spec in plugins.items():
                outputs[name], metas[name] = self._run_plugin(name, spec)
        for name, path in external_files.items():
            outputs[name], metas[name] = read_outputs(path)
        if plugins and req.load_outputs:
            raise InputError("a plug-in candidate runs a network; with --load-outputs nothing runs")
        return outputs, metas

    def weights_for(self, framework: str) -> str:
        """The canonical .npz a framework loads (made once per distinct source)."""
        source = self.req.weights.get(framework, self.req.checkpoint)
        key = source or "seeded"
        if key not in self.weight_files:
            self.weight_files[key] = self._make_weights(source, len(self.weight_files))
        return self.weight_files[key]

    def _make_weights(self, source: Optional[str], n: int) -> str:
        from harness.checkpoints import check_runnable, load_weights, non_finite
        from harness.checkpoints.io import write_npz
        from harness.checkpoints.sidecar import write_sidecar
        from harness.runners.child import run_job, seeded_weights_job

        req = self.req
        shared = not req.weights or (source == req.checkpoint and not any(
            v != req.checkpoint for v in req.weights.values()))
        path = req.save_weights if (req.save_weights and shared) else os.path.join(self.tmp, f"weights{n}.npz")
        if source:
            loaded = load_weights(source, req.cfg, trust=req.trust)
            check_runnable(loaded.arrays, source, allow_non_finite=True)
            print(f"weights: {loaded.describe()}", flush=True)
            bad = non_finite(loaded.arrays)
            if bad:  # compared all the same: where the frameworks treat NaN differently is worth seeing
                print(f"warning: the weights hold {sum(bad.values())} non-finite values in {len(bad)} tensors "
                      f"(first: {next(iter(bad))})", file=sys.stderr, flush=True)
            write_npz(path, loaded.arrays)
        else:
            print(f"weights: seeded random (seed {req.seed}), BN statistics calibrated on the input clip", flush=True)
            run_job(seeded_weights_job(req.cfg, req.seed, path, self.clip_path), self.tmp, "weights")
        if path == req.save_weights:
            write_sidecar(path, req.cfg, source or f"seeded random (seed {req.seed})", "")
        return path

    def _job(self, framework: str, tasks, name: Optional[str] = None, **options) -> dict:
        from harness.runners import runner_options
        from harness.runners.child import Job, run_job

        return run_job(Job(framework, self.req.cfg, device=self.req.device,
                           options=runner_options(framework, self.req.runner_settings),
                           weights=self.weights_for(framework), input=self.clip_path, tasks=tasks, **options),
                       self.tmp, name or framework)

    def _keep(self, name: str, path: str, framework: str) -> Tuple[Dict[str, np.ndarray], dict]:
        """Read a child's outputs (compared in full) and keep them (in full, or statistics only)."""
        outputs, meta = read_outputs(path)
        if self.req.save_outputs:
            write_outputs(os.path.join(self.req.save_outputs, f"{name}.npz"), outputs, framework, self.req.stats_only)
        return outputs, meta

    def _run_framework(self, fw: str) -> Tuple[Dict[str, np.ndarray], dict]:
        from harness.runners.child import Task

        req = self.req
        log.info("running %s", fw)
        out = os.path.join(self.tmp, f"{fw}.run.npz")
        if req.mode == "isolated" and fw != req.reference:
            task = Task("isolated", out=out, reference=os.path.join(self.tmp, f"{req.reference}.run.npz"))
        else:
            task = Task("intermediates", out=out)
        record = self._job(fw, [task, Task("build")])   # build after the forward: the settings it ran with
        self.runs[fw] = {"framework": fw, "versions": record["versions"], "hardware": record["hardware"],
                         "build_s": record.get("build_s"), "forward_s": record["tasks"][0]["forward_s"],
                         "settings": record["tasks"][-1].get("settings")}
        return self._keep(fw, out, fw)

    def _run_plugin(self, name: str, spec: str) -> Tuple[Dict[str, np.ndarray], dict]:
        from harness.runners.child import Task
        from harness.runners.plugin import parse_spec

        framework, target = parse_spec(spec)
        out = os.path.join(self.tmp, f"{name}.run.npz")
        record = self._job(framework, [Task("candidate", out=out, plugin=target)], name=name)
        self.runs[name] = {"framework": framework, "plugin": target, "versions": record["versions"],
                           "hardware": record["hardware"], "forward_s": record["tasks"][0]["forward_s"]}
        return self._keep(name, out, f"{framework} plug-in {target}")

    # -------------------------------------------------------------- noise floor
    def noise_floor(self, reference: Dict[str, np.ndarray]) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Per layer: (atol = factor x floor, floor), the floor being torch float32's scaled
        error against torch float64 on these weights and this clip."""
        from harness.runners.child import Task

        if self.clip_path is None:
            raise InputError("--noise-floor runs torch in float64; it cannot with --load-outputs")
        f32 = os.path.join(self.tmp, "torch.f32.npz")
        f64 = os.path.join(self.tmp, "torch.f64.npz")
        self._job("torch", [Task("intermediates", out=f32), Task("intermediates", out=f64, float64=True)],
                  name="noise-floor")
        a, _ = read_outputs(f32)
        b, _ = read_outputs(f64)
        floors, atols = {}, {}
        for name in layer_names(self.req.cfg):
            if name in a and name in b:
                scale = float(np.abs(b[name]).max()) or 1.0
                floors[name] = float(np.abs(a[name].astype(np.float64) - b[name]).max()) / scale
                atols[name] = max(NOISE_FLOOR_FACTOR * floors[name], 1e-7)
        return atols, floors

    # -------------------------------------------------------------- explaining a failure
    def explain(self, fw: str, report: ParityReport, reference: Dict[str, np.ndarray]) -> dict:
        """Rerun ``fw`` isolated; then drill into the first layer that fails on its own."""
        from harness.runners.child import Task

        req = self.req
        doc: dict = {"propagated_first_failure": report.first_failure}
        if not runner_class(fw).explains:
            doc["verdict"] = f"no explanation: {fw} runs no isolated layer (make it the reference instead)"
            return doc
        if req.mode == "propagated":
            ref_path = os.path.join(self.tmp, f"{req.reference}.ref.npz")
            write_outputs(ref_path, reference, req.reference)
            out = os.path.join(self.tmp, f"{fw}.isolated.npz")
            self._job(fw, [Task("isolated", out=out, reference=ref_path)], name=f"{fw}-isolated")
            isolated = compare_outputs(reference, read_outputs(out)[0], layer_names(req.cfg), atol=req.atol,
                                       rtol=req.rtol, reference_name=req.reference, candidate_name=fw, mode="isolated")
            flag_outliers(isolated)
            doc["isolated"] = isolated
            if isolated.passed:
                doc["verdict"] = ("accumulated float32 noise: every layer passes on the reference's input, so the "
                                  "propagated failure is rounding compounding with depth, not a fault "
                                  "(--noise-floor calibrates tolerances for these weights)")
                return doc
            first = isolated.first_failure
        else:
            first = report.first_failure
        doc["layer"] = first
        if not runner_class(req.reference).explains:
            doc["verdict"] = (f"{first} fails on its own input; {req.reference} has no sub-operation trace, so rerun "
                              f"with --frameworks {','.join(able('explains'))} to name the failing sub-operation")
            return doc
        doc["subops"] = self.drill_down(fw, first, reference)
        failing = next((s for s in doc["subops"] if not s.passed), None)
        doc["verdict"] = (f"{first} fails on its own input; first failing sub-operation: "
                          f"{failing.name if failing else 'none (the layer output differs though)'}")
        return doc

    def drill_down(self, fw: str, layer: str, reference: Dict[str, np.ndarray]) -> List:
        """Both frameworks trace ``layer``'s sub-operations on the reference's input to it."""
        from harness.checkpoints.io import read_arrays
        from harness.runners.child import Task

        names = layer_names(self.req.cfg)
        index = names.index(layer)
        x = reference["input"] if index == 0 else reference[names[index - 1]]
        x_path = os.path.join(self.tmp, "layer_input.npy")
        np.save(x_path, np.ascontiguousarray(x, dtype=np.float32))
        steps = {}
        for side in (self.req.reference, fw):
            out = os.path.join(self.tmp, f"{side}.subops.npz")
            self._job(side, [Task("subops", out=out, layer=layer, layer_input=x_path)], name=f"{side}-subops")
            steps[side] = read_arrays(out)
        atol = default_atol(layer) if self.req.atol is None else self.req.atol
        return [compare_arrays(f"{layer}:{step}", steps[self.req.reference][step], steps[fw][step], atol, self.req.rtol)
                for step in subop_names(self.req.cfg, layer)]


# ----------------------------------------------------------------------------- printing
def format_explanation(fw: str, doc: dict, only_failures: bool) -> str:
    lines = [f"why {fw} fails:"]
    if "isolated" in doc and not doc["isolated"].passed:
        lines.append(format_report(doc["isolated"], only_failures=True))
    if "subops" in doc:
        lines.append(f"sub-operations of {doc['layer']} on the reference's input to it:")
        for step in doc["subops"]:
            lines.append(f"  {step.name.split(':', 1)[1]:<16} abs/max {step.scaled_max_abs:9.2e}  atol {step.atol:8.2e}  "
                         f"{'PASS' if step.passed else 'FAIL'}" + (f"  ({step.note})" if step.note else ""))
    lines.append(f"verdict: {doc['verdict']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    # outputs are checked before the work, so a long run never ends in "cannot write"
    if args.json:
        check_output_path(args.json, "--json")
    if args.train_steps:
        from harness.train_parity import run_from_parity_args

        return run_from_parity_args(args)
    if args.save_weights:
        check_output_path(args.save_weights, "--save-weights")
    if args.save_outputs:
        check_output_dir(args.save_outputs, "--save-outputs folder")
    req = ParityRequest.from_args(args)
    if req.load_outputs and req.save_weights:
        raise InputError("--load-outputs runs nothing, so it has no weights to --save-weights")
    result = run(req)
    for report in result.reports:
        text = format_report(report, only_failures=args.only_failures)
        print(text.splitlines()[-1] if args.quiet else text)
        if result.not_provided.get(report.candidate):
            print(f"{report.candidate} gives no output for: {', '.join(result.not_provided[report.candidate])}")
        if report.candidate in result.explanations:
            print(format_explanation(report.candidate, result.explanations[report.candidate], args.only_failures))
        print()
    if args.json:
        reports = result.reports
        doc = reports[0].to_dict() if len(reports) == 1 else {
            "passed": all(r.passed for r in reports), "comparisons": [r.to_dict() for r in reports]}
        doc.update(arch=req.cfg.name, arch_hash=arch_hash(req.cfg), seed=req.seed, checkpoint=req.checkpoint,
                   weights=req.weights or None, candidates=req.external or None,
                   input=req.input, input_shape=None if (req.input or req.load_outputs) else list(req.input_shape),
                   device=req.device, noise_floor=req.noise_floor, date=utc_now(), runs=result.runs,
                   not_provided=result.not_provided or None,
                   explanations={fw: {k: (v.to_dict() if isinstance(v, ParityReport) else
                                          [s.to_dict() for s in v] if k == "subops" else v)
                                      for k, v in d.items()} for fw, d in result.explanations.items()} or None)
        atomic_write_json(args.json, result_doc("parity", doc))
    return 0 if all(r.passed for r in result.reports) else 1


if __name__ == "__main__":
    sys.exit(main())
