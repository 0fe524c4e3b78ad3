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
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, layer_names
from harness.cli import (InputError, OneLineParser, clip_shape, failure_line, run_main, run_module, setup_logging,
                         tolerance)
from harness.files import atomic_write_json, check_output_dir, check_output_path
from harness.compare import DEFAULT_RTOL, DEFAULT_STAGE_ATOL, ParityReport, compare_outputs, format_report

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
                        + "; measured float32 noise, see harness/compare.py)")
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
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _run_worker(framework: str, cfg_path: str, input_path: str, out_path: Optional[str], args,
                weights: Optional[str] = None, init_seed: Optional[int] = None,
                save_weights: Optional[str] = None, isolated_from: Optional[str] = None) -> dict:
    cmd = ["--framework", framework, "--config", cfg_path,
           "--input", input_path, "--device", args.device, "--ms-mode", args.ms_mode]
    meta_path = (out_path or save_weights) + ".meta.json"
    cmd += ["--meta", meta_path]
    if out_path:
        cmd += ["--out", out_path]
    if weights:
        cmd += ["--weights", weights]
    if init_seed is not None:
        cmd += ["--init-seed", str(init_seed), "--save-weights", save_weights]
    if isolated_from:
        cmd += ["--isolated-from", isolated_from]
    proc = run_module("harness.worker", cmd)
    if proc.returncode != 0:
        raise InputError(failure_line(proc, f"{framework} worker failed"))
    with open(meta_path) as f:
        meta = json.load(f)
    os.remove(meta_path)
    return meta


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


def run(args, runs: Optional[Dict[str, dict]] = None) -> List[ParityReport]:
    """Run (or load) every framework and compare; ``runs`` collects each worker's versions,
    hardware and timings by framework."""
    from harness.backends import canonical_framework

    try:
        frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
        reference = canonical_framework(args.reference) if args.reference else None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if reference is None:
        if len(frameworks) < 2:
            raise InputError("give two frameworks, or one framework and --reference")
        reference, frameworks = frameworks[0], frameworks[1:]
    frameworks = [f for f in frameworks if f != reference]
    if not frameworks:
        raise InputError("nothing to compare: every framework is the reference")
    overrides = {k: v for k, v in (("depth", args.depth), ("num_classes", args.num_classes)) if v is not None}
    cfg = get_preset(args.arch, **overrides)
    names = layer_names(cfg)

    if args.load_outputs:
        outputs = {fw: _load_npz(os.path.join(args.load_outputs, f"{fw}.npz")) for fw in [reference] + frameworks}
    else:
        outputs = _run_frameworks(cfg, reference, frameworks, args, runs if runs is not None else {})
    return [compare_outputs(outputs[reference], outputs[fw], names, atol=args.atol, rtol=args.rtol,
                            reference_name=reference, candidate_name=fw, mode=args.mode)
            for fw in frameworks]


def _run_frameworks(cfg, reference: str, frameworks: List[str], args,
                    runs: Dict[str, dict]) -> Dict[str, Dict[str, np.ndarray]]:
    from harness.checkpoints import CheckpointError, load_weights
    from harness.checkpoints.io import write_npz

    with tempfile.TemporaryDirectory(prefix="nlparity-") as tmp:
        out_dir = args.save_outputs or tmp
        os.makedirs(out_dir, exist_ok=True)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg.to_dict(), f)
        clip = _read_clip(args.input) if args.input else \
            np.random.default_rng(args.seed).standard_normal(args.input_shape).astype(np.float32)
        if clip.shape[1] != cfg.in_channels:
            raise InputError(f"the clip has {clip.shape[1]} channels; arch {cfg.name} takes {cfg.in_channels}")
        input_path = os.path.join(tmp, "input.npy")
        np.save(input_path, clip)
        weights_path = os.path.join(tmp, "weights.npz")
        if args.checkpoint:
            try:
                loaded = load_weights(args.checkpoint, cfg, trust=getattr(args, "trust_checkpoint", False))
            except CheckpointError as exc:
                raise InputError(str(exc)) from None
            wrong = sorted({str(v.dtype) for v in loaded.arrays.values()} - {"float32"})
            if wrong:
                raise InputError(f"{args.checkpoint}: dtype mismatch: the weights hold {', '.join(wrong)}; "
                                 "the models run float32 (convert the weights to float32 first)")
            print(f"weights: {loaded.describe()}", flush=True)
            bad = {k: int((~np.isfinite(v)).sum()) for k, v in loaded.arrays.items() if not np.isfinite(v).all()}
            if bad:  # compared all the same: where the frameworks treat NaN differently is worth seeing
                print(f"warning: the weights hold {sum(bad.values())} non-finite values in {len(bad)} tensors "
                      f"(first: {next(iter(bad))})", file=sys.stderr, flush=True)
            write_npz(weights_path, loaded.arrays)
        else:
            print(f"weights: seeded random (seed {args.seed}), BN statistics calibrated on the input clip", flush=True)
            _run_worker("torch", cfg_path, input_path, None, args, init_seed=args.seed, save_weights=weights_path)
        outputs = {}
        for fw in [reference] + frameworks:
            log.info("running %s on %s", fw, "x".join(map(str, clip.shape)))
            out_path = os.path.join(out_dir, f"{fw}.npz")
            isolated = os.path.join(out_dir, f"{reference}.npz") if (args.mode == "isolated" and fw != reference) else None
            runs[fw] = _run_worker(fw, cfg_path, input_path, out_path, args, weights=weights_path,
                                   isolated_from=isolated)
            outputs[fw] = _load_npz(out_path)
        return outputs


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    # outputs are checked before the work, so a long run never ends in "cannot write"
    if args.json:
        check_output_path(args.json, "--json")
    if args.save_outputs:
        check_output_dir(args.save_outputs, "--save-outputs folder")
    runs: Dict[str, dict] = {}
    try:
        reports = run(args, runs)
    except KeyError as exc:
        raise InputError(str(exc)) from None
    for report in reports:
        print(format_report(report))
        print()
    if args.json:
        doc = reports[0].to_dict() if len(reports) == 1 else {
            "passed": all(r.passed for r in reports), "comparisons": [r.to_dict() for r in reports]}
        overrides = {k: v for k, v in (("depth", args.depth), ("num_classes", args.num_classes)) if v is not None}
        doc.update(arch=args.arch, arch_hash=arch_hash(get_preset(args.arch, **overrides)), seed=args.seed,
                   checkpoint=args.checkpoint, input=args.input,
                   input_shape=list(args.input_shape) if not (args.input or args.load_outputs) else None,
                   date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), runs=runs)
        atomic_write_json(args.json, doc)
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
