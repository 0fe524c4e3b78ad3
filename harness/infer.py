"""Classify videos: the top classes of each, with probabilities, in PyTorch or MindSpore.

    python -m harness.infer --framework ms --checkpoint runs/ms/ckpt-004975.ckpt clip1.mp4 clip2.mp4
    python -m harness.infer --framework torch --checkpoint i3d_nl.pth --json out.json --visualize out.gif a.mp4

Each video goes through a data preset (default ``mmaction2_val``: one centred 32x2 clip,
short edge 256, centre crop 224; ``--data-preset`` / ``--data-override`` as evaluate takes
them), the network runs once per view, and the views' scores are combined as the preset
combines them; the top ``--top-k`` (default 5) classes are printed with their softmax
probabilities (which sum to at most 1 over the five).

Class names, in the checkpoint's own order: ``--labels FILE`` (one name per line), else the
names recorded with the weights (``CHECKPOINT.nlparity.json``, which ``harness.convert`` and
``harness.train`` write), else the classes a ``harness.train`` checkpoint carries (its meta,
or ``classes.txt`` beside it), else Kinetics-400's alphabetical order when the classifier
has 400 outputs (mmaction2's, Caffe2's, and the seed's, whose train-CSV order is the same
for the official CSV), else ``class <i>``. Names are printed with control characters
escaped. A ``note:`` line says when ``--data-preset`` is not the preset the checkpoint was
trained/evaluated on (its sidecar or registry entry). ``--visualize OUT.gif`` draws every
sampled frame of the first view with the top predictions, as the seed's ``result.gif``
does. Without ``--checkpoint`` the network has mmaction2's initialisation (seeded): the
names it prints then mean nothing. No output may be one of the inputs (a video, the
checkpoint, its sidecar, the labels file), or the other output.

Exit status: 0 ok; 1 a video's scores are not finite (NaN or inf: named, never printed as
probabilities); 2 bad input (a missing or undecodable video, a bad checkpoint or output
path): one line on stderr. What the decoders print is never shown (``-v`` shows it).
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, I3DNLConfig
from frameworks.spec.data_presets import DEFAULT_DATA_PRESET, PRESETS as DATA_PRESETS, DataPreset, get_data_preset
from harness.errors import CheckFailed, InputError
from harness.provenance import result_doc, utc_now
from harness.cli import (add_device, add_verbose, num_classes, OneLineParser, positive_int, run_main,
                         setup_logging)
from harness.runners import add_runner_arguments, names_help, runner_settings
from harness.files import atomic_path, atomic_write_json, check_input_file
from harness.text import printable

GIF_MIN_SIDE = 256


def build_parser() -> argparse.ArgumentParser:
    """The videos, the framework, the weights and the outputs first; the rest in groups."""
    from harness.checkpoints.safe_pickle import TRUST_HELP

    p = OneLineParser(prog="python -m harness.infer", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument("--framework", required=True, help=names_help("evaluates"))
    p.add_argument("--checkpoint", help="weights (any format harness.convert reads, or a registry name)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, in the checkpoint's order")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes shown per video (default 5)")
    p.add_argument("--json", metavar="OUT", help="write the predictions as JSON")
    p.add_argument("--visualize", metavar="OUT.gif", help="draw the sampled frames with the top predictions")
    net = p.add_argument_group("network and clip protocol")
    net.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file",
                                                                                        "--checkpoint"))
    net.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                     help=f"architecture preset (default: the checkpoint's, else {DEFAULT_PRESET})")
    net.add_argument("--num-classes", type=num_classes, help="default: the checkpoint classifier's outputs")
    net.add_argument("--data-preset", default=DEFAULT_DATA_PRESET, choices=list(DATA_PRESETS), metavar="NAME",
                     help=f"clip protocol (default {DEFAULT_DATA_PRESET}; one of {', '.join(DATA_PRESETS)})")
    net.add_argument("--data-override", action="append", default=[], metavar="FIELD=VALUE",
                     help="change one field of the data preset (e.g. crop_size=64)")
    net.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --checkpoint")
    run = p.add_argument_group("run")
    add_device(run)
    run.add_argument("--threads", type=positive_int, help="framework threads (default: all cores)")
    add_verbose(run)
    add_runner_arguments(p.add_argument_group("framework options"))
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


def resolve_network(args, path: Optional[str] = None) -> Tuple[I3DNLConfig, Dict[str, np.ndarray], str, List[str], str]:
    """(config, canonical weights, what they are, class names, where the names came from);
    ``path``: the checkpoint already resolved (``--checkpoint`` may be a registry name)."""
    from frameworks.spec.labels import K400_CLASSES
    from frameworks.spec.train import initial_weights
    from harness.checkpoints import check_runnable, weights_from_raw
    from harness.checkpoints.formats import read_raw
    from harness.checkpoints.registry import resolve
    from harness.checkpoints.sidecar import choose_arch, known_classes, read_labels

    choice = choose_arch(args.arch, args.checkpoint, DEFAULT_PRESET)
    cfg = choice.cfg
    if path is None and args.checkpoint:
        path = resolve(args.checkpoint, what="--checkpoint")
    raw = read_raw(path, trust=args.trust_checkpoint) if path else None   # read once: names, classes, weights
    names, names_from = None, ""
    if args.labels:
        names, names_from = read_labels(args.labels, "--labels"), args.labels
    elif raw is not None:
        names, names_from = known_classes(path, raw.meta)
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
        raise InputError(f"{len(names)} class names ({printable(names_from)}) for a classifier of {classes} outputs")
    if raw is not None:
        loaded = weights_from_raw(raw, path, cfg)
        check_runnable(loaded.arrays, args.checkpoint)
        return cfg, loaded.arrays, loaded.describe(), names, names_from
    arrays = initial_weights(cfg, args.seed)
    return cfg, arrays, f"untrained: mmaction2 initialisation (seed {args.seed}); the labels mean nothing", \
        names, names_from


# ----------------------------------------------------------------------------- inference
def probabilities(preset: DataPreset, view_outputs: np.ndarray, head: str) -> np.ndarray:
    """A video's class probabilities from its views' outputs, as the preset combines views
    (non-finite outputs give non-finite probabilities, silently: the caller refuses them)."""
    with np.errstate(all="ignore"):
        score = preset.video_score(view_outputs, head)
        if head == "fc" and preset.clip_combine == "score":   # a mean of logits: softmax it
            z = score - score.max()
            return np.exp(z) / np.exp(z).sum()
    return score


FAULT_WORDS = {"missing_file": "no such file", "empty_file": "the file is empty",
               "truncated": "truncated or damaged video data", "not_a_video": "not a video FFmpeg can open",
               "decode_error": "its frames do not decode", "worker_crash": "the decoder crashed on it",
               "timeout": "decoding it timed out", "outside_root": "outside the folders it may read"}


def describe_fault(video: str, kind: str, reason: str, verbose: bool = False) -> str:
    """A video that could not be used, in words; the decoder's own text only with ``-v``."""
    text = f"{printable(video)}: {FAULT_WORDS.get(kind, kind.replace('_', ' '))}"
    return f"{text} ({printable(reason)})" if verbose and reason else text


