"""The main job on embedded defaults: no download, no dataset needed (``tox -e demo``).

1. parity: PyTorch vs MindSpore vs mmaction2's own model, layer by layer, on seeded random
   weights whose BN statistics are calibrated on the compared clip;
2. convert: those weights (kept by parity's ``--save-weights``) .npz -> MindSpore .ckpt ->
   PyTorch .pth -> .npz, every array checked byte for byte;
3. evaluate: a small labelled video dataset is made (with planted faults), evaluated in
   PyTorch and in MindSpore with the same seeded weights (calibrated on that dataset's
   clips), and the two runs compared;
4. report: the caffe / pytorch / mindspore table from those results and the registry.

Test-sized inputs (8 frames at 64x64) keep it to a few minutes on two cores; the commands
it runs default to the real network and protocols. ``--workdir`` keeps the files.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from harness.cli import OneLineParser
from harness.files import check_output_dir

SMALL_DATA = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]


def _step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ python -m {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args])
    print(f"({time.perf_counter() - t0:.1f} s)", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed ({title}): exit {proc.returncode}")


def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m harness.demo", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep every file here (default: a temporary folder)")
    p.add_argument("--frameworks", type=_frameworks, default="torch,ms",
                   help="the frameworks to run, comma-separated: torch/pt, mindspore/ms (default torch,ms)")
    args = p.parse_args(argv)
    if args.workdir:
        try:
            check_output_dir(args.workdir, "--workdir")
        except ValueError as exc:
            p.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="nlparity-demo-") as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        j = lambda *parts: os.path.join(work, *parts)  # noqa: E731
        _step("1. parity on seeded random weights (kept for step 2)", "harness.parity", "--frameworks",
              args.frameworks, "--reference", "mmaction2", "--input-shape", "1,3,8,64,64",
              "--save-outputs", j("parity"), "--save-weights", j("weights.npz"), "--json", j("parity.json"))
        _step("2a. convert .npz -> MindSpore .ckpt", "harness.convert", j("weights.npz"), j("weights.ckpt"))
        _step("2b. convert .ckpt -> PyTorch .pth", "harness.convert", j("weights.ckpt"), j("weights.pth"))
        _step("2c. convert .pth -> .npz", "harness.convert", j("weights.pth"), j("roundtrip.npz"))
        _same_arrays(j("weights.npz"), j("roundtrip.npz"))
        _step("3a. make a small Kinetics-layout dataset (faults planted)", "harness.make_dataset", j("k400"),
              "--classes", "4", "--videos-per-class", "1", "--val-videos-per-class", "3", "--seconds", "2",
              "--size", "128x96", "--faults", "--no-progress")
        for fw in args.frameworks.split(","):
            _step(f"3b. evaluate in {fw}", "harness.evaluate", "--framework", fw, "--data-root", j("k400"),
                  *SMALL_DATA, "--out", j("results", f"{fw}.json"), "-q")
        fws = args.frameworks.split(",")
        if len(fws) == 2:
            _step("3c. compare the two runs", "harness.evaluate", "--compare", j("results", f"{fws[0]}.json"),
                  j("results", f"{fws[1]}.json"))
        _step("4. report", "harness.report", "--results", j("results"))
    print("\ndemo: every step passed")
    return 0


def _frameworks(text: str) -> str:
    from harness.runners import RunnerError, canonical_framework

    try:
        names = [canonical_framework(f) for f in text.split(",") if f.strip()]
    except RunnerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names or len(set(names)) != len(names) or "mmaction2" in names:
        raise argparse.ArgumentTypeError("give one or two of torch, ms (mmaction2 is always the reference)")
    return ",".join(names)


def _same_arrays(a: str, b: str) -> None:
    import numpy as np

    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        assert sorted(za.files) == sorted(zb.files), "key sets differ"
        for k in za.files:
            x, y = za[k], zb[k]
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k
        print(f"round trip: {len(za.files)} arrays byte-identical after npz -> ckpt -> pth -> npz")


if __name__ == "__main__":
    sys.exit(main())
