"""Classify videos: the top classes of each, with probabilities, in PyTorch or MindSpore.

    python -m harness.infer --framework ms --checkpoint runs/ms/ckpt-004975.ckpt clip1.mp4 clip2.mp4
    python -m harness.infer --framework torch --checkpoint i3d_nl.pth --json out.json --visualize out.gif a.mp4

Each video goes through a data preset (default ``mmaction2_val``: one centred 32x2 clip,
short edge 256, centre crop 224; ``--data-preset`` / ``--data-override`` as evaluate takes
them), the network runs once per view, and the views' scores are combined as the preset
combines them; the top ``--top-k`` (default 5) classes are printed with their softmax
probabilities (which sum to at most 1 over the five).

Class names, in the checkpoint's own order: ``--labels FILE`` (one name per line), else the
classes a ``harness.train`` checkpoint carries (its meta, or ``classes.txt`` beside it),
else Kinetics-400's alphabetical order when the classifier has 400 outputs (mmaction2's,
Caffe2's, and the seed's, whose train-CSV order is the same for the official CSV), else
``class <i>``. ``--visualize OUT.gif`` draws every sampled frame of the first view with the
top predictions, as the seed's ``result.gif`` does. Without ``--checkpoint`` the network
has mmaction2's initialisation (seeded): the names it prints then mean nothing.
Exit status: 0 ok, 2 bad input (a missing or undecodable video, one line each).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig
from frameworks.spec.data_presets import DEFAULT_DATA_PRESET, PRESETS as DATA_PRESETS, DataPreset, get_data_preset
from harness.cli import (InputError, OneLineParser, add_device, add_ms_mode, add_verbose, positive_int, result_doc,
                         run_main, setup_logging, utc_now)
from harness.files import atomic_path, atomic_write_json, check_output_path
from harness.train import CLASSES_FILE   # what harness.train writes beside its checkpoints

GIF_MIN_SIDE = 256


def build_parser() -> argparse.ArgumentParser:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    p = OneLineParser(prog="python -m harness.infer", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument("--framework", required=True, help="torch/pt or mindspore/ms")
    p.add_argument("--checkpoint", help="weights (any format harness.convert reads, or a registry name)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file",
                                                                                      "--checkpoint"))
    p.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                   help=f"architecture preset (default: the checkpoint's, else {DEFAULT_PRESET})")
    p.add_argument("--num-classes", type=positive_int, help="default: the checkpoint classifier's outputs")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, in the checkpoint's order")
    p.add_argument("--data-preset", default=DEFAULT_DATA_PRESET, choices=list(DATA_PRESETS), metavar="NAME",
                   help=f"clip protocol (default {DEFAULT_DATA_PRESET}; one of {', '.join(DATA_PRESETS)})")
    p.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one field of the data preset (e.g. crop_size=64)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes shown per video (default 5)")
    p.add_argument("--json", metavar="OUT", help="write the predictions as JSON")
    p.add_argument("--visualize", metavar="OUT.gif", help="draw the sampled frames with the top predictions")
    add_device(p)
    add_ms_mode(p)
    p.add_argument("--threads", type=positive_int, help="framework threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --checkpoint")
    add_verbose(p)
    return p


@dataclass
class Prediction:
    video: str
    indices: List[int]
    probabilities: List[float]
    labels: List[str]
    views: int
    frames: Optional[np.ndarray] = None   # uint8 (T, H, W, 3): the first view, for the GIF

    def to_dict(self) -> dict:
        return {"video": self.video, "views": self.views,
                "top": [{"rank": i + 1, "index": int(k), "label": name, "probability": float(p)}
                        for i, (k, name, p) in enumerate(zip(self.indices, self.labels, self.probabilities))]}


# ----------------------------------------------------------------------------- labels and weights
def _checkpoint_classes(path: str, raw) -> Optional[List[str]]:
    """The class names a harness.train checkpoint carries (torch meta, or classes.txt beside it)."""
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), CLASSES_FILE)
    meta = raw.meta if path.endswith((".pth", ".pt")) else {}
    if isinstance(meta.get("classes"), list) and all(isinstance(c, str) for c in meta["classes"]):
        return list(meta["classes"])
    if os.path.isfile(beside):
        return _read_labels(beside)
    return None


def _read_labels(path: str) -> List[str]:
    try:
        names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --labels {path}: {exc}") from None
    if not names:
        raise InputError(f"{path} holds no class names")
    return names


def _file_classes(raw, cfg: I3DNLConfig) -> Optional[int]:
    """The outputs of the file's classifier (the length of its ``head.fc.bias``)."""
    from harness.checkpoints import detect_scheme, from_canonical
    from harness.checkpoints.io import CheckpointError

    try:
        (name,) = from_canonical({"head.fc.bias": None}, cfg, detect_scheme(raw.arrays))
    except (CheckpointError, KeyError):
        return None
    value = raw.arrays.get(name)
    return int(np.shape(value)[0]) if value is not None and np.ndim(value) == 1 else None


