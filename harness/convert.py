"""Convert I3D-NL weights between formats, losslessly.

    python -m harness.convert SRC DST [--from FMT] [--to FMT] [--arch PRESET]

A format (FMT) is a container and a naming scheme, a row of
:data:`harness.checkpoints.formats.FORMATS` (listed below). The source's container is
found from its content and its naming scheme from its keys (``--from`` insists on one);
the destination's from ``--to`` or its extension. Every array is copied byte for byte,
dtype kept (one floating-point dtype for every tensor:
:func:`harness.checkpoints.formats.check_dtypes`), and the written file is read back and
compared before the command says it is done. ``--arch`` names the preset the weights
belong to; without it the presets whose names and shapes fit are found (presets that
differ only in their non-local function have identical weights; the first is reported).

What the weights mean travels with them in ``DST.nlparity.json``: the arch, the class names
in the classifier's order (``--labels FILE``, else the source's sidecar, its ``harness.train``
metadata or the ``classes.txt`` beside it) and the data preset it was trained or evaluated
on (the source's sidecar, else its registry entry). The source's integrity check is stated:
a MindSpore CRC or a zip's CRC-32s are verified (a mismatch is exit 2), and a file that
carries none is said to (a flipped bit inside its tensor data cannot be detected). DST is
never SRC, its sidecar or the labels file, whatever links lead there.

Exit status: 0 converted, 1 the read-back check failed, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import PRESETS, I3DNLConfig, WeightMismatchError, get_preset, parameter_specs
from harness.checkpoints import SchemeCannotName, detect_scheme, from_canonical, ignored_entries, to_canonical
from harness.checkpoints.formats import Format, check_dtypes, describe_formats, find_format, format_for_path
from harness.checkpoints.io import CheckpointError, describe_integrity, sha256_file
from harness.checkpoints.formats import read_raw
from harness.checkpoints.registry import registry_entry, resolve
from harness.checkpoints.sidecar import known_classes, read_labels, read_sidecar, sidecar_path, write_sidecar
from harness.errors import CheckFailed, InputError
from harness.cli import add_verbose, num_classes, OneLineParser, run_main, setup_logging
from harness.files import check_input_file, check_output_path
from harness.text import printable

log = logging.getLogger("harness.convert")


# ---------------------------------------------------------------------- reading
@dataclass
class Source:
    path: str
    container: str
    scheme: str
    cfg: I3DNLConfig
    arrays: Dict[str, np.ndarray]       # canonical, in parameter_specs order
    also_fits: List[str]                # other presets the same arrays fit
    sha256: str
    ignored: Dict[str, int] = field(default_factory=dict)   # entries dropped on import, by family
    arch_from: str = ""                 # where the arch came from when it was not found from the weights
    integrity: str = ""                 # the file's own check, as read: "crc32 ok", "none in file", ...
    meta: dict = field(default_factory=dict)                 # the file's metadata (harness.train's classes)

    def describe(self) -> str:
        dtype = next(iter(self.arrays.values())).dtype
        text = (f"read {printable(self.path)}: {self.scheme} names in a {self.container} file, arch {self.cfg.name} "
                f"(depth {self.cfg.depth}, {self.cfg.num_classes} classes), {len(self.arrays)} arrays of "
                f"{dtype}, sha256 {self.sha256[:12]}, integrity: {describe_integrity(self.integrity)}")
        if self.ignored:
            text += "; dropped " + ", ".join(f"{n} {family}" for family, n in self.ignored.items())
        if self.arch_from:
            text += f"; arch from {self.arch_from}"
        elif self.also_fits:
            text += f"; the same weights fit {', '.join(self.also_fits)} (pass --arch to say which)"
        return text


def _num_classes(raw: Dict[str, np.ndarray], scheme: str, cfg: I3DNLConfig) -> Optional[int]:
    """The class count the file's classifier bias has (every scheme names ``head.fc.bias``)."""
    (foreign,) = from_canonical({"head.fc.bias": None}, cfg, scheme)
    value = raw.get(foreign)
    return int(np.shape(value)[0]) if value is not None and np.ndim(value) == 1 else None


def _candidates(arch: Optional[str], depth: Optional[int], num_classes: Optional[int]) -> List[I3DNLConfig]:
    presets = [arch] if arch else list(PRESETS)
    out = []
    for name in presets:
        base = get_preset(name)
        for d in ([depth] if depth else [base.depth] + [x for x in (50, 101) if x != base.depth]):
            cfg = base.replace(depth=d)
            out.append(cfg.replace(num_classes=num_classes) if num_classes else cfg)
    return out


