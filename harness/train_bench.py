"""Training step time: PyTorch, MindSpore graph and PyNative, one process each, one JSON.

    python -m harness.train_bench                      # batch 2 x 3x8x112x112, then the seed's 6 x 3x32x224x224
    python -m harness.train_bench --shapes 2,3,8,112,112 --json results/train_step_cpu.json

A step is the recipe's whole training step (forward in training mode, cross entropy,
backward, SGD with momentum and weight decay, the lr written for the step), timed from
the host after a device sync, on seeded normal clips, after ``--warmup`` untimed steps
(MindSpore graph mode compiles in its first). Weights: mmaction2's initialisation, the
same arrays in every framework. Each (framework, mode) runs in a child process of its
own (:mod:`harness.runners.child`, task ``train_time``), which also reports its peak
resident memory.

A shape is run only if it fits: before each shape after the first, the memory the same
variant's largest shape so far took above its baseline is scaled by the ratio of clip
elements and compared with the memory available now; a shape that would not fit (or a run
that fails) is recorded with the reason instead of a time. (Scaling from the smallest shape
over-estimates: its fixed costs, optimiser state and allocator arenas, are scaled with it;
2x3x8x112x112 predicted 21 GiB for torch at 6x3x32x224x224, 1x3x32x224x224 predicts 7.)

The result goes to ``runs/train_step_<device>.json`` unless ``--json`` names a file (the
committed ``results/`` files are written only when named). A run in which no configuration
could be timed (no GPU for ``--device gpu``, a shape the network cannot train on) is a
failed run: one line, exit 2, and no file written, so a good result is never replaced by
one holding only errors. Exit status: 0 ok (at least one configuration timed), 2 bad input
or nothing timed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, get_preset
from frameworks.spec.train import get_recipe, initial_weights, lr_schedule
from harness.cli import (InputError, OneLineParser, add_device, add_verbose, clip_shape, nonnegative_int,
                         num_classes, positive_int, result_doc, run_main, setup_logging, utc_now)
from harness.files import atomic_write_json, check_output_path

DEFAULT_SHAPES = ((2, 3, 8, 112, 112), (6, 3, 32, 224, 224))
VARIANTS = (("torch", None), ("ms", "graph"), ("ms", "pynative"))
MEMORY_SHARE = 0.7   # of the memory available now that a run may be estimated to need


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.train_bench", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=clip_shape, nargs="+", default=list(DEFAULT_SHAPES), metavar="N,C,T,H,W",
                   help="batch shapes, smallest first (default 2,3,8,112,112 6,3,32,224,224)")
    p.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                   help="the architecture preset (default %s)" % DEFAULT_PRESET)
    p.add_argument("--num-classes", type=num_classes, default=400, help="classifier outputs (default 400)")
    p.add_argument("--variants", default="torch,ms:graph,ms:pynative",
                   help="comma-separated framework[:ms mode] (default torch,ms:graph,ms:pynative)")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per run (default 3)")
    p.add_argument("--warmup", type=nonnegative_int, default=1,
                   help="untimed steps first (default 1; 0 times the first step too, MindSpore's graph compile "
                        "included)")
    p.add_argument("--threads", type=positive_int, help="framework threads (default: all cores)")
    add_device(p)
    p.add_argument("--json", "--out", dest="out", metavar="FILE",
                   help="result JSON (default runs/train_step_<device>.json; --out is its older name)")
    add_verbose(p)
    return p


def output_path(args) -> str:
    """``--json``, or ``runs/train_step_<device>.json``: a run never writes into results/ unasked."""
    return args.out or os.path.join("runs", f"train_step_{args.device}.json")


def timed_rows(doc: dict) -> int:
    return sum(1 for r in doc.get("rows", []) if "median_step_ms" in r)


def _variants(text: str):
    from harness.runners import canonical_framework

    out = []
    for item in text.split(","):
        fw, _, mode = item.partition(":")
        fw = canonical_framework(fw)
        if fw == "mmaction2":
            raise InputError("training runs our implementations: torch, ms:graph, ms:pynative")
        if fw == "ms" and mode not in ("graph", "pynative", ""):
            raise InputError(f"unknown MindSpore mode {mode!r}; use ms:graph or ms:pynative")
        out.append((fw, (mode or "graph") if fw == "ms" else None))
    return out


def available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- child side
def time_training(job, task, weights: Dict[str, np.ndarray], recipe, lrs: np.ndarray) -> dict:
    """The ``train_time`` task: ``warmup`` then ``steps`` timed steps per batch size."""
    import resource

    from harness.runners import make_trainer

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    trainer = make_trainer(job.framework, job.config, recipe, weights, steps_per_epoch=len(lrs), total_steps=len(lrs),
                           device=job.device,
                           ms_mode=job.options.get("mode", "graph"), threads=job.threads)
    build_s = time.perf_counter() - t0
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rng = np.random.default_rng(0)
    rows = []
    for batch in task.batch_sizes:
        shape = [batch] + list(task.input_shape[1:])
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, job.config.num_classes, batch)
        warm, times = [], []
        try:
            for _ in range(task.warmup):
                t = time.perf_counter()
                trainer.step(x, y)
                trainer.sync()
                warm.append(time.perf_counter() - t)
            for _ in range(task.steps):
                t = time.perf_counter()
                loss, _ = trainer.step(x, y)
                trainer.sync()
                times.append(time.perf_counter() - t)
        except (RuntimeError, MemoryError) as exc:
            rows.append({"batch_size": batch, "error": str(exc).strip().splitlines()[0][:300]})
            break
        rows.append({"batch_size": batch, "shape": shape, "warmup_s": warm, "step_s": times,
                     "loss": float(loss)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"op": "train_time", "runs": rows, "build_s": build_s, "peak_rss_bytes": peak,
            "rss_before_bytes": baseline, "rss_after_build_bytes": after_build,
            "versions": trainer.runner.versions(), "hardware": trainer.runner.hardware()}


# ----------------------------------------------------------------------------- parent side
def run_bench(shapes, variants, arch: str, num_classes: int, steps: int, warmup: int, threads: Optional[int],
              device: str) -> dict:
    from harness.checkpoints.io import write_npz
    from harness.runners import RunnerError, runner_options
    from harness.runners.child import Job, Task, run_job

    cfg = get_preset(arch, num_classes=num_classes)
    recipe = get_recipe()    # the seed's, dropout 0.5 included: a training step as it runs
    lrs = lr_schedule(recipe, steps_per_epoch=max(steps + warmup, 1), total_steps=steps + warmup)
    rows: List[dict] = []
    measured: Dict[str, tuple] = {}     # variant -> (clip elements, bytes above baseline) of its largest run
    with tempfile.TemporaryDirectory(prefix="nlparity-train-bench-") as tmp:
        weights = os.path.join(tmp, "weights.npz")
        write_npz(weights, initial_weights(cfg, 0))
        for i, shape in enumerate(shapes):
            elements = int(np.prod(shape))
            for fw, mode in variants:
                label = fw if mode is None else f"ms {mode}"
                row = {"framework": fw, "ms_mode": mode, "variant": label, "shape": list(shape)}
                if label in measured and elements > measured[label][0]:
                    need = measured[label][1] * elements / measured[label][0]
                    avail = available_bytes()
                    row["estimated_bytes"] = need
                    if avail is not None and need > MEMORY_SHARE * avail:
                        row["skipped"] = (f"estimated {need / 2**30:.1f} GiB above baseline ({'x'.join(map(str, shape))}"
                                          f" scaled from the largest shape run, by clip elements) > "
                                          f"{MEMORY_SHARE:.0%} of the {avail / 2**30:.1f} GiB available")
                        print(f"{label} {'x'.join(map(str, shape))}: skipped, {row['skipped']}", flush=True)
                        rows.append(row)
                        continue
                task = Task("train_time", batch_sizes=[shape[0]], input_shape=list(shape), warmup=warmup,
                            steps=steps, recipe=recipe.to_dict(), lrs=[float(x) for x in lrs])
                t0 = time.perf_counter()
                try:
                    record = run_job(Job(fw, cfg, device=device, threads=threads,
                                         options=runner_options(fw, mode), weights=weights, tasks=[task]),
                                     tmp, f"{label.replace(' ', '-')}-{i}")
                except RunnerError as exc:
                    row["error"] = str(exc)
                    print(f"{label} {'x'.join(map(str, shape))}: failed ({exc})", flush=True)
                    rows.append(row)
                    continue
                result = record["tasks"][0]
                run = result["runs"][0]
                row.update(wall_s=time.perf_counter() - t0, build_s=result["build_s"],
                           peak_rss_bytes=result["peak_rss_bytes"], versions=result["versions"],
                           hardware=result["hardware"])
                if "error" in run:
                    row["error"] = run["error"]
                else:
                    ms = [1000 * s for s in run["step_s"]]
                    row.update(step_ms=ms, median_step_ms=float(np.median(ms)), clips_per_s=shape[0] / np.median(
                        run["step_s"]), first_step_s=run["warmup_s"][0] if run["warmup_s"] else None,
                        loss=run["loss"])
                if "error" not in row and (label not in measured or elements > measured[label][0]):
                    measured[label] = (elements, max(result["peak_rss_bytes"] - result["rss_after_build_bytes"], 0))
                print(f"{label:12s} {'x'.join(map(str, shape)):16s} " + _row_text(row), flush=True)
                rows.append(row)
    return {"arch": cfg.name, "num_classes": num_classes, "recipe": recipe.to_dict(), "steps": steps,
            "warmup": warmup, "threads": threads or os.cpu_count(), "device": device, "rows": rows,
            "date": utc_now()}


def _row_text(row: dict) -> str:
    if "median_step_ms" not in row:
        return f"error: {row.get('error')}"
    first = f"first step {row['first_step_s']:.1f} s" if row.get("first_step_s") is not None else "no warm-up step"
    return f"{row['median_step_ms']:9.0f} ms/step  ({first}, peak {row['peak_rss_bytes'] / 2**30:.1f} GiB)"


def failed_run(doc: dict, out: str) -> str:
    """The one line of a run in which nothing could be timed."""
    reasons = "; ".join(f"{r['variant']} {'x'.join(map(str, r['shape']))}: "
                        f"{(r.get('error') or r.get('skipped') or '?')[:160]}" for r in doc["rows"][:4])
    return (f"no configuration could be timed on --device {doc['device']} (nothing written to {out}): {reasons}"
            + (f" (and {len(doc['rows']) - 4} more)" if len(doc["rows"]) > 4 else ""))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        out = check_output_path(output_path(args), "--json")
        doc = run_bench(args.shapes, _variants(args.variants), args.arch, args.num_classes, args.steps, args.warmup,
                        args.threads, args.device)
        if not timed_rows(doc):      # a failed run never replaces a result file (nor writes one)
            raise InputError(failed_run(doc, out))
        atomic_write_json(out, result_doc("bench_train", doc))
        print(f"result: {out} ({timed_rows(doc)} of {len(doc['rows'])} configurations timed)")
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
