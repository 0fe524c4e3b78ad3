"""PyTorch on a GPU against PyTorch on the CPU, layer by layer; the fast path and every
reduced dtype against float32; then forward throughput.

    python -m harness.device_check --out results/gpu_torch.json
    scripts/gpu_check.sh OUTDIR          # this, then the benchmark tables (harness.bench)

The one check a GPU session runs. The same seeded, BN-calibrated weights and clip on both
devices, TF32 and cuDNN's autotuner off (so a 1e-3 error cannot hide):

1. ``parity``: every canonical layer, GPU float32 against CPU float32, at parity's
   per-stage tolerances (the verdict and exit status);
2. ``fast_parity``: the GPU's fast path (BN folded, non-local reassociated, in-place,
   channels_last_3d) against its exact path, layer by layer;
3. ``dtypes``: logits of ``--clips`` seeded clips in each of ``--dtypes`` (exact and fast
   path) against GPU float32: max |error| scaled by max |logit|, top-1 and top-5 agreement;
4. ``gpu`` / ``cpu``: ms per clip for ``--batch-sizes`` (float32, exact, cuDNN autotuner on,
   the batch on the device before the clock starts, synchronised after every step).

Imports no MindSpore, decord or OpenCV (the GPU machine has none of them).
``--device cpu`` runs the same steps with the CPU as the candidate (a smoke test where
no GPU is at hand; TF32 is then skipped). Exit 0 parity passed, 1 failed, 2 no GPU or bad input.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, layer_names, parameter_count
from frameworks.spec.flops import gflops_per_clip
from harness.errors import InputError
from harness.provenance import result_doc, utc_now
from harness.cli import (check_clip_size, clip_shape, int_list, nonnegative_int, OneLineParser, positive_int,
                         run_main, tolerance)
from harness.comparator import compare_outputs, format_report, topk_agreement
from harness.files import atomic_write_json, check_output_path

REDUCED = ("tf32", "bfloat16", "float16")
# the fast path on a GPU: every exact rewrite, channels_last_3d (cuDNN's preferred layout)
FAST_OPTIONS = {"execution": {"reassociate_nonlocal": True, "inplace": True, "fast_pools": True,
                              "direct_mkldnn": True}, "fold_bn": True, "channels_last": True}


def _dtypes(text: str) -> List[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in REDUCED]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown dtype {', '.join(bad)}; one of {', '.join(REDUCED)}")
    return items


def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m harness.device_check", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                   help="the architecture preset (default %s)" % DEFAULT_PRESET)
    p.add_argument("--frames", type=positive_int, default=32, help="frames per clip (default 32)")
    p.add_argument("--size", type=positive_int, default=224, help="crop size (default 224)")
    p.add_argument("--input-shape", type=clip_shape, metavar="N,C,T,H,W",
                   help="clip shape as bench takes it (overrides --frames and --size; N is replaced by "
                        "--batch-sizes; default 1,3,32,224,224)")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64], help="timed batch sizes (default 1,16,64)")
    p.add_argument("--iters", type=positive_int, default=20, help="timed steps per batch size (default 20)")
    p.add_argument("--warmup", type=nonnegative_int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--dtypes", type=_dtypes, default=list(REDUCED),
                   help="reduced dtypes checked against float32 (default tf32,bfloat16,float16)")
    p.add_argument("--clips", type=positive_int, default=8, help="clips for the dtype agreement (default 8)")
    p.add_argument("--atol", type=tolerance, default=None,
                   help="scaled atol for every layer (default: parity's per-stage defaults)")
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                   help="the candidate device (cpu: a smoke test of this check without a GPU) (default gpu)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all cores)")
    p.add_argument("--json", "--out", dest="out", metavar="FILE", default="results/device_check.json",
                   help="result JSON (default results/device_check.json; --out is its older name)")
    args = p.parse_args(argv)
    return run_main(lambda: _main(args))


def _child(job_args: dict, tmp: str, name: str, **options):
    from harness.runners.child import Job, WarmChild

    return WarmChild(Job("torch", options=options, **job_args), tmp, name)


def _outputs(child, op: str, clip_path: str, out: str) -> Dict[str, np.ndarray]:
    from harness.checkpoints.io import read_arrays

    child.request(op=op, input=clip_path, out=out)
    return read_arrays(out)


def _logits_error(ref: np.ndarray, got: np.ndarray) -> dict:
    scale = float(np.abs(ref).max()) or 1.0
    diff = np.abs(got.astype(np.float64) - ref)
    return {"max_abs": float(diff.max()), "scaled_max_abs": float(diff.max() / scale),
            "mean_abs": float(diff.mean()), **topk_agreement(ref, got)}


def _clip_dims(args) -> Tuple[int, int, int]:
    """``(frames, height, width)`` of every clip, each batch of it within the size limit."""
    try:
        if args.input_shape:
            channels, frames, height, width = args.input_shape[1:]
            if channels != 3:
                raise InputError(f"--input-shape: the network takes 3 channels, not {channels}")
        else:
            frames, height, width = args.frames, args.size, args.size
        for batch in [1, args.clips] + args.batch_sizes:
            check_clip_size((batch, 3, frames, height, width))
    except argparse.ArgumentTypeError as exc:
        raise InputError(str(exc)) from None
    return frames, height, width


def _main(args) -> int:
    from harness.runners.child import Job, run_job, save_clip

    frames, height, width = _clip_dims(args)
    check_output_path(args.out, "--json")
    cfg = get_preset(args.arch)
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((1, 3, frames, height, width)).astype(np.float32)
    clips = rng.standard_normal((args.clips, 3, frames, height, width)).astype(np.float32)
    doc: dict = {"benchmark": "device_check", "arch": cfg.name, "arch_hash": arch_hash(cfg),
                 "parameters": parameter_count(cfg), "input_shape": list(clip.shape), "device": args.device,
                 "date": utc_now(), "tf32": False, "cudnn_benchmark_for_parity": False,
                 "gflops_per_clip": gflops_per_clip(cfg, clip.shape[1:])}
    with tempfile.TemporaryDirectory(prefix="nlparity-device-") as tmp:
        paths = {"tmp": tmp, "clip": save_clip(os.path.join(tmp, "clip.npy"), clip),
                 "clips": save_clip(os.path.join(tmp, "clips.npy"), clips)}
        weights = os.path.join(tmp, "weights.npz")
        run_job(Job("torch", cfg, seed=0, save_weights=weights, input=paths["clip"]), tmp, "weights")
        job = dict(config=cfg, weights=weights, threads=args.threads)
        report, got, logits32, runs = _device_parity(args, job, paths, doc)
        _fast_and_dtypes(args, job, paths, doc, got, logits32)
        rows = _throughput(args, job, tmp, list(clip.shape[1:]))
    if args.device == "gpu":
        doc.update(gpu=rows["gpu"], cpu=rows["cpu"][0] if rows["cpu"] else None)
    else:   # a smoke test: no GPU rows for the report to mistake for a GPU's
        doc.update(gpu=[], cpu=rows["cpu"][0] if rows["cpu"] else None, candidate_timing=rows["cpu"])
    doc.update(versions=runs[args.device]["versions"], hardware=runs[args.device]["hardware"],
               cuda=runs[args.device]["versions"].get("cuda"), cudnn=runs[args.device]["versions"].get("cudnn"))
    atomic_write_json(args.out, result_doc("device_check", doc, runs=runs))
    passed = report.passed and doc.get("fast_parity", {}).get("passed", True)
    return 0 if passed else 1


def _device_parity(args, job: dict, paths: dict, doc: dict):
    """1. the candidate device against the CPU, float32, every layer: ``(report, the
    candidate's layers, its float32 logits of the clips, each device's versions and hardware)``."""
    tmp = paths["tmp"]
    runs: Dict[str, dict] = {}
    with _child({**job, "device": "cpu"}, tmp, "cpu") as cpu:
        ref = _outputs(cpu, "intermediates", paths["clip"], os.path.join(tmp, "cpu.npz"))
        runs["cpu"] = {"versions": cpu.ready["versions"], "hardware": cpu.ready["hardware"]}
    with _child({**job, "device": args.device}, tmp, "exact") as exact:
        got = _outputs(exact, "intermediates", paths["clip"], os.path.join(tmp, "exact.npz"))
        logits32 = _outputs(exact, "forward", paths["clips"], os.path.join(tmp, "logits32.npz"))["logits"]
        runs[args.device] = {"versions": exact.ready["versions"], "hardware": exact.ready["hardware"]}
    report = compare_outputs(ref, got, layer_names(job["config"]), atol=args.atol, reference_name="torch-cpu",
                             candidate_name=f"torch-{args.device}")
    print(format_report(report), flush=True)
    doc["parity"] = report.to_dict()
    return report, got, logits32, runs


def _fast_and_dtypes(args, job: dict, paths: dict, doc: dict, got: dict, logits32: np.ndarray) -> None:
    """2. the fast path against the exact one, float32, every layer; 3. reduced dtypes' logits."""
    from harness.runners import RunnerError

    tmp, names = paths["tmp"], layer_names(job["config"])
    dtypes = [d for d in args.dtypes if not (d == "tf32" and args.device == "cpu")]
    doc["dtypes"] = {}
    for variant, options in (("exact", {}), ("fast", FAST_OPTIONS)):
        for dtype in (["float32"] if variant == "fast" else []) + dtypes:
            name = f"{variant}-{dtype}"
            try:
                with _child({**job, "device": args.device}, tmp, name, dtype=dtype, **options) as child:
                    if variant == "fast" and dtype == "float32":
                        fast = _outputs(child, "intermediates", paths["clip"], os.path.join(tmp, "fast.npz"))
                        fast_report = compare_outputs(got, fast, names, atol=args.atol,
                                                      reference_name=f"torch-{args.device}-exact",
                                                      candidate_name=f"torch-{args.device}-fast")
                        print(format_report(fast_report), flush=True)
                        doc["fast_parity"] = fast_report.to_dict()
                    logits = _outputs(child, "forward", paths["clips"], os.path.join(tmp, f"{name}.npz"))["logits"]
                doc["dtypes"][name] = _logits_error(logits32, logits)
            except RunnerError as exc:
                doc["dtypes"][name] = {"error": str(exc)}
            entry = doc["dtypes"][name]
            print(f"logits {name:<16} vs float32 exact: " + (
                f"error {entry['error']}" if "error" in entry else
                f"max |d| / max|logit| {entry['scaled_max_abs']:.2e}, top-1 agreement "
                f"{entry['top1_agreement']:.3f} over {args.clips} clips"), flush=True)