def read_source(path: str, fmt: Optional[Format] = None, arch: Optional[str] = None, depth: Optional[int] = None,
                num_classes: Optional[int] = None, *, trust: bool = False) -> Source:
    """Read ``path`` and find the preset its weights fit: canonical arrays and what was found."""
    raw = read_raw(path, trust=trust)
    if fmt is not None and raw.container != fmt.container.name:
        raise InputError(f"--from {fmt.name} expects a {fmt.container.name} file, but {path} is a "
                         f"{raw.container} file")
    try:
        scheme = fmt.read_scheme.name if fmt is not None and fmt.read_scheme else detect_scheme(raw.arrays)
    except CheckpointError as exc:
        raise InputError(f"{path}: {exc}") from None

    fits: List[Tuple[I3DNLConfig, Dict[str, np.ndarray]]] = []
    errors: List[Tuple[int, I3DNLConfig, str]] = []
    for cfg in _candidates(arch, depth, num_classes):
        if num_classes is None:
            found = _num_classes(raw.arrays, scheme, cfg)
            cfg = cfg.replace(num_classes=found) if found else cfg
        try:
            canonical = to_canonical(raw.arrays, cfg, scheme)
        except WeightMismatchError as exc:
            errors.append((len(exc.missing) + len(exc.unexpected) + len(exc.misshaped), cfg, str(exc)))
            continue
        except SchemeCannotName as exc:   # e.g. mindvideo names, which have no non-local output bias
            errors.append((sys.maxsize, cfg, str(exc)))
            continue
        fits.append((cfg, {k: canonical[k] for k in parameter_specs(cfg)}))
    if not fits:
        _, cfg, reason = min(errors, key=lambda e: e[0])
        where = f"arch {arch!r}" if arch else f"any arch preset (closest: {cfg.name})"
        raise InputError(f"{path} ({scheme} names) does not fit {where} at depth {cfg.depth}: {reason}")
    (cfg, arrays), others = fits[0], fits[1:]
    try:
        check_dtypes(arrays)
    except CheckpointError as exc:
        raise InputError(f"{path}: {exc}") from None
    return Source(path, raw.container, scheme, cfg, arrays, [c.name for c, _ in others], sha256_file(path),
                  ignored_entries(raw.arrays, scheme), integrity=raw.integrity, meta=raw.meta)