def resolve_network(args) -> Tuple[I3DNLConfig, Dict[str, np.ndarray], str, List[str], str]:
    """(config, canonical weights, what they are, class names, where the names came from)."""
    from frameworks.spec.labels import K400_CLASSES
    from frameworks.spec.train import initial_weights
    from harness.checkpoints import check_runnable, weights_from_raw
    from harness.checkpoints.io import read_raw
    from harness.checkpoints.registry import resolve
    from harness.checkpoints.sidecar import choose_arch

    choice = choose_arch(args.arch, args.checkpoint, DEFAULT_PRESET)
    cfg = choice.cfg
    path = resolve(args.checkpoint) if args.checkpoint else None
    raw = read_raw(path, trust=args.trust_checkpoint) if path else None   # read once: names, classes, weights
    names, names_from = None, ""
    if args.labels:
        names, names_from = _read_labels(args.labels), args.labels
    elif raw is not None:
        names = _checkpoint_classes(path, raw)
        names_from = "the checkpoint" if names else ""
    classes = args.num_classes
    if classes is None and raw is not None:
        classes = _file_classes(raw, cfg)
    if classes is None:
        classes = len(names) if names else cfg.num_classes
    cfg = cfg.replace(num_classes=classes)
    if names is None:
        if classes == len(K400_CLASSES):
            names, names_from = list(K400_CLASSES), "Kinetics-400, alphabetical"
        else:
            names, names_from = [f"class {i}" for i in range(classes)], "none known"
    if len(names) != classes:
        raise InputError(f"{len(names)} class names ({names_from}) for a classifier of {classes} outputs")
    if raw is not None:
        loaded = weights_from_raw(raw, path, cfg)
        check_runnable(loaded.arrays, args.checkpoint)
        return cfg, loaded.arrays, loaded.describe(), names, names_from
    arrays = initial_weights(cfg, args.seed)
    return cfg, arrays, f"untrained: mmaction2 initialisation (seed {args.seed}); the labels mean nothing", \
        names, names_from


# ----------------------------------------------------------------------------- inference
def probabilities(preset: DataPreset, view_outputs: np.ndarray, head: str) -> np.ndarray:
    """A video's class probabilities from its views' outputs, as the preset combines views."""
    score = preset.video_score(view_outputs, head)
    if head == "fc" and preset.clip_combine == "score":   # a mean of logits: softmax it
        z = score - score.max()
        return np.exp(z) / np.exp(z).sum()
    return score


def predict(runner, preset: DataPreset, cfg: I3DNLConfig, paths: Sequence[str], names: List[str], top_k: int,
            workers: int, keep_frames: bool) -> Tuple[List[Prediction], List[str]]:
    """Predictions for every video that decodes, and one line per video that does not."""
    from harness.data import ClipLoader, DatasetIndex, VideoRecord
    from harness.data.index import FaultLog
    from frameworks.spec.labels import LabelMap

    records = [VideoRecord(f"{i}:{Path(p).name}", os.path.abspath(p), 0) for i, p in enumerate(paths)]
    index = DatasetIndex(records, LabelMap(tuple(f"c{i}" for i in range(1))), FaultLog())
    loader = ClipLoader(index, preset, workers=workers, normalize=False)
    out = []
    for item in loader:
        views_uint8 = item.clips                          # (V, T, H, W, 3)
        logits = runner.forward(preset.normalize(views_uint8))
        probs = probabilities(preset, logits, cfg.head)
        k = min(top_k, len(probs))
        top = np.argsort(-probs, kind="stable")[:k]
        out.append(Prediction(paths[item.position], [int(i) for i in top], [float(probs[i]) for i in top],
                              [names[i] for i in top], int(views_uint8.shape[0]),
                              views_uint8[0] if keep_frames else None))
    faults = [f"{paths[int(f.video_id.split(':', 1)[0])]}: {f.kind} ({f.reason})" for f in loader.faults.faults
              if f.skipped]
    return out, faults


