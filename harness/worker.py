"""One framework, one process: run a clip through a runner and write ``.npz`` outputs.

Used by :mod:`harness.parity` (and usable by hand)::

    python -m harness.worker --framework ms --config cfg.json --input clip.npy \
        --weights weights.npz --out ms.npz [--isolated-from torch.npz] [--meta ms.json]
    python -m harness.worker --framework torch --config cfg.json --input clip.npy \
        --init-seed 0 --save-weights weights.npz          # seeded, BN-calibrated weights

The output holds every canonical intermediate, ``logits`` and the ``input``; the meta
JSON holds versions, hardware and timings. Exit 2 with one line on stderr on failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", required=True, help="torch/pt, mindspore/ms or mmaction2")
    p.add_argument("--config", required=True, help="I3DNLConfig as JSON (file)")
    p.add_argument("--input", required=True, help="float32 clip (N,C,T,H,W) as .npy")
    p.add_argument("--weights", help="canonical weights (.npz)")
    p.add_argument("--init-seed", type=int, help="make seeded random weights instead (torch only)")
    p.add_argument("--save-weights", help="where --init-seed writes the weights (.npz)")
    p.add_argument("--out", help="outputs (.npz) to write")
    p.add_argument("--isolated-from", help="reference outputs (.npz): run each layer on its input there")
    p.add_argument("--meta", help="write versions, hardware and timings here (JSON)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--ms-mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--threads", type=int, default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from frameworks.spec.arch import I3DNLConfig
    from harness.backends import BackendError, canonical_framework, make_runner
    from harness.checkpoints.io import write_npz

    framework = args.framework
    try:
        framework = canonical_framework(args.framework)
        with open(args.config) as f:
            cfg = I3DNLConfig.from_dict(json.load(f))
        clip = np.load(args.input, allow_pickle=False).astype(np.float32, copy=False)
        extra = {"mode": args.ms_mode} if framework == "ms" else {}
        runner = make_runner(framework, device=args.device, threads=args.threads, **extra)
        meta = {"framework": framework, "versions": runner.versions(), "hardware": runner.hardware()}
        if args.init_seed is not None:
            if not hasattr(runner, "random_weights"):
                raise BackendError(f"{framework} cannot make random weights; use torch")
            write_npz(args.save_weights, runner.random_weights(cfg, clip, args.init_seed))
        if args.out:
            t0 = time.perf_counter()
            runner.build(cfg)
            meta["build_s"] = time.perf_counter() - t0
            with np.load(args.weights if args.weights else args.save_weights, allow_pickle=False) as z:
                runner.load({k: z[k] for k in z.files})
            t0 = time.perf_counter()
            if args.isolated_from:
                with np.load(args.isolated_from, allow_pickle=False) as z:
                    reference = {k: z[k] for k in z.files}
                outputs = runner.forward_isolated(clip, reference)
            else:
                outputs = runner.forward_intermediates(clip)
            meta["forward_s"] = time.perf_counter() - t0
            outputs["input"] = clip
            write_npz(args.out, outputs)
        if args.meta:
            with open(args.meta, "w") as f:
                json.dump(meta, f, indent=2, default=str)
    except (BackendError, ValueError, KeyError, OSError, TypeError) as exc:
        print(f"error: {framework}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
