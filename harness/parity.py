"""Layer-by-layer output parity of the I3D-NL network across frameworks.

Each framework runs in a process of its own and writes every canonical intermediate to
``<framework>.npz``; the comparison reads those files and imports no framework, so
saved outputs can be compared again later, or on another machine (``--load-outputs``).

Examples::

    python -m harness.parity --frameworks torch --reference mmaction2 --input-shape 1,3,8,64,64
    python -m harness.parity --frameworks torch,ms --checkpoint i3d_nl.pth --json parity.json
    python -m harness.parity --frameworks torch,ms --mode isolated      # each layer's own error
    python -m harness.parity --load-outputs out/ --frameworks torch,ms  # compare saved outputs

Without ``--checkpoint`` the weights are seeded random ones whose BN statistics are
calibrated on the very clip compared (so five non-local blocks stay finite and each
still changes its input). Exit status: 0 all layers pass, 1 a layer is out of
tolerance, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig, arch_hash, get_preset, layer_names
from harness.cli import (InputError, OneLineParser, clip_shape, result_doc, run_main, setup_logging, tolerance,
                         utc_now)
from harness.files import atomic_write_json, check_output_dir, check_output_path
from harness.comparator import DEFAULT_RTOL, DEFAULT_STAGE_ATOL, ParityReport, compare_outputs, format_report

log = logging.getLogger("harness.parity")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                   help=f"architecture preset (default {DEFAULT_PRESET}; one of: {', '.join(PRESETS)})")
    p.add_argument("--depth", type=int, choices=[50, 101], help="override the preset's depth")
    p.add_argument("--num-classes", type=int, help="override the preset's number of classes")
    p.add_argument("--checkpoint", help="weights to load in every framework (any format harness.convert reads); "
                                        "default: seeded random weights")
    from harness.checkpoints.safe_pickle import TRUST_HELP
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "--checkpoint"))
    p.add_argument("--frameworks", default="torch,ms",
                   help="comma-separated: torch/pt, mindspore/ms (default torch,ms); the first is the "
                        "reference unless --reference is given")
    p.add_argument("--reference", help="a reference implementation to compare every framework against "
                                       "(mmaction2, or one of the frameworks)")
    p.add_argument("--input-shape", type=clip_shape, default=(1, 3, 32, 224, 224), metavar="N,C,T,H,W",
                   help="shape of the seeded random clip (default 1,3,32,224,224)")
    p.add_argument("--input", help="a float32 clip (N,C,T,H,W) saved with numpy.save, instead of a random one")
    p.add_argument("--seed", type=int, default=0, help="seed for the random clip and weights (default 0)")
    p.add_argument("--atol", type=tolerance, default=None,
                   help="absolute tolerance as a fraction of each layer's max |reference|, for every layer "
                        "(default: per stage, " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_STAGE_ATOL.items())
                        + "; measured float32 noise, see harness/comparator.py)")
    p.add_argument("--rtol", type=tolerance, default=DEFAULT_RTOL,
                   help=f"relative tolerance per element (default {DEFAULT_RTOL:g}); an element fails only "
                        "if it exceeds both")
    p.add_argument("--mode", choices=["propagated", "isolated"], default="propagated",
                   help="propagated: each framework runs end to end; isolated: every layer of a candidate "
                        "runs on the reference's input to that layer, showing each layer's own error")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--ms-mode", choices=["graph", "pynative"], default="graph", help="MindSpore execution mode")
    p.add_argument("--json", metavar="OUT", help="write the comparison as JSON")
    p.add_argument("--save-outputs", metavar="DIR", help="keep <framework>.npz (every intermediate, logits, input)")
    p.add_argument("--load-outputs", metavar="DIR", help="compare outputs saved earlier; run nothing")
    p.add_argument("--save-weights", metavar="FILE.npz",
                   help="keep the weights every framework ran (canonical names): the seeded random ones, "
                        "or the checkpoint's; any command that takes --checkpoint reads them")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@dataclass
class ParityRequest:
    """What one parity run compares, decided from the command line (or by a caller)."""

    cfg: I3DNLConfig
    reference: str
    candidates: List[str]
    checkpoint: Optional[str] = None
    trust: bool = False
    input: Optional[str] = None
    input_shape: Sequence[int] = (1, 3, 32, 224, 224)
    seed: int = 0
    atol: Optional[float] = None
    rtol: float = DEFAULT_RTOL
    mode: str = "propagated"
    device: str = "cpu"
    ms_mode: str = "graph"
    save_outputs: Optional[str] = None
    load_outputs: Optional[str] = None
    save_weights: Optional[str] = None

    @classmethod
    def from_args(cls, args) -> "ParityRequest":
        from harness.runners import canonical_framework

        frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
        reference = canonical_framework(args.reference) if args.reference else None
        if reference is None:
            if len(frameworks) < 2:
                raise InputError("give two frameworks, or one framework and --reference")
            reference, frameworks = frameworks[0], frameworks[1:]
        frameworks = [f for f in frameworks if f != reference]
        if not frameworks:
            raise InputError("nothing to compare: every framework is the reference")
        overrides = {k: v for k, v in (("depth", args.depth), ("num_classes", args.num_classes)) if v is not None}
        return cls(get_preset(args.arch, **overrides), reference, frameworks, checkpoint=args.checkpoint,
                   trust=args.trust_checkpoint, input=args.input, input_shape=tuple(args.input_shape),
                   seed=args.seed, atol=args.atol, rtol=args.rtol, mode=args.mode, device=args.device,
                   ms_mode=args.ms_mode, save_outputs=args.save_outputs, load_outputs=args.load_outputs,
                   save_weights=args.save_weights)


def _load_npz(path: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read saved outputs {path}: {exc}") from None


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


def run(req: ParityRequest) -> Tuple[List[ParityReport], Dict[str, dict]]:
    """Run (or load) every framework and compare each candidate with the reference;
    returns the reports and each framework process's record (versions, hardware, timings)."""
    names = layer_names(req.cfg)
    runs: Dict[str, dict] = {}
    if req.load_outputs:
        outputs = {fw: _load_npz(os.path.join(req.load_outputs, f"{fw}.npz"))
                   for fw in [req.reference] + req.candidates}
    else:
        outputs = _run_frameworks(req, runs)
    reports = [compare_outputs(outputs[req.reference], outputs[fw], names, atol=req.atol, rtol=req.rtol,
                               reference_name=req.reference, candidate_name=fw, mode=req.mode)
               for fw in req.candidates]
    return reports, runs


