"""Class labels: the Kinetics-400 map and the two orders in which codebases number it.

``K400_CLASSES`` is mmaction2's ``tools/data/kinetics/label_map_k400.txt``: the 400 class
names sorted alphabetically (case-insensitively; ``passing American football`` keeps its
capital). video-nonlocal-net numbers the classes the same way, so class ``i`` of an
mmaction2 or a Caffe2 checkpoint is ``K400_CLASSES[i]``. The list ships as
``k400_labels.txt`` beside this module, one name per line.

The seed (mindvideo) numbers classes in order of *first appearance* in
``kinetics-400_train.csv`` instead (``ParseKinetic400.load_cls_file``). For the official
CSV, which is sorted by label, both orders agree; for any other CSV they do not, and a
checkpoint evaluated under the wrong order scores at chance. :func:`first_appearance_order`
builds the seed's order; :class:`LabelMap` carries either one.

Kinetics spellings differ between releases and tools: ``air drumming`` (the CSVs),
``air_drumming`` (directory names), ``hurling_-sport-`` (decord / GluonCV, which turn
parentheses into dashes), quoted or not. :func:`canonical_label` maps all of them onto
the CSV spelling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

LABEL_FILE = Path(__file__).with_name("k400_labels.txt")
NUM_K400_CLASSES = 400
LABEL_ORDERS = ("alphabetical", "train_csv")


def _read_names(path: Path) -> Tuple[str, ...]:
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return names


K400_CLASSES: Tuple[str, ...] = _read_names(LABEL_FILE)
if len(K400_CLASSES) != NUM_K400_CLASSES:  # a damaged package must fail loudly, not mislabel
    raise RuntimeError(f"{LABEL_FILE} holds {len(K400_CLASSES)} names, expected {NUM_K400_CLASSES}")

# "hurling_-sport-" / "hurling -sport-" -> "hurling (sport)" (decord's and GluonCV's spelling)
_DASHED_PAREN = re.compile(r"[ _]-([^-]+)-$")


def canonical_label(name: str) -> str:
    """The CSV spelling of a class name: spaces, parentheses, case as in the label map.

    >>> canonical_label('"passing_American_football_-in_game-"')
    'passing American football (in game)'
    """
    text = name.strip().strip('"').strip("'").strip()
    text = _DASHED_PAREN.sub(lambda m: " (" + m.group(1) + ")", text)
    text = text.replace("_", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return text


def _key(name: str) -> str:
    return canonical_label(name).lower()


def first_appearance_order(labels: Iterable[str]) -> Tuple[str, ...]:
    """Class names in the order they first appear (the seed's numbering of its train CSV)."""
    order: List[str] = []
    seen = set()
    for label in labels:
        name = canonical_label(label)
        if name and name.lower() not in seen:
            seen.add(name.lower())
            order.append(name)
    return tuple(order)


@dataclass(frozen=True)
class LabelMap:
    """An ordered list of class names; ``index(name)`` accepts any spelling of a name."""

    names: Tuple[str, ...]
    order: str = "alphabetical"

    def __post_init__(self) -> None:
        keys = [_key(n) for n in self.names]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"duplicate class names in label map: {dup[:5]}")
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(keys)})

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return _key(name) in self._index  # type: ignore[attr-defined]

    def index(self, name: str) -> int:
        """Class id of ``name``; ``KeyError`` (with the canonical spelling) if unknown."""
        try:
            return self._index[_key(name)]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(canonical_label(name)) from None

    def get(self, name: str, default: Optional[int] = None) -> Optional[int]:
        return self._index.get(_key(name), default)  # type: ignore[attr-defined]

    def name(self, index: int) -> str:
        return self.names[index]

    def to_dict(self) -> dict:
        return {"order": self.order, "num_classes": len(self.names), "names": list(self.names)}

    @classmethod
    def k400(cls) -> "LabelMap":
        """mmaction2's (and video-nonlocal-net's) alphabetical Kinetics-400 numbering."""
        return cls(K400_CLASSES, "alphabetical")

    @classmethod
    def from_first_appearance(cls, labels: Iterable[str]) -> "LabelMap":
        """The seed's numbering: order of first appearance in its train CSV."""
        return cls(first_appearance_order(labels), "train_csv")

    @classmethod
    def from_file(cls, path, order: str = "file") -> "LabelMap":
        """A label map file (one name per line, class id = line number), as mmaction2 ships."""
        return cls(_read_names(Path(path)), order)


def k400_index(name: str) -> int:
    """Alphabetical Kinetics-400 class id of ``name`` (any spelling)."""
    return _K400.index(name)


def permutation(source: LabelMap, target: LabelMap) -> List[int]:
    """``perm[i]`` = id in ``target`` of class ``i`` of ``source``.

    Reorders a classifier trained under one numbering for evaluation under another
    (``logits_target[..., perm] = logits_source``). Raises ``KeyError`` naming the
    classes of ``source`` that ``target`` lacks.
    """
    missing = [n for n in source.names if n not in target]
    if missing:
        raise KeyError(f"{len(missing)} classes missing from target label map: {missing[:5]}")
    return [target.index(n) for n in source.names]


def check_names(names: Sequence[str]) -> List[str]:
    """Names (any spelling) that are not Kinetics-400 classes."""
    return [n for n in names if n not in _K400]


_K400 = LabelMap.k400()
