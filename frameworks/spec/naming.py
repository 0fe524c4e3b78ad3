"""Rename tables: canonical parameter names <-> a foreign naming scheme.

A table is an ordered list of ``(canonical regex, foreign template)`` rules, tried in
order; the first that matches the whole canonical name gives the foreign name. Because
the canonical names of a config are known (:func:`frameworks.spec.arch.parameter_specs`),
both directions follow from the one table, and importing a foreign dict is strict: every
foreign key must be the image of exactly one canonical name.
"""
from __future__ import annotations

import re

import numpy as np
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, TypeVar

from frameworks.spec.arch import I3DNLConfig, WeightMismatchError, parameter_specs

V = TypeVar("V")


class RenameTable:
    def __init__(self, rules: Sequence[Tuple[str, str]], ignore: Iterable[str] = ()):
        """``rules``: canonical regex -> foreign template (``re`` replacement syntax).
        ``ignore``: regexes of foreign keys that carry no weights (counters, optimiser
        state, framework bookkeeping) and are dropped on import."""
        self.rules = [(re.compile(pattern), template) for pattern, template in rules]
        self.ignore = [re.compile(p) for p in ignore]

    def foreign_name(self, canonical: str) -> str:
        for pattern, template in self.rules:
            if pattern.fullmatch(canonical):
                return pattern.sub(template, canonical)
        raise KeyError(f"no rename rule for canonical name {canonical!r}")

    def mapping(self, cfg: I3DNLConfig) -> Dict[str, str]:
        """``{foreign name: canonical name}`` for every parameter of ``cfg``."""
        return {self.foreign_name(c): c for c in parameter_specs(cfg)}

    def is_ignored(self, foreign: str) -> bool:
        return any(p.fullmatch(foreign) for p in self.ignore)

    def to_canonical(self, foreign: Mapping[str, V], cfg: I3DNLConfig, context: str = "",
                     transform: Optional[Callable[[str, V], V]] = None) -> Dict[str, V]:
        """Rename ``foreign`` to canonical names, applying ``transform(canonical_name, value)``
        where layouts differ; strict about keys and shapes, naming foreign keys in errors."""
        table = self.mapping(cfg)
        kept = {k: v for k, v in foreign.items() if not self.is_ignored(k)}
        missing = [f for f in table if f not in kept]
        unexpected = [k for k in kept if k not in table]
        if missing or unexpected:
            raise WeightMismatchError(missing, unexpected, (), context)
        out = {}
        for f, c in table.items():
            out[c] = transform(c, kept[f]) if transform else kept[f]
        expected = parameter_specs(cfg)
        misshaped = [f"{f} {tuple(np.shape(out[c]))} != {expected[c]}" for f, c in table.items()
                     if tuple(np.shape(out[c])) != expected[c]]
        if misshaped:
            raise WeightMismatchError((), (), misshaped, context)
        return out

    def from_canonical(self, canonical: Mapping[str, V]) -> Dict[str, V]:
        return {self.foreign_name(c): v for c, v in canonical.items()}


# BatchNorm field names per framework, keyed by the canonical (PyTorch) field.
MINDSPORE_BN_FIELDS = {"weight": "gamma", "bias": "beta",
                       "running_mean": "moving_mean", "running_var": "moving_variance"}

# Our MindSpore model's parameter names. Its cell paths are the canonical module names, so
# only batch norm differs: MindSpore's BatchNorm3d wraps a ``bn2d`` whose parameters are
# ``gamma``/``beta``/``moving_mean``/``moving_variance``. Framework-free on purpose: the
# converters write and read ``.ckpt`` files with it where MindSpore is not installed.
_BN = r"(.+\.bn\d?)"  # stem.bn, res2.0.bn1, ...downsample.bn, ...non_local.bn
MINDSPORE_RENAME = RenameTable(
    [(rf"{_BN}\.{field}", rf"\1.bn2d.{ms_field}") for field, ms_field in MINDSPORE_BN_FIELDS.items()]
    + [(r"(.+)", r"\1")])   # every other name is the canonical one


def mindspore_names(cfg: I3DNLConfig) -> Dict[str, str]:
    """``{MindSpore parameter name: canonical name}`` for every parameter of ``cfg``."""
    return MINDSPORE_RENAME.mapping(cfg)

