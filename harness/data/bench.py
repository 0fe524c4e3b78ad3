"""Decode benchmark: clips/s of decode + sample + resize + crop + normalise, per decoder and
number of loader workers.

    python -m harness.bench data [--video FILE | --seconds 10 --size 340x256]
        [--preset mmaction2_val] [--decoders decord,pyav] [--workers 1,2]
        [--videos 40] [--warmup 4] [--json results/bench_data_cpu.json]

Without ``--video`` it makes one synthetic H.264 clip (:mod:`harness.data.synthetic`'s
patterns, 30 fps) of the given length and size, the shape of a Kinetics clip. Every
configuration runs the real :class:`harness.data.ClipLoader` over ``--videos`` copies
of the same file (distinct ids, so the seed preset's offsets differ): the numbers include
the inter-process transfer and the float32 normalisation, as an evaluation pays them.
The first ``--warmup`` videos (worker start-up, caches) are not timed.

Reported per configuration: ``videos_per_s`` and ``clips_per_s`` (views: crops x clips
per video, 1 for ``mmaction2_val``) for W workers, ``clips_per_s_per_worker`` (the
same divided by W), ``worker_ms_per_video`` (decode + transform wall time inside a
worker) and ``worker_cpu_ms_per_video`` / ``clips_per_cpu_s`` (the same as CPU time:
what one dedicated core sustains, which other load on a shared machine does not
inflate). ``provenance.hardware.load_average_*`` record how busy the machine was.
``python -m harness.bench data`` is the command.

Exit codes: 0 done, 1 a video failed to decode during the run, 2 bad input.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from harness.errors import CheckFailed, InputError
from harness.provenance import cpu_model, provenance
from harness.cli import add_verbose, nonnegative_int, OneLineParser, positive_int, run_main
from harness.data.synthetic import MAX_SECONDS, MAX_SIDE, check_video_memory, parse_seconds, parse_size
from harness.files import atomic_write_json, check_input_file, check_output_path
from harness.text import printable

log = logging.getLogger("harness.data.bench")
SYNTHETIC_FPS = 30


# ---------------------------------------------------------------------------- provenance
def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception:
        return None


def _loadavg() -> Optional[List[float]]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def data_provenance(load_before: Optional[List[float]] = None) -> dict:
    """The common provenance block, with the decoders' versions and the machine's load
    before and after the run (other work skews wall-time numbers, not CPU time)."""
    doc = provenance()
    doc["hardware"] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "load_average_before_1_5_15": load_before,
        "load_average_after_1_5_15": _loadavg(),
    }
    doc["versions"] = {"python": platform.python_version(), "numpy": _version("numpy"), "opencv": _version("cv2"),
                       "decord": _version("decord"), "av": _version("av")}
    return doc


# ---------------------------------------------------------------------------- benchmark
def make_synthetic_video(path, seconds: float, size, fps: int = 30, seed: int = 0) -> Path:
    from harness.data.synthetic import draw_params, render, write_video

    rng = np.random.default_rng(seed)
    width, height = size
    frames = render(draw_params(0, rng), int(round(seconds * fps)), height, width, fps, rng)
    write_video(path, frames, fps)
    return Path(path)


def _index_of_copies(video: Path, n: int):
    from frameworks.spec.labels import LabelMap
    from harness.data.index import DatasetIndex, FaultLog, VideoRecord

    records = [VideoRecord(f"bench{i:05d}", str(video), 0) for i in range(n)]
    return DatasetIndex(records, LabelMap.k400(), FaultLog(), "bench", str(video.parent), "", "bench")


def run_one(video: Path, preset, decoder: str, workers: int, videos: int, warmup: int, start_method: str = "spawn") -> dict:
    """Time one (decoder, workers) configuration; returns a flat result dict."""
    from harness.data.loader import ClipLoader

    loader = ClipLoader(_index_of_copies(video, videos + warmup), preset, decoder=decoder, workers=workers,
                        start_method=start_method)
    # the clock starts when the last warm-up video arrives (worker start-up excluded); up to
    # `prefetch` videos are already in flight then, a bias of at most prefetch / videos
    t_start = time.perf_counter() if warmup == 0 else None
    worker_s: List[float] = []
    worker_cpu_s: List[float] = []
    for k, item in enumerate(loader):
        if k < warmup:
            if k == warmup - 1:
                t_start = time.perf_counter()
            continue
        worker_s.append(item.seconds)
        worker_cpu_s.append(item.cpu_seconds)
    elapsed = time.perf_counter() - t_start if t_start is not None else float("nan")
    timed = len(worker_s)
    n_faults = sum(1 for f in loader.faults.faults if f.skipped)
    views = preset.views_per_video
    per_s = timed / elapsed if elapsed > 0 and timed > 0 else 0.0
    return {
        "decoder": decoder,
        "workers": workers,
        "videos_timed": timed,
        "wall_s": round(elapsed, 4),
        "videos_per_s": round(per_s, 3),
        "clips_per_s": round(per_s * views, 3),
        "clips_per_s_per_worker": round(per_s * views / max(1, workers), 3),
        "worker_ms_per_video": round(1000 * float(np.mean(worker_s)), 2) if worker_s else None,
        "worker_cpu_ms_per_video": round(1000 * float(np.mean(worker_cpu_s)), 2) if worker_cpu_s else None,
        # what one dedicated core sustains: 1 / CPU time per video, unaffected by other load
        "clips_per_cpu_s": round(views / float(np.mean(worker_cpu_s)), 3)
        if worker_cpu_s and np.mean(worker_cpu_s) > 0 else None,
        "decode_faults": n_faults,
    }


def benchmark(video: Path, preset, decoders: Sequence[str], workers: Sequence[int], videos: int, warmup: int,
              progress: bool = False) -> List[dict]:
    results = []
    configs = [(d, w) for d in decoders for w in workers]
    for decoder, w in _progress(configs, progress):
        log.info("timing %s with %d worker(s)", decoder, w)
        results.append(run_one(video, preset, decoder, w, videos, warmup))
    return results


def _progress(items, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(items, desc="configs", unit="config")
        except ImportError:  # pragma: no cover
            pass
    return items


def format_table(results: Sequence[dict]) -> str:
    head = (f"{'decoder':8} {'workers':>7} {'clips/s':>9} {'clips/s/worker':>15} {'worker ms/video':>16} "
            f"{'cpu ms/video':>13} {'clips/cpu-s':>12}")
    rows = [head, "-" * len(head)]
    nan = float("nan")
    for r in results:
        rows.append(f"{r['decoder']:8} {r['workers']:>7} {r['clips_per_s']:>9.2f} {r['clips_per_s_per_worker']:>15.2f} "
                    f"{(r['worker_ms_per_video'] or nan):>16.1f} {(r['worker_cpu_ms_per_video'] or nan):>13.1f} "
                    f"{(r['clips_per_cpu_s'] or nan):>12.2f}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- CLI
def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m harness.bench data",
        description="Decode benchmark: decoded + transformed clips/s per decoder (decord, PyAV) and number "
        "of loader worker processes, written as JSON with provenance.",
    )
    p.add_argument("--video", help="video to decode (default: a synthetic H.264 clip of --seconds and --size)")
    p.add_argument("--decoders", default="decord,pyav", help="comma-separated decoders (default decord,pyav)")
    p.add_argument("--workers", type=_int_list, default=[1, 2], help="comma-separated worker counts (default 1,2)")
    p.add_argument("--json", metavar="FILE", help="write results here (e.g. results/bench_data_cpu.json)")
    more = p.add_argument_group("more options")
    more.add_argument("--seconds", type=parse_seconds, default=10.0,
                      help=f"length of the synthetic clip, at most {MAX_SECONDS:g} (default 10)")
    more.add_argument("--size", type=parse_size, default=(340, 256), metavar="WxH",
                      help=f"size of the synthetic clip, even sides in 16..{MAX_SIDE} (default 340x256)")
    more.add_argument("--data-preset", "--preset", dest="preset", default="mmaction2_val",
                      help="data preset (default mmaction2_val: one 32x2 clip); --preset is its older name")
    more.add_argument("--videos", type=positive_int, default=40, help="timed videos per configuration (default 40)")
    more.add_argument("--warmup", type=nonnegative_int, default=4, help="untimed videos first (default 4)")
    more.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose(more)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    load_before = _loadavg()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.video:   # the synthetic clip is drawn in memory: refused before any allocation
        check_video_memory(parser, args.seconds, args.size, SYNTHETIC_FPS, "--seconds x --size")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_main(lambda: _main(args, load_before), args.verbose)


def _main(args, load_before) -> int:
    from frameworks.spec.data_presets import data_preset_hash, get_data_preset
    from harness.data.decoders import DECODERS, NativeStderr, VideoDecodeError, open_video

    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    bad = [d for d in decoders if d not in DECODERS]
    if bad or not decoders:
        raise InputError(f"unknown decoder(s) {bad}; choose from {', '.join(DECODERS)}")
    try:
        preset = get_data_preset(args.preset)
    except KeyError as exc:
        raise InputError(exc.args[0]) from None
    if args.video:
        check_input_file(args.video, "--video")
    if args.json:
        check_output_path(args.json, "--json", inputs=[args.video])

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        synthetic = not args.video
        # a synthetic clip that cannot be written (full disk, ulimit -f) is an OSError naming it
        video = Path(args.video) if args.video else make_synthetic_video(
            Path(tmp) / "bench.mp4", args.seconds, args.size, SYNTHETIC_FPS)
        try:
            with NativeStderr(), open_video(video, decoders[0]) as probe:   # FFmpeg's complaint: in the one line
                info = {"frames": probe.num_frames, "fps": probe.fps}
                first = probe.get_frames([0])
                info["size"] = [int(first.shape[2]), int(first.shape[1])]
        except (OSError, ValueError, VideoDecodeError) as exc:
            raise InputError(f"cannot use video: {printable(exc)}") from None
        results = benchmark(video, preset, decoders, args.workers, args.videos, args.warmup,
                            progress=not args.no_progress and sys.stderr.isatty())

    report = {
        "kind": "bench_data",
        "benchmark": "data_decode",
        "data_preset": preset.name,
        "data_preset_hash": data_preset_hash(preset),
        "protocol": preset.protocol,
        "clip": {"clip_len": preset.clip_len, "frame_interval": preset.frame_interval,
                 "views_per_video": preset.views_per_video},
        "video": {"path": None if synthetic else str(video), "synthetic": synthetic, **info},
        "videos_per_config": args.videos,
        "warmup": args.warmup,
        "results": results,
        "provenance": data_provenance(load_before),
    }
    print(format_table(results))
    if args.json:
        atomic_write_json(args.json, report)
    failed = [r for r in results if r["decode_faults"]]
    if failed:
        raise CheckFailed(f"{len(failed)} configuration(s) had decode faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