@dataclass
class Outcome:
    predictions: List[Prediction]
    unreadable: List[str]       # one description per video that could not be read
    non_finite: List[str]       # one description per video whose scores are NaN or inf


def predict(runner, preset: DataPreset, cfg: I3DNLConfig, paths: Sequence[str], names: List[str], top_k: int,
            workers: int, keep_frames: bool, verbose: bool = False) -> Outcome:
    """Predictions for every video that decodes and scores finitely; the others described."""
    from harness.data import ClipLoader, DatasetIndex, VideoRecord
    from harness.data.index import FaultLog
    from frameworks.spec.labels import LabelMap

    records = [VideoRecord(f"{i}:{Path(p).name}", os.path.abspath(p), 0) for i, p in enumerate(paths)]
    index = DatasetIndex(records, LabelMap(tuple(f"c{i}" for i in range(1))), FaultLog())
    loader = ClipLoader(index, preset, workers=workers, normalize=False)
    out, bad = [], []
    for item in loader:
        views_uint8 = item.clips                          # (V, T, H, W, 3)
        logits = np.asarray(runner.forward(preset.normalize(views_uint8)))
        probs = probabilities(preset, logits, cfg.head)
        video = paths[item.position]
        if not (np.isfinite(logits).all() and np.isfinite(probs).all()):
            n = int((~np.isfinite(probs)).sum())
            bad.append(f"{printable(video)}: the network's scores are not finite ({n} of {len(probs)} classes NaN "
                       "or inf; the weights overflow on this input)")
            continue
        k = min(top_k, len(probs))
        top = np.argsort(-probs, kind="stable")[:k]
        out.append(Prediction(video, [int(i) for i in top], [float(probs[i]) for i in top],
                              [names[i] for i in top], int(views_uint8.shape[0]),
                              views_uint8[0] if keep_frames else None))
    unreadable = [describe_fault(paths[int(f.video_id.split(':', 1)[0])], f.kind, f.reason, verbose)
                  for f in loader.faults.faults if f.skipped]
    return Outcome(out, unreadable, bad)