# ---------------------------------------------------------------------- writing
def write_destination(path: str, fmt: Format, arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    """Write canonical ``arrays`` as ``fmt``; returns what was written, by written name."""
    named = from_canonical(arrays, cfg, fmt.scheme.name)
    try:
        fmt.container.write(path, named)
    except OSError as exc:
        from harness.files import os_reason

        raise InputError(f"cannot write {printable(path)}: {os_reason(exc)}") from None
    return named


def verify(path: str, written: Dict[str, np.ndarray]) -> List[str]:
    """Read ``path`` back; the names of arrays that are not byte-identical to ``written``."""
    back = read_raw(path).arrays
    bad = [k for k in written if k not in back]
    bad += [k for k in back if k not in written]
    for name, value in written.items():
        if name in back:
            got, want = np.asarray(back[name]), np.asarray(value)
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                bad.append(name)
    return bad


@dataclass
class ConversionResult:
    source: Source
    dst: str
    format: Format
    written: Dict[str, np.ndarray]      # by written name
    mismatched: List[str]               # written arrays that did not read back byte-identical
    sidecar: str = ""                   # DST.nlparity.json: the arch the weights belong to
    classes: Optional[List[str]] = None   # the class names recorded there
    classes_from: str = ""
    data_preset: Optional[str] = None     # the data preset recorded there
    data_preset_from: str = ""

    def describe(self) -> str:
        """What was written (the read-back check passed)."""
        recorded = [f"arch {self.source.cfg.name}"]
        recorded.append(f"{len(self.classes)} class names (from {printable(self.classes_from)})" if self.classes
                        else "no class names (none known: pass --labels FILE)")
        if self.data_preset:
            recorded.append(f"data preset {printable(self.data_preset)} (from {printable(self.data_preset_from)})")
        return (f"wrote {printable(self.dst)}: {self.format.name} ({self.format.scheme.name} names in a "
                f"{self.format.container.name} file), {len(self.written)} arrays, read back byte-identical; "
                f"{', '.join(recorded)} recorded in {printable(os.path.basename(self.sidecar))}")


def _what_it_means(original_src: str, src: str, source: Source, labels: Optional[str]
                   ) -> Tuple[Optional[List[str]], str, Optional[str], str]:
    """(class names, where from, data preset, where from) for DST's sidecar."""
    if labels:
        names, names_from = read_labels(labels, "--labels"), labels
    else:
        names, names_from = known_classes(src, source.meta)
    if names is not None and len(names) != source.cfg.num_classes:
        raise InputError(f"{len(names)} class names ({printable(names_from)}) for a classifier of "
                         f"{source.cfg.num_classes} outputs")
    side, entry = read_sidecar(src), registry_entry(original_src)
    if side and side.get("data_preset"):
        return names, names_from, side["data_preset"], os.path.basename(sidecar_path(src))
    if entry is not None and entry.data_preset:
        return names, names_from, entry.data_preset, f"the registry entry {entry.name}"
    return names, names_from, None, ""


def convert(src: str, dst: str, src_format: Optional[str] = None, dst_format: Optional[str] = None,
            arch: Optional[str] = None, depth: Optional[int] = None, num_classes: Optional[int] = None,
            trust: bool = False, labels: Optional[str] = None) -> ConversionResult:
    """Convert ``src`` to ``dst`` and read it back. Bad input raises (``InputError``,
    ``CheckpointError``, ``OutputPathError``); a failed read-back is the result's
    ``mismatched``, for the caller to judge. ``labels``: a file of class names to record."""
    if arch is not None and arch not in PRESETS:
        raise InputError(f"unknown arch preset {arch!r}; choose from {', '.join(PRESETS)}")
    from harness.files import MadeFolders, undone_on_failure

    if os.path.isdir(dst):               # named for what it is, before its (missing) extension is
        check_output_path(dst, "DST")
    source_format = find_format(src_format) if src_format else None
    target = find_format(dst_format) if dst_format else format_for_path(dst)
    original_src = src
    src = resolve(src, what="SRC")        # a path (a folder or an unreadable file refused by name) or a registry name
    if labels:
        check_input_file(labels, "--labels")
    inputs = [original_src, src, sidecar_path(src), labels]
    with undone_on_failure(MadeFolders()) as made:    # a refused run leaves no folder behind
        made.check_path(dst, "DST", inputs=inputs)
        check_output_path(sidecar_path(dst), "DST's sidecar", inputs=inputs)
        return _convert(original_src, src, dst, source_format, target, arch, depth, num_classes, trust, labels)


def _convert(original_src: str, src: str, dst: str, source_format: Optional[Format], target: Format,
             arch: Optional[str], depth: Optional[int], num_classes: Optional[int], trust: bool,
             labels: Optional[str]) -> ConversionResult:
    arch_from = ""
    if arch is None:  # a registry entry or an earlier conversion may say which preset the weights are
        entry, side = registry_entry(original_src), read_sidecar(src)
        if entry is not None:
            arch, arch_from = entry.arch, f"the registry entry {entry.name}"
        elif side is not None:
            arch, arch_from = side["arch"], os.path.basename(sidecar_path(src))
    source = read_source(src, source_format, arch, depth, num_classes, trust=trust)
    source.arch_from = arch_from
    names, names_from, preset, preset_from = _what_it_means(original_src, src, source, labels)
    written = write_destination(dst, target, source.arrays, source.cfg)
    result = ConversionResult(source, dst, target, written, verify(dst, written))
    if not result.mismatched:  # the arch, the class names and the data preset travel with the weights
        result.sidecar = write_sidecar(dst, source.cfg, src, source.sha256, classes=names, data_preset=preset)
        result.classes, result.classes_from = names, names_from
        result.data_preset, result.data_preset_from = preset, preset_from
    return result


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.convert", description=__doc__ + "\nFormats:\n\n" + describe_formats(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="weights to read")
    p.add_argument("dst", metavar="DST", help="file to write")
    p.add_argument("--from", dest="src_format", metavar="FMT",
                   help="insist that SRC is this format (default: found from its content and keys)")
    p.add_argument("--to", dest="dst_format", metavar="FMT", help="format to write (default: from DST's extension)")
    p.add_argument("--arch", metavar="PRESET",
                   help=f"the architecture preset of the weights (default: the presets that fit; one of: "
                        f"{', '.join(PRESETS)})")
    p.add_argument("--depth", type=int, choices=[50, 101], help="ResNet depth (default: found from the weights)")
    p.add_argument("--num-classes", type=num_classes, help="classes (default: found from the classifier's shape)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line, in the classifier's order, recorded in DST's sidecar "
                        "(default: the source's, where it has them)")
    from harness.checkpoints.safe_pickle import TRUST_HELP
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "SRC"))
    add_verbose(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        result = convert(args.src, args.dst, args.src_format, args.dst_format, args.arch, args.depth,
                         args.num_classes, trust=args.trust_checkpoint, labels=args.labels)
        print(result.source.describe())
        if result.mismatched:
            raise CheckFailed(f"{printable(args.dst)} does not read back byte-identical: "
                              f"{printable(', '.join(result.mismatched[:5]))}")
        print(result.describe())
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
