"""The Kinetics-400 index: which videos a split holds, where they are, and their labels.

Two annotation formats are read:

* the seed's layout (mindvideo ``Kinetic400``; also the CVDF mirror's)::

      <root>/kinetics-400_<split>.csv     label,youtube_id,time_start,time_end,split
      <root>/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4

  (``.mkv`` and ``.webm`` are accepted where no ``.mp4`` exists, as YouTube downloads
  often are), and
* mmaction2's list files, one ``<path> <label>`` per line, paths relative to a data
  prefix (``data/kinetics400/kinetics400_val_list_videos.txt``).

Faults are data. A row that names a missing or zero-byte file, an unknown label, or
has too few columns (or non-numeric times) is skipped and recorded as a :class:`Fault`
with its kind and reason; so is a duplicate row. Only a dataset root or an annotation
file that cannot be read at all raises :class:`DatasetError` (a command maps it to exit
2 with one line). Files that exist but do not decode are found later, by the loader.
:meth:`DatasetIndex.require_videos` turns an index with no usable video (a CSV with only
its header, every row refused) into one :class:`DatasetError` line naming why.

**Nothing outside the dataset root is read.** A row whose video lies outside the root
(``data_root``; for a list file its data prefix) is an ``outside_root`` fault of that video,
and the file is never opened: an id such as ``../../outside/x`` or a list-file path that is
absolute or climbs out with ``..`` is refused before the file system is asked, and a
symbolic link whose target lies outside the root is refused once resolved. A dataset whose
split folder is a link to another disk is refused video by video with the same reason;
``allow_outside_root=True`` (the commands' ``--allow-outside-root``) is the explicit opt-in
that reads such videos.

Text from the annotation file (class names, ids, rows) is escaped with
:func:`harness.text.printable` in every fault reason and error message, so a name holding
terminal escapes prints as its characters and cannot rewrite the screen.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from frameworks.spec.labels import LABEL_ORDERS, LabelMap, canonical_label
from harness.files import os_reason
from harness.text import printable

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")

# Fault kinds, in the order reports list them. ``short_video`` is a note, not a skip:
# mmaction2, the seed and Caffe2 all loop a video shorter than a clip, so it is used.
FAULT_KINDS = (
    "missing_file",
    "empty_file",
    "truncated",
    "not_a_video",
    "decode_error",
    "unknown_label",
    "bad_row",
    "duplicate_row",
    "worker_crash",
    "timeout",
    "outside_root",
    "short_video",
)
NOT_SKIPPED = ("short_video",)


class DatasetError(Exception):
    """The dataset root or its annotation file cannot be read: nothing to evaluate."""


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video. ``label`` is the class id under the index's label map."""

    video_id: str
    path: str
    label: int
    label_name: str = ""
    line: int = 0  # 1-based line in the annotation file


@dataclass(frozen=True)
class Fault:
    video_id: str
    kind: str
    reason: str
    skipped: bool = True

    def to_dict(self) -> dict:
        return {"id": self.video_id, "kind": self.kind, "reason": self.reason, "skipped": self.skipped}


