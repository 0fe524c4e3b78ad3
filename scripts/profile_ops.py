"""Per-operator time of one inference (or training) step: which op bounds a framework.

    python scripts/profile_ops.py --framework torch --variant fast --out /tmp/torch_ops.json
    python scripts/profile_ops.py --framework ms --mode train --input-shape 2,3,8,112,112

One framework per process (run it once per framework), the benchmark's weights and
runners (``harness.bench``'s variants), one warm-up step, then one profiled step:
``torch.profiler`` (self CPU time per aten op) or MindSpore's profiler (time per kernel
type, from its ``cpu_op_type_info`` table). Prints the table; ``--out`` keeps it as JSON.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.provenance import result_doc
from harness.cli import OneLineParser, positive_int, run_main  # noqa: E402


def _torch_table(runner, step, top: int):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device == "gpu" else [])) \
            as prof:
        step()
        runner.sync()
    rows = []
    for e in prof.key_averages():
        self_us = e.self_device_time_total if runner.device == "gpu" else e.self_cpu_time_total
        if self_us > 0:
            rows.append({"op": e.key, "calls": e.count, "self_ms": self_us / 1000})
    rows.sort(key=lambda r: -r["self_ms"])
    del torch
    return rows[:top]


def _ms_table(runner, step, top: int):
    import mindspore as ms

    with tempfile.TemporaryDirectory(prefix="nlparity-msprof-") as tmp:
        here = os.getcwd()
        os.chdir(tmp)   # MindSpore's profiler also leaves a rank_0/ folder in the working directory
        try:
            prof = ms.Profiler(output_path=tmp)
            step()
            prof.stop()
            prof.analyse()
        finally:
            os.chdir(here)
        found = glob.glob(os.path.join(tmp, "**", "cpu_op_type_info_*.csv"), recursive=True)
        if not found:
            raise RuntimeError("MindSpore's profiler wrote no cpu_op_type_info table")
        with open(found[0]) as f:
            rows = [{"op": r["op_type"], "calls": int(r["type_occurrences"]), "self_ms": float(r["total_compute_time"])}
                    for r in csv.DictReader(f)]
    rows.sort(key=lambda r: -r["self_ms"])
    return rows[:top]


def main(argv=None) -> int:
    p = OneLineParser(prog="python scripts/profile_ops.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", default="torch", help="torch, ms or mmaction2")
    p.add_argument("--variant", default="exact", help="a harness.bench variant (exact, fast, fast+channels_last ...)")
    p.add_argument("--ms-mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--mode", default="infer", choices=["infer", "train"])
    p.add_argument("--input-shape", default="1,3,32,224,224")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--top", type=positive_int, default=15)
    p.add_argument("--out", help="write the table here (JSON)")
    args = p.parse_args(argv)
    return run_main(lambda: _main(args))


def _main(args) -> int:
    import numpy as np

    from frameworks.spec.arch import DEFAULT_PRESET, get_preset
    from harness import bench
    from harness.runners import canonical_framework, make_runner

    fw = canonical_framework(args.framework)
    if fw == "ms":
        from harness.runners.mindspore_runner import configure_onednn_isa

        configure_onednn_isa()
    shape = [int(x) for x in args.input_shape.split(",")]
    bench_args = bench.build_parser().parse_args(["forward"])
    options = bench.runner_options(fw, args.variant, "float32", bench_args)
    if fw == "ms":
        options["mode"] = args.ms_mode
    cfg = get_preset(DEFAULT_PRESET)
    runner = make_runner(fw, threads=args.threads, **options)
    runner.build(cfg)
    runner.load(bench.benchmark_weights(cfg, np.random.default_rng(0)))
    step = runner.timing_step(shape, args.mode)
    step()
    runner.sync()
    rows = (_ms_table if fw == "ms" else _torch_table)(runner, step, args.top)
    total = sum(r["self_ms"] for r in rows)
    label = f"{fw}/{args.ms_mode if fw == 'ms' else 'eager'}/{args.variant}/{args.mode} {args.input_shape}"
    print(f"{label}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    for r in rows:
        print(f"  {r['op']:<40} {r['calls']:>5} calls {r['self_ms']:>9.1f} ms  {100 * r['self_ms'] / total:5.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result_doc("op_profile", {"label": label, "threads": args.threads, "ops": rows}), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
