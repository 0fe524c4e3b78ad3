"""Which network a weight file belongs to, so that nobody has to pass ``--arch`` twice.

Presets that differ only in their non-local function (dot product, embedded Gaussian,
Gaussian without theta/phi aside) have identical parameter names and shapes, so a file
alone cannot say which graph it was trained on. ``harness.convert`` therefore writes
``DST.nlparity.json`` beside every file it writes: the arch preset, depth and class count
the weights were read as, and the source's digest. Commands that take ``--checkpoint``
use it (then a registry entry's arch, then the default) when ``--arch`` is not given,
and say where the arch came from.

The sidecar also carries what the weights mean: the class names, in the classifier's
order (``classes``), and the data preset the model was trained or evaluated on
(``data_preset``). ``harness.convert`` copies both from the source's sidecar (or takes the
names from ``--labels``), ``harness.train`` writes them, and ``harness.infer`` reads them, so
a converted checkpoint prints the names its source printed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from frameworks.spec.arch import PRESETS, I3DNLConfig, get_preset
from harness.files import atomic_write_json

SUFFIX = ".nlparity.json"
CLASSES_FILE = "classes.txt"   # what harness.train writes beside its checkpoints (one name a line)
# a labels file of more bytes than this is not a list of class names (100,000 classes x 64 bytes)
MAX_LABELS_BYTES = 8 << 20
MAX_SIDECAR_BYTES = 64 << 20


def sidecar_path(path: str) -> str:
    return path + SUFFIX


def write_sidecar(path: str, cfg: I3DNLConfig, source: str, source_sha256: str = "", *,
                  classes: Optional[Sequence[str]] = None, data_preset: Optional[str] = None) -> str:
    """Write ``path``'s sidecar atomically: the arch it is, what it was made from, and (when
    known) its class names in the classifier's order and the data preset it was trained or
    evaluated on. Names whose count is not the classifier's are refused (ValueError)."""
    doc = {"arch": cfg.name, "depth": cfg.depth, "num_classes": cfg.num_classes,
           "converted_from": os.path.basename(source), "source_sha256": source_sha256}
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(classes) != cfg.num_classes:
            raise ValueError(f"{len(classes)} class names for a classifier of {cfg.num_classes} outputs")
        doc["classes"] = classes
    if data_preset is not None:
        doc["data_preset"] = str(data_preset)
    atomic_write_json(sidecar_path(path), doc)
    return sidecar_path(path)


def read_sidecar(path: str) -> Optional[dict]:
    """The sidecar of ``path`` as a dict, or None where there is none (or it is not one of
    ours). ``classes`` and ``data_preset`` are present only where they are well formed: a list
    of strings as long as ``num_classes``, and a string."""
    try:
        if os.path.getsize(sidecar_path(path)) > MAX_SIDECAR_BYTES:
            return None    # not one we wrote: 100,000 class names are a few megabytes
        with open(sidecar_path(path), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("arch") not in PRESETS:
        return None
    classes = doc.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                                    and classes and (not isinstance(doc.get("num_classes"), int)
                                                     or len(classes) == doc["num_classes"])):
        doc.pop("classes")
    if doc.get("data_preset") is not None and not isinstance(doc["data_preset"], str):
        doc.pop("data_preset")
    return doc


def sidecar_classes(path: str) -> Optional[List[str]]:
    """The class names ``path``'s sidecar records, in the classifier's order, or None."""
    doc = read_sidecar(path)
    return list(doc["classes"]) if doc and doc.get("classes") else None


def sidecar_data_preset(path: str) -> Optional[str]:
    """The data preset ``path``'s sidecar records (trained or evaluated on), or None."""
    doc = read_sidecar(path)
    return doc.get("data_preset") if doc else None


def evaluation_presets_of(name: str) -> List[str]:
    """The evaluation presets that match data preset ``name``: itself for an evaluation
    preset; for a training pipeline (``seed_train``), the evaluation presets that sample,
    resize, scale and order labels as it does (``seed_eval``)."""
    from frameworks.spec.data_presets import PRESETS as EVAL, TRAIN_PRESETS

    if name in EVAL:
        return [name]
    train = TRAIN_PRESETS.get(name)
    if train is None:
        return []
    same = ("clip_len", "frame_interval", "short_edge", "interpolation", "value_scale", "mean", "std",
            "normalize_op", "label_order", "channel_order")
    return [e.name for e in EVAL.values() if all(getattr(e, f) == getattr(train, f) for f in same)]


