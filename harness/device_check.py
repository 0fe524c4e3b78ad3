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
import os
import sys
import tempfile
from typing import List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, layer_names, parameter_count
from harness.cli import (InputError, OneLineParser, check_clip_size, int_list, nonnegative_int, positive_int,
                         result_doc, run_main, tolerance, utc_now)
from harness.comparator import compare_outputs, format_report
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
    from harness.runners.child import Job, Task, load_arrays, run_job, save_clip

    try:
        for batch in [1] + args.batch_sizes:
            check_clip_size((batch, 3, args.frames, args.size, args.size))
    except argparse.ArgumentTypeError as exc:
        raise InputError(str(exc)) from None
    check_output_path(args.out, "--out")
    cfg = get_preset(args.arch)
    clip = np.random.default_rng(0).standard_normal((1, 3, args.frames, args.size, args.size)).astype(np.float32)
    shape = list(clip.shape)
    with tempfile.TemporaryDirectory(prefix="nlparity-device-") as tmp:
        clip_path = save_clip(os.path.join(tmp, "clip.npy"), clip)
        weights = os.path.join(tmp, "weights.npz")
        run_job(Job("torch", cfg, seed=0, save_weights=weights, input=clip_path), tmp, "weights")
        runs = {}
        for device, batches in (("gpu", args.batch_sizes), ("cpu", [1])):
            iters, warmup = (args.iters, args.warmup) if device == "gpu" else (3, 1)
            runs[device] = run_job(Job("torch", cfg, device=device, weights=weights, input=clip_path, tasks=[
                Task("intermediates", out=os.path.join(tmp, f"{device}.npz")),
                Task("time", batch_sizes=batches, input_shape=shape, warmup=warmup, iters=iters)]), tmp, device)
        ref, got = load_arrays(os.path.join(tmp, "cpu.npz")), load_arrays(os.path.join(tmp, "gpu.npz"))
    report = compare_outputs(ref, got, layer_names(cfg), atol=args.atol, reference_name="torch-cpu",
                             candidate_name="torch-gpu")
    print(format_report(report))
    rows = {}
    for device in ("gpu", "cpu"):
        rows[device] = []
        for run in runs[device]["tasks"][1]["runs"]:
            if "error" in run:
                rows[device].append(run)
                continue
            median = float(np.median(run["step_s"]))
            batch = run["batch_size"]
            rows[device].append({"batch_size": batch, "step_s_median": median, "step_s_min": float(min(run["step_s"])),
                                 "clips_per_s": batch / median, "ms_per_clip": 1000 * median / batch})
            print(f"torch {device} batch {batch:>3}: {1000 * median / batch:7.2f} ms/clip  {batch / median:8.2f} clips/s")
    gpu = runs["gpu"]
    doc = {"benchmark": "device_check", "arch": cfg.name, "arch_hash": arch_hash(cfg),
           "parameters": parameter_count(cfg), "input_shape": shape, "date": utc_now(),
           "versions": gpu["versions"], "hardware": gpu["hardware"], "cuda": gpu["versions"].get("cuda"),
           "cudnn": gpu["versions"].get("cudnn"), "tf32": False, "parity": report.to_dict(), "gpu": rows["gpu"],
           "cpu": rows["cpu"][0]}
    atomic_write_json(args.out, result_doc("device_check", doc, runs={d: {"versions": r["versions"],
                                                                          "hardware": r["hardware"]}
                                                                      for d, r in runs.items()}))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
