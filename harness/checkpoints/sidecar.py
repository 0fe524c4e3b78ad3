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


def data_preset_note(path: Optional[str], used: str) -> Optional[str]:
    """One ``note:`` line when a run uses a data preset other than the one ``path``'s sidecar
    records; None when they agree or nothing is recorded."""
    recorded = sidecar_data_preset(path) if path and os.path.isfile(path) else None
    if recorded and recorded != used:
        from harness.text import printable

        return (f"note: data preset {printable(used)} differs from {printable(recorded)}, the one "
                f"{printable(os.path.basename(path))} was trained/evaluated on (its {SUFFIX} sidecar)")
    return None


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