def _throughput(args, job: dict, tmp: str, clip_dims: List[int]) -> Dict[str, list]:
    """4. throughput, float32 exact, autotuner on, batch on the device: rows per device."""
    rows: Dict[str, list] = {}
    timed = [(args.device, args.batch_sizes)] + ([("cpu", [1])] if args.device != "cpu" else [])
    for device, batches in timed:
        iters, warmup = (args.iters, args.warmup) if device == args.device else (3, 1)
        with _child({**job, "device": device}, tmp, f"time-{device}", benchmark=True) as child:
            rows[device] = _timed_rows(child, device, batches, clip_dims, iters, warmup)
    return rows


def _timed_rows(child, device: str, batches: List[int], clip_dims: List[int], iters: int, warmup: int) -> list:
    from harness.runners import RunnerError

    rows = []
    for batch in batches:
        shape = [batch] + clip_dims
        try:
            child.request(op="prepare", task="infer", shape=shape)
            if warmup:
                child.request(op="time", task="infer", shape=shape, iters=warmup)
            steps = child.request(op="time", task="infer", shape=shape, iters=iters)["step_s"]
        except RunnerError as exc:   # out of memory at a large batch: recorded, larger ones skipped
            rows.append({"batch_size": batch, "error": str(exc)})
            break
        median = statistics.median(steps)
        rows.append({"batch_size": batch, "step_s": steps, "step_s_median": median, "step_s_min": min(steps),
                     "clips_per_s": batch / median, "ms_per_clip": 1000 * median / batch, "cudnn_benchmark": True})
        print(f"torch {device} batch {batch:>3}: {1000 * median / batch:7.2f} ms/clip  "
              f"{batch / median:8.2f} clips/s", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
