"""Forward-pass throughput of each framework on the same network (timm benchmark style).

    python -m harness.bench --frameworks torch,ms --input-shape 1,3,32,224,224 --json results/bench.json
    python -m harness.bench --frameworks torch --device gpu --batch-sizes 1,4,8
    python -m harness.bench --data ...          # the decode benchmark (harness.bench_data)

Each framework runs in a process of its own (MindSpore sets its oneDNN ISA before import),
with seeded random weights: warm-up iterations (graph compilation, allocator, cuDNN
autotune) are reported apart from the timed ones, and the device is synchronised around
every timed step. Results are data, with provenance: versions, hardware, spec hash, date.
Exit status: 0 ok, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np

from harness.cli import (InputError, OneLineParser, check_clip_size, failure_line, int_list, nonnegative_int,
                         positive_int, run_main, run_module)
from harness.files import atomic_write_json, check_output_path
from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, parameter_count, parameter_specs


def _shape(text: str) -> List[int]:
    shape = int_list(text)
    if len(shape) != 5:
        raise argparse.ArgumentTypeError("input shape must be N,C,T,H,W")
    return shape


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", default="torch,ms", help="comma-separated: torch/pt, mindspore/ms")
    p.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET")
    p.add_argument("--input-shape", type=_shape, default=[1, 3, 32, 224, 224], metavar="N,C,T,H,W",
                   help="clip shape; N is replaced by each of --batch-sizes (default 1,3,32,224,224)")
    p.add_argument("--batch-sizes", type=int_list, help="clips per forward (default: N of --input-shape)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--ms-mode", default="graph", help="graph, pynative, or both as 'graph,pynative'")
    p.add_argument("--warmup", type=nonnegative_int, default=2)
    p.add_argument("--iters", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, help="framework threads (default: all cores)")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    p.add_argument("--data", action="store_true", help="run the decode benchmark instead (harness.bench_data)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    return p


def benchmark_weights(cfg, rng) -> dict:
    """Weights for timing: N(0, 1/fan_in) convs, identity BN, and every non-local output
    BN at zero scale (the papers' initialisation), so no activation overflows and the
    timing measures the real arithmetic."""
    weights = {}
    for name, shape in parameter_specs(cfg).items():
        if name.endswith("running_var"):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith(("running_mean", "bias")):
            weights[name] = np.zeros(shape, np.float32)
        elif ".bn" in name or name.startswith("stem.bn"):
            scale = 0.0 if ".non_local.bn." in name else 1.0
            weights[name] = np.full(shape, scale, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            weights[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return weights


def _measure(framework: str, args) -> dict:
    """In this process: build, load seeded random weights, time forward passes."""
    from harness.backends import make_runner

    cfg = get_preset(args.arch)
    extra = {"mode": args.ms_mode} if framework == "ms" else {}
    runner = make_runner(framework, device=args.device, threads=args.threads, **extra)
    t0 = time.perf_counter()
    runner.build(cfg)
    rng = np.random.default_rng(0)
    runner.load(benchmark_weights(cfg, rng))
    build_s = time.perf_counter() - t0
    rows = []
    for batch in args.batch_sizes or [args.input_shape[0]]:
        clip = rng.standard_normal([batch] + list(args.input_shape[1:])).astype(np.float32)
        warm = []
        for _ in range(args.warmup):
            t = time.perf_counter()
            runner.forward(clip)
            warm.append(time.perf_counter() - t)
        times = runner.time_forward(clip, warmup=0, iters=args.iters)
        median = statistics.median(times)
        rows.append({"batch_size": batch, "input_shape": [batch] + list(args.input_shape[1:]),
                     "warmup_s": warm, "step_s": times, "step_s_median": median, "step_s_min": min(times),
                     "clips_per_s": batch / median, "ms_per_clip": 1000 * median / batch})
    return {"framework": framework, "mode": args.ms_mode if framework == "ms" else "eager",
            "device": args.device, "build_s": build_s, "runs": rows,
            "versions": runner.versions(), "hardware": runner.hardware()}


def _child(framework: str, mode: Optional[str], args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = ["--_child", "--frameworks", framework, "--arch", args.arch,
               "--input-shape", ",".join(map(str, args.input_shape)), "--device", args.device,
               "--warmup", str(args.warmup), "--iters", str(args.iters), "--json", out]
        if mode:
            cmd += ["--ms-mode", mode]
        if args.batch_sizes:
            cmd += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = run_module("harness.bench", cmd)
        if proc.returncode != 0:
            return {"framework": framework, "mode": mode, "error": failure_line(proc, "failed")}
        with open(out) as f:
            return json.load(f)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--data" in argv:
        from harness import bench_data

        argv.remove("--data")
        return bench_data.main(argv)
    args = build_parser().parse_args(argv)
    return run_main(lambda: _main(args))


def _main(args) -> int:
    from harness.backends import BackendError, canonical_framework

    try:
        frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for batch in args.batch_sizes or [args.input_shape[0]]:
        check_clip_size([batch] + list(args.input_shape[1:]))
    if args.json:
        check_output_path(args.json, "--json")
    if args._child:
        try:
            result = _measure(frameworks[0], args)
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0
    cfg = get_preset(args.arch)
    results = []
    for fw in frameworks:
        for mode in (args.ms_mode.split(",") if fw == "ms" else [None]):
            r = _child(fw, mode, args)
            results.append(r)
            if "error" in r:
                print(f"{fw}{'/' + mode if mode else ''}: {r['error']}", file=sys.stderr)
                continue
            for row in r["runs"]:
                print(f"{fw:<6} {r['mode']:<9} {r['device']} batch {row['batch_size']:>3}: "
                      f"{row['ms_per_clip']:9.1f} ms/clip  {row['clips_per_s']:8.2f} clips/s  "
                      f"(first warm-up {row['warmup_s'][0] if row['warmup_s'] else float('nan'):.2f} s)")
    doc = {"benchmark": "forward", "arch": cfg.name, "arch_hash": arch_hash(cfg),
           "parameters": parameter_count(cfg), "input_shape": args.input_shape, "warmup": args.warmup,
           "iters": args.iters, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "results": results}
    ok = [r for r in results if "error" not in r]
    if len(ok) >= 2:
        base = ok[0]["runs"][0]["ms_per_clip"]
        doc["relative_to_first"] = {f"{r['framework']}/{r['mode']}": r["runs"][0]["ms_per_clip"] / base for r in ok}
    if args.json:
        atomic_write_json(args.json, doc)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
