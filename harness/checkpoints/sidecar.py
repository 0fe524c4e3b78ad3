"""Which network a weight file belongs to, so that nobody has to pass ``--arch`` twice.

Presets that differ only in their non-local function (dot product, embedded Gaussian,
Gaussian without theta/phi aside) have identical parameter names and shapes, so a file
alone cannot say which graph it was trained on. ``harness.convert`` therefore writes
``DST.nlparity.json`` beside every file it writes: the arch preset, depth and class count
the weights were read as, and the source's digest. Commands that take ``--checkpoint``
use it (then a registry entry's arch, then the default) when ``--arch`` is not given,
and say where the arch came from.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from frameworks.spec.arch import PRESETS, I3DNLConfig, get_preset
from harness.files import atomic_write_json

SUFFIX = ".nlparity.json"


def sidecar_path(path: str) -> str:
    return path + SUFFIX


def write_sidecar(path: str, cfg: I3DNLConfig, source: str, source_sha256: str) -> str:
    doc = {"arch": cfg.name, "depth": cfg.depth, "num_classes": cfg.num_classes,
           "converted_from": os.path.basename(source), "source_sha256": source_sha256}
    atomic_write_json(sidecar_path(path), doc)
    return sidecar_path(path)


def read_sidecar(path: str) -> Optional[dict]:
    try:
        with open(sidecar_path(path)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("arch") in PRESETS else None


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