@contextmanager
def quiet_native_stderr(verbose: bool = False) -> Iterator[List[str]]:
    """File descriptor 2 points at a private file while the command works (FFmpeg, decord,
    MindSpore and oneDNN write there directly, and so do library warnings); yields a list
    that then holds the ``warning:`` / ``note:`` lines said meanwhile, for the caller to show
    once the run succeeds: a failed run says one line. With ``verbose`` everything said is
    shown as it was, on the way out."""
    import tempfile

    said: List[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read(1 << 20).decode("utf-8", "replace")
            if verbose and text:
                sys.stderr.write(text if text.endswith("\n") else text + "\n")
                sys.stderr.flush()
            else:
                said.extend(dict.fromkeys(ln for ln in text.splitlines() if ln.startswith(("warning: ", "note: "))))


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
        lines = [f"{printable(Path(pred.video).name)}  ({title})"] + [
            f"{p * 100:5.1f}%  {printable(name)}" for name, p in zip(pred.labels, pred.probabilities)]
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


def _inputs(args, made) -> Tuple[Optional[str], List[str]]:
    """Every input checked before any work (a folder, a missing or unreadable file named as
    such), and every output checked against them (``made``: the folders created for them,
    removed again if the run fails): (the checkpoint's path, the inputs)."""
    from harness.checkpoints.registry import resolve
    from harness.checkpoints.sidecar import CLASSES_FILE, sidecar_path

    missing = [v for v in args.videos if not os.path.lexists(v)]
    if missing:
        raise InputError(f"no such video file: {printable(missing[0])}" +
                         (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for video in args.videos:
        check_input_file(video, "video")
    if args.labels:
        check_input_file(args.labels, "--labels")
    path = resolve(args.checkpoint, what="--checkpoint") if args.checkpoint else None
    inputs = [*args.videos, args.labels, args.checkpoint, path]
    if path:
        inputs += [sidecar_path(path), os.path.join(os.path.dirname(os.path.abspath(path)), CLASSES_FILE)]
    if args.json:
        made.check_path(args.json, "--json", inputs=inputs)
    if args.visualize:
        made.check_path(args.visualize, "--visualize", inputs=inputs + [args.json])
    return path, inputs


def _main(args) -> int:
    from harness.files import MadeFolders, undone_on_failure

    with quiet_native_stderr(args.verbose) as said, undone_on_failure(MadeFolders()) as made:
        outcome = _run(args, made)     # a run refused before it wrote anything leaves no folder behind
    return _verdict(outcome, said)


def _run(args, made) -> "Outcome":
    from harness.checkpoints.sidecar import data_preset_note
    from harness.evaluate import built_runner, parse_overrides, with_overrides
    from harness.runners import require, runner_class

    framework = require(args.framework, "evaluates", "inference")
    path, _ = _inputs(args, made)
    preset = get_data_preset(args.data_preset)
    overrides = parse_overrides(args.data_override, preset)
    preset = with_overrides(preset, overrides)
    cfg, arrays, weights_label, names, names_from = resolve_network(args, path)
    note = data_preset_note(args.checkpoint, preset.name)
    if note:
        print(note, file=sys.stderr)     # captured: shown once the run succeeds
    # the framework before any decoding: MindSpore aborts if decord entered the process first
    runner = built_runner(framework, cfg, arrays, args.device, args.threads, runner_settings(args))
    outcome = predict(runner, preset, cfg, args.videos, names, args.top_k, workers=0 if runner_class(framework).decodes_beside else 1,
                      keep_frames=bool(args.visualize), verbose=args.verbose)
    print(f"weights: {weights_label}", flush=True)
    _print_predictions(outcome.predictions, framework, cfg, preset, names_from)
    if args.visualize and outcome.predictions:
        n = draw_gif(args.visualize, outcome.predictions, f"{framework} {cfg.name}")
        print(f"visualization: {printable(args.visualize)} ({n} frames)")
    if args.json:
        body = {"framework": framework, "arch": cfg.name, "num_classes": cfg.num_classes, "weights": weights_label,
                "checkpoint": args.checkpoint, "data_preset": preset.name, "data_override": overrides,
                "protocol": preset.protocol, "classes_from": names_from, "top_k": args.top_k,
                "predictions": [p.to_dict() for p in outcome.predictions],
                "failed": outcome.unreadable + outcome.non_finite, "notes": [note] if note else [],
                "versions": runner.versions(), "hardware": runner.hardware(), "date": utc_now()}
        atomic_write_json(args.json, result_doc("inference", body))
    return outcome


def _print_predictions(predictions: Sequence[Prediction], framework: str, cfg: I3DNLConfig, preset: DataPreset,
                       names_from: str) -> None:
    for pred in predictions:
        print(f"{printable(pred.video)}: {framework} {cfg.name}, {preset.name} ({preset.protocol}), "
              f"classes: {printable(names_from)}")
        for i, (name, p) in enumerate(zip(pred.labels, pred.probabilities)):
            print(f"  {i + 1}. {p:.4f}  {printable(name)}")


def _verdict(outcome: Outcome, said: Sequence[str]) -> int:
    """0 with the notes and warnings shown; else one line: exit 2 when a video could not be
    read, exit 1 when one scored NaN or inf."""
    problems = outcome.unreadable + outcome.non_finite
    if not problems:
        for line in said:
            print(line, file=sys.stderr)
        return 0
    first, more = problems[0], len(problems) - 1
    text = first + (f" (and {more} more video{'s' if more > 1 else ''}: see --json)" if more else "")
    if outcome.unreadable:
        raise InputError(text)
    raise CheckFailed(text)


if __name__ == "__main__":
    sys.exit(main())