def recorded_data_preset(checkpoint: Optional[str]) -> "tuple[Optional[str], str]":
    """(the data preset ``checkpoint`` was trained/evaluated on, where that is recorded): a
    registry name's entry, else the file's sidecar; (None, "") when nothing is recorded."""
    if not checkpoint:
        return None, ""
    from harness.checkpoints.registry import registry_entry

    entry = registry_entry(checkpoint)
    if entry is not None:
        return (entry.data_preset or None), f"the registry entry {entry.name}"
    if os.path.isfile(checkpoint):
        preset = sidecar_data_preset(checkpoint)
        return (preset, os.path.basename(sidecar_path(checkpoint))) if preset else (None, "")
    return None, ""


def data_preset_note(checkpoint: Optional[str], used: str) -> Optional[str]:
    """One ``note:`` line when a run uses a data preset other than the one ``checkpoint`` (a
    path or a registry name) was trained/evaluated on, as its sidecar or registry entry
    records (a training pipeline recorded there matches its evaluation presets); None when
    they agree or nothing is recorded."""
    recorded, where = recorded_data_preset(checkpoint)
    if not recorded or recorded == used or used in evaluation_presets_of(recorded):
        return None
    from harness.text import printable

    matching = [p for p in evaluation_presets_of(recorded) if p != recorded]
    also = f" (whose evaluation protocol is {', '.join(matching)})" if matching else ""
    return (f"note: data preset {printable(used)} differs from {printable(recorded)}{also}, the one "
            f"{printable(os.path.basename(checkpoint))} was trained/evaluated on ({printable(where)}); "
            "pass --data-preset to match it")


def read_labels(path: str, what: str = "--labels") -> List[str]:
    """Class names from a text file, one a line (blank lines skipped): the one reader every
    command uses. A folder, a missing or unreadable file, a file too large to be a list of
    names, one that is not UTF-8, or one with no names is refused in one line (ValueError
    subclasses that the commands map to exit 2)."""
    from harness.checkpoints.io import CheckpointError
    from harness.files import check_input_file, os_reason
    from harness.text import printable

    check_input_file(path, what)
    try:
        if os.path.getsize(path) > MAX_LABELS_BYTES:
            raise CheckpointError(f"{what} {printable(path)} is {os.path.getsize(path):,} bytes: not a list of "
                                  f"class names (at most {MAX_LABELS_BYTES:,})")
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {printable(path)}: {os_reason(exc)}") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} {printable(path)} is not UTF-8 text (byte {exc.start}): not a list of "
                              "class names") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise CheckpointError(f"{what} {printable(path)} holds no class names")
    return names


def known_classes(path: str, meta: Optional[dict] = None) -> "tuple[Optional[List[str]], str]":
    """The class names a weight file is known to have, in its classifier's order, and where
    they were found: its sidecar, then the ``classes`` of its metadata (``harness.train``'s
    torch checkpoints), then the ``classes.txt`` beside it; (None, "") when none is known."""
    names = sidecar_classes(path)
    if names:
        return names, os.path.basename(sidecar_path(path))
    meta = meta or {}
    if isinstance(meta.get("classes"), list) and meta["classes"] and all(isinstance(c, str) for c in meta["classes"]):
        return list(meta["classes"]), "the checkpoint's metadata"
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), CLASSES_FILE)
    if os.path.isfile(beside):
        return read_labels(beside, "the class names file"), beside
    return None, ""


@dataclass
class ArchChoice:
    cfg: I3DNLConfig
    source: str                       # "--arch", "the registry entry X", "X.nlparity.json", "the default"
    published: Optional[str] = None   # the registry entry's arch, when --arch overrides it

    def note(self) -> Optional[str]:
        if self.published and self.published != self.cfg.name:
            return f"note: --arch {self.cfg.name} differs from the published protocol of this checkpoint " \
                   f"({self.published})"
        return None


def choose_arch(arch: Optional[str], checkpoint: Optional[str], default: str, **overrides) -> ArchChoice:
    """``--arch`` if given, else the checkpoint's registry entry, else its sidecar, else the
    default; ``overrides`` (depth, num_classes) are applied where given (not None)."""
    from harness.checkpoints.registry import registry_entry

    overrides = {k: v for k, v in overrides.items() if v is not None}
    entry = registry_entry(checkpoint) if checkpoint else None
    side = read_sidecar(checkpoint) if checkpoint and entry is None and os.path.isfile(checkpoint) else None
    if arch:
        return ArchChoice(get_preset(arch, **overrides), "--arch", entry.arch if entry else None)
    if entry is not None:
        return ArchChoice(get_preset(entry.arch, **overrides), f"the registry entry {entry.name}")
    if side is not None:
        found = {k: side[k] for k in ("depth", "num_classes") if isinstance(side.get(k), int)}
        return ArchChoice(get_preset(side["arch"], **{**found, **overrides}), os.path.basename(sidecar_path(checkpoint)))
    return ArchChoice(get_preset(default, **overrides), "the default")