@dataclass
class FaultLog:
    """Every fault of a run, in the order found; counts by kind."""

    faults: List[Fault] = field(default_factory=list)

    def add(self, video_id: str, kind: str, reason: str, skipped: Optional[bool] = None) -> Fault:
        """Record a fault; ``skipped`` defaults to True except for ``short_video``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        reason = printable(reason)   # the reason quotes a row or a decoder: never raw on a terminal
        fault = Fault(video_id, kind, reason, skipped=(kind not in NOT_SKIPPED) if skipped is None else skipped)
        self.faults.append(fault)
        log.debug("fault %s %s: %s", kind, video_id, reason)
        return fault

    def extend(self, faults: Iterable[Fault]) -> None:
        self.faults.extend(faults)

    def counts(self) -> Dict[str, int]:
        """``{kind: n}`` for every kind in :data:`FAULT_KINDS` (zeros included)."""
        c = Counter(f.kind for f in self.faults)
        return {kind: c.get(kind, 0) for kind in FAULT_KINDS}

    @property
    def n_skipped(self) -> int:
        return sum(1 for f in self.faults if f.skipped)

    def ids(self, kind: str) -> List[str]:
        return [f.video_id for f in self.faults if f.kind == kind]

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "n_skipped": self.n_skipped,
            "faults": [f.to_dict() for f in self.faults],
        }

    def summary(self) -> str:
        nonzero = {k: v for k, v in self.counts().items() if v}
        return ", ".join(f"{k}={v}" for k, v in nonzero.items()) or "none"


@dataclass
class DatasetIndex:
    """The usable videos of one split, plus the faults found while indexing."""

    records: List[VideoRecord]
    label_map: LabelMap
    faults: FaultLog
    split: str = ""
    root: str = ""
    annotation: str = ""
    source: str = ""  # "kinetics_csv" | "mmaction2_list"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def limit(self, n: Optional[int]) -> "DatasetIndex":
        """The first ``n`` records (all if ``n`` is None); faults are kept."""
        if n is None:
            return self
        return DatasetIndex(self.records[:n], self.label_map, self.faults, self.split, self.root,
                            self.annotation, self.source)

    def require_videos(self) -> "DatasetIndex":
        """This index, if it holds a video to run; otherwise :class:`DatasetError`, one line
        saying why: the annotation file lists none, or every row it lists was refused (the
        counts by kind and the first reason)."""
        if self.records:
            return self
        where = printable(self.annotation or self.root)
        listed = [f for f in self.faults.faults if f.kind != "duplicate_row"]
        if not listed:
            raise DatasetError(f"{where} lists no video: nothing to evaluate")
        first = listed[0]
        hint = ("; pass --allow-outside-root to read videos outside the dataset root"
                if first.kind == "outside_root" else "")
        raise DatasetError(f"no video of {where} can be read: {len(listed)} row{'s' * (len(listed) != 1)} listed, "
                           f"all refused "
                           f"({self.faults.summary()}; first: {printable(first.video_id, 80)}: {first.reason}){hint}")

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "root": self.root,
            "split": self.split,
            "annotation": self.annotation,
            "n_videos": len(self.records),
            "label_order": self.label_map.order,
            "num_classes": len(self.label_map),
            "faults": self.faults.to_dict(),
        }


# ---------------------------------------------------------------------------- helpers
def _check_root(root: Path) -> None:
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is a file, not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"dataset root {root} is not readable")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DatasetError(f"{what} {path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise DatasetError(f"{what} {printable(path)} cannot be read: {reason}") from None


def _resolve_video(directory: Path, stem: str) -> Optional[Path]:
    for ext in VIDEO_EXTENSIONS:
        candidate = directory / (stem + ext)
        if candidate.is_file():
            return candidate
    return None


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder == os.sep else folder + os.sep)


class _RootGuard:
    """Where a video may be read from: under the dataset root, as written (no absolute path,
    no ``..`` out of it) and once symbolic links are resolved; ``allow`` lifts both."""

    def __init__(self, root: Path, allow: bool):
        self.root = Path(root)
        self.lexical = os.path.normpath(os.path.abspath(root))
        self.real = os.path.realpath(root)
        self.allow = allow

    def written_outside(self, path: Path, video_id: str, faults: FaultLog) -> bool:
        """Before the file system is asked: the path as the annotation file writes it."""
        if self.allow or _under(os.path.normpath(os.path.abspath(path)), self.lexical):
            return False
        faults.add(video_id, "outside_root", f"its path {path} lies outside the dataset root {self.root}; "
                                             "not read (--allow-outside-root reads it)")
        return True

    def linked_outside(self, path: Path, video_id: str, faults: FaultLog) -> bool:
        """After: a symbolic link (the file, or a folder on its way) that leads out of the root."""
        real = os.path.realpath(path)
        if self.allow or _under(real, self.real):
            return False
        faults.add(video_id, "outside_root", f"{path} is a symbolic link to {real}, outside the dataset root "
                                             f"{self.root}; not read (--allow-outside-root reads it)")
        return True


def _check_file(path: Optional[Path], video_id: str, expected: Path, faults: FaultLog) -> bool:
    if path is None:
        faults.add(video_id, "missing_file", f"no file {expected}")
        return False
    try:
        size = path.stat().st_size
    except OSError as exc:
        faults.add(video_id, "missing_file", f"cannot stat {path}: {os_reason(exc)}")
        return False
    if size == 0:
        faults.add(video_id, "empty_file", f"{path} has zero bytes")
        return False
    return True


def _parse_time(text: str) -> int:
    value = float(text)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(text)
    return int(value)


def _numbered_rows(reader, first_line: int):
    """``(line number, row, error)`` for every record: a record the csv module cannot parse
    (a field over its 128 KiB limit, say) becomes an error on its line, not the end of the file."""
    line_no = first_line
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line_no, None, str(exc)
        else:
            yield line_no, row, None
        line_no += 1


def kinetics_video_id(youtube_id: str, time_start, time_end) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``, the seed's file stem."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def _csv_rows(path: Path):
    text = _read_text(path, "annotation file")
    lines = text.splitlines()
    if not lines:
        raise DatasetError(f"annotation file {path} is empty")
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise DatasetError(f"annotation file {path}: unreadable header ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"annotation file {printable(path)} lacks columns {missing} "
                           f"(header: {printable(','.join(header), 200)})")
    return header, reader


def read_label_order(root, order: str = "alphabetical") -> LabelMap:
    """The label map of a dataset: Kinetics-400 alphabetical, or the seed's numbering.

    The seed (``ParseKinetic400.load_cls_file``) numbers classes by first appearance in
    ``<root>/kinetics-400_train.csv`` and caches the result as ``<root>/cls2index.json``;
    when that cache exists it wins, as it does in the seed.
    """
    if order == "alphabetical":
        return LabelMap.k400()
    if order != "train_csv":
        raise ValueError(f"unknown label order {order!r}; choose from {LABEL_ORDERS}")
    cache = Path(root) / "cls2index.json"
    if cache.is_file():  # the seed writes this on first use and trusts it ever after
        try:
            mapping = json.loads(_read_text(cache, "class index file"))
            names = [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
        except (ValueError, AttributeError, TypeError) as exc:
            raise DatasetError(f"class index file {cache} is not a name -> id JSON object: {exc}") from None
        log.info("class order from %s (the seed's cache), not from the train CSV", cache)
        return LabelMap(tuple(canonical_label(n) for n in names), "train_csv")
    train_csv = Path(root) / "kinetics-400_train.csv"
    header, reader = _csv_rows(train_csv)
    if "label" not in header:
        raise DatasetError(f"{train_csv} has no label column, so it cannot define the class order")
    col = header.index("label")
    return LabelMap.from_first_appearance(row[col] for _, row, error in _numbered_rows(reader, 2)
                                          if not error and len(row) > col and row[col].strip())


# ---------------------------------------------------------------------------- readers
def read_kinetics_csv(
    root,
    split: str = "val",
    *,
    label_order: str = "alphabetical",
    label_map: Optional[LabelMap] = None,
    annotation=None,
    video_dir=None,
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """Index ``<root>/kinetics-400_<split>.csv`` and ``<root>/<split>/``.

    ``label_order`` picks the class numbering (``alphabetical``: mmaction2 / Caffe2;
    ``train_csv``: the seed's first appearance in the train CSV) unless ``label_map`` is
    given. A CSV without a ``label`` column (Kinetics' unlabelled test split) yields
    records with ``label = -1``. A video outside ``root`` is an ``outside_root`` fault unless
    ``allow_outside_root`` (see the module docstring).
    """
    root = Path(root)
    _check_root(root)
    guard = _RootGuard(root, allow_outside_root)
    csv_path = Path(annotation) if annotation else root / f"kinetics-400_{split}.csv"
    videos = Path(video_dir) if video_dir else root / split
    header, reader = _csv_rows(csv_path)
    if label_map is None:
        label_map = read_label_order(root, label_order)
    col = {name: header.index(name) for name in header}
    has_label = "label" in col
    if not has_label:   # the summary says so ("the split has no labels"): not a line of its own on stderr
        log.info("%s has no label column: records get label -1", csv_path)

    faults = FaultLog()
    records: List[VideoRecord] = []
    seen = set()
    for line_no, row, error in _numbered_rows(reader, 2):
        video_id = _csv_video_id(f"{csv_path.name}:{line_no}", row, error, col, len(header), faults)
        if video_id is None:
            continue
        if video_id in seen:
            faults.add(video_id, "duplicate_row", f"line {line_no} repeats an earlier row")
            continue
        seen.add(video_id)
        record = _csv_record(video_id, row[col["label"]] if has_label else None, line_no, label_map, videos, guard,
                             faults)
        if record is not None:
            records.append(record)
    _log_index(csv_path, records, faults)
    return DatasetIndex(records, label_map, faults, split, str(root), str(csv_path), "kinetics_csv")


def _csv_video_id(row_id: str, row: List[str], error, col: Dict[str, int], n_cols: int,
                  faults: FaultLog) -> Optional[str]:
    """The video id a CSV row names; None for a blank row, or a bad one (its fault recorded)."""
    if error:
        faults.add(row_id, "bad_row", f"unparseable CSV record: {error}")
        return None
    if not row or all(not c.strip() for c in row):
        return None
    if len(row) < n_cols:
        faults.add(row_id, "bad_row", f"{len(row)} columns, expected {n_cols}: {','.join(row)[:120]}")
        return None
    youtube_id = row[col["youtube_id"]].strip()
    try:
        start, end = _parse_time(row[col["time_start"]]), _parse_time(row[col["time_end"]])
    except ValueError:
        faults.add(row_id, "bad_row", f"non-integer time_start/time_end: {','.join(row)[:120]}")
        return None
    if not youtube_id:
        faults.add(row_id, "bad_row", "empty youtube_id")
        return None
    return kinetics_video_id(youtube_id, start, end)


def _csv_record(video_id: str, label_text: Optional[str], line_no: int, label_map: LabelMap, videos: Path,
                guard: _RootGuard, faults: FaultLog) -> Optional[VideoRecord]:
    """The record of a row's video: its label known (an unlabelled split: -1) and its file
    inside the root and readable; otherwise None, the fault recorded."""
    label, label_name = -1, ""
    if label_text is not None:
        label_name = canonical_label(label_text)
        label = label_map.get(label_name, -1)
        if label < 0:
            faults.add(video_id, "unknown_label", f"label '{label_name}' not in the {label_map.order} label map")
            return None
    expected = videos / f"{video_id}.mp4"
    if guard.written_outside(expected, video_id, faults):
        return None
    path = _resolve_video(videos, video_id)
    if not _check_file(path, video_id, expected, faults) or guard.linked_outside(path, video_id, faults):
        return None
    return VideoRecord(video_id, str(path), label, label_name, line_no)


def read_list_file(
    annotation,
    data_prefix=None,
    *,
    label_map: Optional[LabelMap] = None,
    split: str = "",
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """Index an mmaction2 list file (``<path> <label>`` per line, space-separated).

    Paths are joined to ``data_prefix`` (default: the list file's directory). Labels
    are class ids under ``label_map`` (default: Kinetics-400 alphabetical); an id
    outside it is an ``unknown_label`` fault, a line without a label or with extra
    fields a ``bad_row``. A path outside ``data_prefix`` (absolute, ``..``, or a symbolic link
    out of it) is an ``outside_root`` fault unless ``allow_outside_root``.
    """
    ann = Path(annotation)
    text = _read_text(ann, "annotation file")
    prefix = Path(data_prefix) if data_prefix is not None else ann.parent
    _check_root(prefix)
    guard = _RootGuard(prefix, allow_outside_root)
    label_map = label_map or LabelMap.k400()
    faults = FaultLog()
    records: List[VideoRecord] = []
    seen = set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split()
        row_id = f"{ann.name}:{line_no}"
        if len(parts) != 2:
            faults.add(row_id, "bad_row", f"{len(parts)} fields, expected '<path> <label>': {line.strip()[:120]}")
            continue
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            faults.add(row_id, "bad_row", f"label '{label_text}' is not an integer")
            continue
        # the path without its extension: two folders may hold files of one name (a/x.mp4, b/x.mp4)
        video_id = str(Path(rel).with_suffix(""))
        if rel in seen:
            faults.add(video_id, "duplicate_row", f"line {line_no} repeats an earlier row")
            continue
        seen.add(rel)
        if not 0 <= label < len(label_map):
            faults.add(video_id, "unknown_label", f"class id {label} outside [0, {len(label_map)})")
            continue
        path = prefix / rel
        if guard.written_outside(path, video_id, faults):
            continue
        if not _check_file(path if path.is_file() else None, video_id, path, faults) \
                or guard.linked_outside(path, video_id, faults):
            continue
        records.append(VideoRecord(video_id, str(path), label, label_map.name(label), line_no))
    _log_index(ann, records, faults)
    return DatasetIndex(records, label_map, faults, split, str(prefix), str(ann), "mmaction2_list")


def build_index(
    data_root,
    split: str = "val",
    *,
    annotations=None,
    label_order: str = "alphabetical",
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """The index a command asks for: an mmaction2 list file if ``annotations`` ends in
    ``.txt``, else the seed's CSV layout (with ``annotations`` overriding the CSV path).
    Videos outside ``data_root`` are ``outside_root`` faults unless ``allow_outside_root``."""
    if annotations is not None and str(annotations).endswith(".txt"):
        label_map = read_label_order(data_root, label_order) if label_order == "train_csv" else None
        return read_list_file(annotations, data_root, label_map=label_map, split=split,
                              allow_outside_root=allow_outside_root)
    return read_kinetics_csv(data_root, split, label_order=label_order, annotation=annotations,
                             allow_outside_root=allow_outside_root)


def _log_index(path: Path, records: Sequence[VideoRecord], faults: FaultLog) -> None:
    log.info("indexed %s: %d videos, faults: %s", path, len(records), faults.summary())
