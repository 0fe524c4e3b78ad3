"""Benchmarks, results as data: ``forward`` (network throughput per framework) and ``data``
(decoding throughput per decoder and loader workers).

    python -m harness.bench forward --frameworks torch,ms --input-shape 1,3,32,224,224 --json results/b.json
    python -m harness.bench forward --frameworks torch --device gpu --batch-sizes 1,4,8
    python -m harness.bench data --json results/bench_data_cpu.json     # see harness.data.bench

(``python -m harness.bench [--data] OPTIONS`` without a subcommand is the older form:
``forward``, or ``data`` with ``--data``.)

``forward``: each framework runs in a process of its own (:mod:`harness.runners.child`;
MindSpore sets its oneDNN ISA before import) on benchmark weights (below): warm-up
iterations (graph compilation, allocator, cuDNN autotune) are reported apart from the
timed ones, and the device is synchronised after every timed step. Exit status: 0 ok,
2 bad input or no framework could run (one line).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, parameter_count, parameter_specs
from harness.cli import (InputError, OneLineParser, check_clip_size, int_list, nonnegative_int, positive_int,
                         result_doc, run_main, utc_now)
from harness.files import atomic_write_json, check_output_path


def _shape(text: str) -> List[int]:
    shape = int_list(text)
    if len(shape) != 5:
        raise argparse.ArgumentTypeError("input shape must be N,C,T,H,W")
    return shape


def build_forward_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--frameworks", default="torch,ms", help="comma-separated: torch/pt, mindspore/ms, mmaction2")
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
    return p


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.bench", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{forward,data}")
    build_forward_parser(sub.add_parser("forward", help="forward throughput of each framework",
                                        description="Forward throughput of each framework, each in its own process."))
    sub.add_parser("data", help="decode throughput (harness.data.bench; its own options)", add_help=False)
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


def _summarise(record: dict, framework: str, mode: Optional[str], device: str, shape: List[int]) -> dict:
    rows = []
    for run in record["tasks"][0]["runs"]:
        if "error" in run:
            rows.append(run)
            continue
        median = statistics.median(run["step_s"])
        batch = run["batch_size"]
        rows.append({"batch_size": batch, "input_shape": [batch] + list(shape[1:]), "warmup_s": run["warmup_s"],
                     "step_s": run["step_s"], "step_s_median": median, "step_s_min": min(run["step_s"]),
                     "clips_per_s": batch / median, "ms_per_clip": 1000 * median / batch})
    return {"framework": framework, "mode": mode or "eager", "device": device, "build_s": record.get("build_s"),
            "runs": rows, "versions": record["versions"], "hardware": record["hardware"]}


def forward(args) -> int:
    from harness.checkpoints.io import write_npz
    from harness.runners import RunnerError, canonical_framework
    from harness.runners.child import Job, Task, run_job

    frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
    batches = args.batch_sizes or [args.input_shape[0]]
    for batch in batches:
        check_clip_size([batch] + list(args.input_shape[1:]))
    if args.json:
        check_output_path(args.json, "--json")
    cfg = get_preset(args.arch)
    results = []
    with tempfile.TemporaryDirectory(prefix="nlparity-bench-") as tmp:
        weights = os.path.join(tmp, "weights.npz")
        write_npz(weights, benchmark_weights(cfg, np.random.default_rng(0)))
        task = Task("time", batch_sizes=batches, input_shape=list(args.input_shape), warmup=args.warmup,
                    iters=args.iters)
        for fw in frameworks:
            for mode in (args.ms_mode.split(",") if fw == "ms" else [None]):
                job = Job(fw, cfg, device=args.device, threads=args.threads,
                          options={"mode": mode} if mode else {}, weights=weights, tasks=[task])
                try:
                    r = _summarise(run_job(job, tmp, f"{fw}-{mode}"), fw, mode, args.device, args.input_shape)
                except RunnerError as exc:
                    print(f"{fw}{'/' + mode if mode else ''}: {exc}", file=sys.stderr)
                    results.append({"framework": fw, "mode": mode, "error": str(exc)})
                    continue
                results.append(r)
                for row in r["runs"]:
                    if "error" in row:
                        print(f"{fw:<6} batch {row['batch_size']:>3}: {row['error']}", file=sys.stderr)
                        continue
                    first = row["warmup_s"][0] if row["warmup_s"] else float("nan")
                    print(f"{fw:<6} {r['mode']:<9} {r['device']} batch {row['batch_size']:>3}: "
                          f"{row['ms_per_clip']:9.1f} ms/clip  {row['clips_per_s']:8.2f} clips/s  "
                          f"(first warm-up {first:.2f} s)")
    doc = {"benchmark": "forward", "arch": cfg.name, "arch_hash": arch_hash(cfg),
           "parameters": parameter_count(cfg), "input_shape": args.input_shape, "warmup": args.warmup,
           "iters": args.iters, "date": utc_now(), "results": results}
    ok = [r for r in results if "error" not in r]
    if len(ok) >= 2:
        base = ok[0]["runs"][0]["ms_per_clip"]
        doc["relative_to_first"] = {f"{r['framework']}/{r['mode']}": r["runs"][0]["ms_per_clip"] / base for r in ok}
    if args.json:
        atomic_write_json(args.json, result_doc("bench_forward", doc))
    if not ok:
        raise InputError("no framework could run the benchmark")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("forward", "data", "-h", "--help"):
        # the form before subcommands: `bench [--data] OPTIONS`, kept as an alias
        argv = ["data", *[a for a in argv if a != "--data"]] if "--data" in argv else ["forward", *argv]
    if argv[0] == "data":
        from harness.data import bench as data_bench

        return data_bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_main(lambda: forward(args))


if __name__ == "__main__":
    sys.exit(main())