# ----------------------------------------------------------------------------- the GIF
def draw_gif(path: str, predictions: Sequence[Prediction], title: str, frame_ms: int = 120) -> int:
    """Every sampled frame of each video's first view, enlarged to at least 256 pixels a
    side, with the video's name and top predictions drawn on it; written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    images = []
    for pred in predictions:
        frames = pred.frames
        h, w = frames.shape[1:3]
        scale = max(1, int(np.ceil(GIF_MIN_SIDE / min(h, w))))
        lines = [f"{Path(pred.video).name}  ({title})"] + [f"{p * 100:5.1f}%  {name}" for name, p in
                                                           zip(pred.labels, pred.probabilities)]
        panel = 14 * len(lines) + 8
        for t, frame in enumerate(frames):
            image = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            canvas = Image.new("RGB", (image.width, image.height + panel), (0, 0, 0))
            canvas.paste(image, (0, 0))
            draw = ImageDraw.Draw(canvas)
            for i, text in enumerate(lines):
                draw.text((4, image.height + 4 + 14 * i), text, fill=(255, 255, 0) if i == 1 else (255, 255, 255),
                          font=font)
            draw.text((4, 4), f"frame {t + 1}/{len(frames)}", fill=(255, 255, 255), font=font)
            images.append(canvas)
    if not images:
        return 0
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return len(images)


# ----------------------------------------------------------------------------- the command
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    from harness.evaluate import built_runner, parse_overrides, with_overrides
    from harness.runners import canonical_framework

    for path, what in ((args.json, "--json"), (args.visualize, "--visualize")):
        if path:
            check_output_path(path, what)
    missing = [v for v in args.videos if not os.path.isfile(v)]
    if missing:
        raise InputError(f"no such video file: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                                 else ""))
    framework = canonical_framework(args.framework)
    if framework == "mmaction2":
        raise InputError("inference runs our implementations: --framework torch or ms")
    preset = get_data_preset(args.data_preset)
    overrides = parse_overrides(args.data_override, preset)
    preset = with_overrides(preset, overrides)
    cfg, arrays, weights_label, names, names_from = resolve_network(args)
    print(f"weights: {weights_label}", file=sys.stderr, flush=True)
    # the framework before any decoding: MindSpore aborts if decord entered the process first
    runner = built_runner(framework, cfg, arrays, args.device, args.threads, args.ms_mode)
    predictions, faults = predict(runner, preset, cfg, args.videos, names, args.top_k,
                                  workers=1 if framework == "ms" else 0, keep_frames=bool(args.visualize))
    for pred in predictions:
        print(f"{pred.video}: {framework} {cfg.name}, {preset.name} ({preset.protocol}), classes: {names_from}")
        for i, (name, p) in enumerate(zip(pred.labels, pred.probabilities)):
            print(f"  {i + 1}. {p:.4f}  {name}")
    if args.visualize and predictions:
        n = draw_gif(args.visualize, predictions, f"{framework} {cfg.name}")
        print(f"visualization: {args.visualize} ({n} frames)")
    if args.json:
        body = {"framework": framework, "arch": cfg.name, "num_classes": cfg.num_classes, "weights": weights_label,
                "checkpoint": args.checkpoint, "data_preset": preset.name, "data_override": overrides,
                "protocol": preset.protocol, "classes_from": names_from, "top_k": args.top_k,
                "predictions": [p.to_dict() for p in predictions], "failed": faults,
                "versions": runner.versions(), "hardware": runner.hardware(), "date": utc_now()}
        atomic_write_json(args.json, result_doc("inference", body))
    if faults:
        for line in faults[:-1]:
            print(f"error: {line}", file=sys.stderr)
        raise InputError(faults[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