def _weights(req: ParityRequest, clip_path: str, tmp: str) -> str:
    """The weights every framework loads, as canonical .npz: the checkpoint's, or seeded
    random ones whose BN statistics are calibrated on the compared clip."""
    from harness.checkpoints import check_runnable, load_weights, non_finite
    from harness.checkpoints.io import write_npz
    from harness.runners.child import Job, run_job

    path = req.save_weights or os.path.join(tmp, "weights.npz")
    if req.checkpoint:
        loaded = load_weights(req.checkpoint, req.cfg, trust=req.trust)
        check_runnable(loaded.arrays, req.checkpoint, allow_non_finite=True)
        print(f"weights: {loaded.describe()}", flush=True)
        bad = non_finite(loaded.arrays)
        if bad:  # compared all the same: where the frameworks treat NaN differently is worth seeing
            print(f"warning: the weights hold {sum(bad.values())} non-finite values in {len(bad)} tensors "
                  f"(first: {next(iter(bad))})", file=sys.stderr, flush=True)
        write_npz(path, loaded.arrays)
    else:
        print(f"weights: seeded random (seed {req.seed}), BN statistics calibrated on the input clip", flush=True)
        run_job(Job("torch", req.cfg, seed=req.seed, save_weights=path, input=clip_path), tmp, "weights")
    return path


def _run_frameworks(req: ParityRequest, runs: Dict[str, dict]) -> Dict[str, Dict[str, np.ndarray]]:
    from harness.runners.child import Job, Task, run_job, save_clip

    with tempfile.TemporaryDirectory(prefix="nlparity-") as tmp:
        out_dir = req.save_outputs or tmp
        os.makedirs(out_dir, exist_ok=True)
        clip = _read_clip(req.input) if req.input else \
            np.random.default_rng(req.seed).standard_normal(req.input_shape).astype(np.float32)
        if clip.shape[1] != req.cfg.in_channels:
            raise InputError(f"the clip has {clip.shape[1]} channels; arch {req.cfg.name} takes {req.cfg.in_channels}")
        clip_path = save_clip(os.path.join(tmp, "input.npy"), clip)
        weights = _weights(req, clip_path, tmp)
        outputs = {}
        for fw in [req.reference] + req.candidates:
            log.info("running %s on %s", fw, "x".join(map(str, clip.shape)))
            out = os.path.join(out_dir, f"{fw}.npz")
            isolated = req.mode == "isolated" and fw != req.reference
            task = Task("isolated", out=out, reference=os.path.join(out_dir, f"{req.reference}.npz")) if isolated \
                else Task("intermediates", out=out)
            record = run_job(Job(fw, req.cfg, device=req.device, options={"mode": req.ms_mode} if fw == "ms" else {},
                                 weights=weights, input=clip_path, tasks=[task]), tmp, fw)
            runs[fw] = {"framework": fw, "versions": record["versions"], "hardware": record["hardware"],
                        "build_s": record.get("build_s"), "forward_s": record["tasks"][0]["forward_s"]}
            outputs[fw] = _load_npz(out)
        return outputs


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    # outputs are checked before the work, so a long run never ends in "cannot write"
    if args.json:
        check_output_path(args.json, "--json")
    if args.save_weights:
        check_output_path(args.save_weights, "--save-weights")
    if args.save_outputs:
        check_output_dir(args.save_outputs, "--save-outputs folder")
    req = ParityRequest.from_args(args)
    if req.load_outputs and req.save_weights:
        raise InputError("--load-outputs runs nothing, so it has no weights to --save-weights")
    reports, runs = run(req)
    for report in reports:
        print(format_report(report))
        print()
    if args.json:
        doc = reports[0].to_dict() if len(reports) == 1 else {
            "passed": all(r.passed for r in reports), "comparisons": [r.to_dict() for r in reports]}
        doc.update(arch=req.cfg.name, arch_hash=arch_hash(req.cfg), seed=req.seed, checkpoint=req.checkpoint,
                   input=req.input, input_shape=None if (req.input or req.load_outputs) else list(req.input_shape),
                   device=req.device, date=utc_now(), runs=runs)
        atomic_write_json(args.json, result_doc("parity", doc))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
