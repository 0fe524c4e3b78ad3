"""PyTorch on a GPU against PyTorch on the CPU, layer by layer, then forward throughput.

    python -m harness.device_check --out results/gpu_torch.json

The one script a GPU session runs: the same seeded, BN-calibrated weights and clip on
both devices (TF32 off, so a 1e-3 error cannot hide), the per-layer parity table, then
clips/s on the GPU for several batch sizes (warm-up apart, device synchronised) and on
the CPU for batch 1, all in one JSON with provenance. Exit 0 parity passed, 1 failed,
2 no GPU or bad input.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from typing import List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, layer_names, parameter_count
from harness.cli import (InputError, OneLineParser, check_clip_size, int_list, nonnegative_int, positive_int,
                         run_main, tolerance)
from harness.compare import compare_outputs, format_report
from harness.files import atomic_write_json, check_output_path


def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m harness.device_check", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET")
    p.add_argument("--frames", type=positive_int, default=32, help="frames per clip (default 32)")
    p.add_argument("--size", type=positive_int, default=224, help="crop size (default 224)")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 4, 8, 16], help="default 1,4,8,16")
    p.add_argument("--iters", type=positive_int, default=20)
    p.add_argument("--warmup", type=nonnegative_int, default=5)
    p.add_argument("--atol", type=tolerance, default=None,
                   help="scaled atol for every layer (default: parity's per-stage defaults)")
    p.add_argument("--out", default="results/device_check.json")
    args = p.parse_args(argv)
    return run_main(lambda: _main(args))


def _main(args) -> int:
    try:
        for batch in [1] + args.batch_sizes:
            check_clip_size((batch, 3, args.frames, args.size, args.size))
    except argparse.ArgumentTypeError as exc:
        raise InputError(str(exc)) from None
    check_output_path(args.out, "--out")
    from harness.backends import TorchRunner

    cfg = get_preset(args.arch)
    clip = np.random.default_rng(0).standard_normal((1, 3, args.frames, args.size, args.size)).astype(np.float32)
    gpu = TorchRunner(device="gpu")
    cpu = TorchRunner(device="cpu")
    weights = cpu.random_weights(cfg, clip, seed=0)
    for runner in (cpu, gpu):
        runner.build(cfg)
        runner.load(weights)
    ref, got = cpu.forward_intermediates(clip), gpu.forward_intermediates(clip)
    report = compare_outputs(ref, got, layer_names(cfg), atol=args.atol,
                             reference_name="torch-cpu", candidate_name="torch-gpu")
    print(format_report(report))

    rows = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(batch).standard_normal((batch,) + clip.shape[1:]).astype(np.float32)
        try:
            times = gpu.time_forward(x, warmup=args.warmup, iters=args.iters)
        except RuntimeError as exc:  # out of memory at a large batch: record and stop growing
            rows.append({"batch_size": batch, "error": str(exc).splitlines()[0]})
            break
        median = float(np.median(times))
        rows.append({"batch_size": batch, "step_s_median": median, "step_s_min": float(min(times)),
                     "clips_per_s": batch / median, "ms_per_clip": 1000 * median / batch})
        print(f"torch gpu batch {batch:>3}: {1000 * median / batch:7.2f} ms/clip  {batch / median:8.2f} clips/s")
    cpu_times = cpu.time_forward(clip, warmup=1, iters=3)
    cpu_row = {"batch_size": 1, "step_s_median": float(np.median(cpu_times)),
               "clips_per_s": 1 / float(np.median(cpu_times))}
    print(f"torch cpu batch   1: {1000 * cpu_row['step_s_median']:7.2f} ms/clip")
    import torch

    doc = {"benchmark": "device_check", "arch": cfg.name, "arch_hash": arch_hash(cfg),
           "parameters": parameter_count(cfg), "input_shape": list(clip.shape),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "versions": gpu.versions(), "hardware": gpu.hardware(),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "tf32": False,
           "parity": report.to_dict(), "gpu": rows, "cpu": cpu_row}
    atomic_write_json(args.out, doc)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
