"""The main job on embedded defaults: no download, no dataset needed (``tox -e demo``).

1. parity: PyTorch vs MindSpore vs mmaction2's own model, layer by layer, on seeded random
   weights whose BN statistics are calibrated on the compared clip;
2. convert: those weights (kept by parity's ``--save-weights``) .npz -> MindSpore .ckpt ->
   PyTorch .pth -> .npz, every array checked byte for byte;
3. train, evaluate: a small labelled video dataset is made (4 classes of procedural
   motion, faults planted in its held-out split), the real network is trained on it in the
   first framework (the seed's recipe and pipeline at a test size: 8 frames at 48x48, a
   higher learning rate for training from scratch), the trained checkpoint is converted to
   the other framework's format, the held-out split is evaluated in both (the seed's
   evaluation protocol at the same size), and the two runs compared;
4. report: the caffe / pytorch / mindspore table from those results and the registry;
5. infer: two held-out videos classified from the converted checkpoint, drawn as a GIF;
   then the verdict: a learned model (accuracy against chance in both frameworks) and the
   same predictions in both.

Test-sized inputs keep it to a few minutes on two cores; the commands it runs default to
the real network and protocols. ``--workdir`` keeps the files.
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

# training and its evaluation: the seed's pipelines (seed_train / seed_eval) at a test size
TRAIN_DATA = ["--data-override", "clip_len=8", "--data-override", "short_edge=54", "--data-override", "crop_size=48"]
CLASSES = 4
# the seed's recipe but for training from scratch: lr 3e-3 (not 3e-4), the cosine over the
# run's 20 epochs (not 100), batch 8; one thread (on two busy cores, a two-thread OpenMP team
# made torch's step 10-30x slower)
TRAIN_RECIPE = ["--epochs", "20", "--batch-size", "8", "--lr", "0.003", "--t-max", "20", "--threads", "1"]


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
        os.makedirs(os.path.join(work, "results"), exist_ok=True)   # every result the report reads
        j = lambda *parts: os.path.join(work, *parts)  # noqa: E731
        _step("1. parity on seeded random weights (kept for step 2)", "harness.parity", "--frameworks",
              args.frameworks, "--reference", "mmaction2", "--input-shape", "1,3,8,64,64",
              "--save-outputs", j("parity"), "--save-weights", j("weights.npz"), "--json", j("results", "parity.json"))
        _step("2a. convert .npz -> MindSpore .ckpt", "harness.convert", j("weights.npz"), j("weights.ckpt"))
        _step("2b. convert .ckpt -> PyTorch .pth", "harness.convert", j("weights.ckpt"), j("weights.pth"))
        _step("2c. convert .pth -> .npz", "harness.convert", j("weights.pth"), j("roundtrip.npz"))
        _same_arrays(j("weights.npz"), j("roundtrip.npz"))
        _step("3a. make a small Kinetics-layout dataset (faults planted in its held-out split)",
              "harness.make_dataset", j("k400"), "--classes", str(CLASSES), "--videos-per-class", "32",
              "--val-videos-per-class", "8", "--seconds", "2", "--size", "128x96", "--faults", "--no-progress")
        fws = args.frameworks.split(",")
        _step(f"3b. train in {fws[0]} (the seed's recipe, lr {TRAIN_RECIPE[5]} from scratch)", "harness.train",
              "--framework", fws[0], "--data-root", j("k400"), "--out", j("train"), *TRAIN_DATA, *TRAIN_RECIPE)
        trained = _checkpoint(j("train"))
        weights = {fws[0]: trained}
        for fw in fws[1:]:
            weights[fw] = j("trained." + ("pth" if fw == "torch" else "ckpt"))
            _step(f"3c. convert the trained checkpoint for {fw}", "harness.convert", trained, weights[fw])
        for fw in fws:
            _step(f"3d. evaluate the trained network in {fw} (held-out split)", "harness.evaluate", "--framework",
                  fw, "--data-root", j("k400"), "--checkpoint", weights[fw], "--data-preset", "seed_eval",
                  *TRAIN_DATA, "--threads", "1", "--out", j("results", f"{fw}.json"), "-q")
        agreement = None
        if len(fws) == 2:
            _step("3e. compare the two runs", "harness.evaluate", "--compare", j("results", f"{fws[0]}.json"),
                  j("results", f"{fws[1]}.json"), "--json", j("agreement.json"))
            agreement = j("agreement.json")
        _step("4a. report", "harness.report", "--results", j("results"))
        _step("4b. report as a page", "harness.report", "--results", j("results"), "--format", "html",
              "--out", j("report.html"), "--plots", j("plots"))
        print(f"the report page: {j('report.html')}" + ("" if args.workdir else " (pass --workdir to keep it)"))
        videos = sorted(os.path.join(j("k400", "val"), f) for f in os.listdir(j("k400", "val")) if f.endswith(".mp4"))
        _step("5. infer: the top 5 of two held-out videos, drawn as a GIF", "harness.infer", "--framework", fws[-1],
              "--checkpoint", weights[fws[-1]], "--labels", j("train", "classes.txt"), "--data-preset",
              "seed_eval", *TRAIN_DATA, "--visualize",
              j("result.gif"), *videos[:2])
        _verdict({fw: j("results", f"{fw}.json") for fw in fws}, agreement)
    print("\ndemo: every step passed")
    return 0


def _checkpoint(out: str) -> str:
    """The last checkpoint harness.train wrote (its train.json names it)."""
    import json

    with open(os.path.join(out, "train.json")) as f:
        return os.path.join(out, json.load(f)["checkpoint"])


def _verdict(summaries: dict, agreement: Optional[str]) -> None:
    """A learned model, its accuracy against chance in every framework, the same predictions."""
    import json

    chance = 1.0 / CLASSES
    lines, learned = [], True
    for fw, path in summaries.items():
        with open(path) as f:
            s = json.load(f)
        lines.append(f"{fw} top-1 {100 * s['top1']:.1f}% on {s['n_videos']} held-out videos")
        learned = learned and s["top1"] is not None and s["top1"] > chance
    text = f"learned model: {', '.join(lines)} (chance {100 * chance:.0f}%)"
    if agreement:
        with open(agreement) as f:
            a = json.load(f)
        text += (f"; the frameworks agree on {100 * a['top1_agreement']:.1f}% of top-1 predictions, "
                 f"max |delta score| {a['max_abs_delta']:.2g}")
    print("\n" + text)
    if not learned:
        raise SystemExit("demo: the trained network is not better than chance on its held-out split")


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
