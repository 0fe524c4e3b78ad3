"""Convert I3D-NL weights between formats, losslessly.

    python -m harness.convert SRC DST [--from FMT] [--to FMT] [--arch PRESET]

Formats (FMT) are a container and a naming scheme:

    torch        .pth/.pt   torch.save'd state dict, canonical names (our PyTorch model's)
    ms           .ckpt      MindSpore checkpoint, our MindSpore model's names
    npz          .npz       numpy archive, canonical names
    safetensors  .safetensors  canonical names
    mmaction2    .pth       mmaction2's names (backbone.* / cls_head.*), v0.x and 1.x
    caffe2       .pkl       video-nonlocal-net blobs (needs the caffe2 scheme)
    mindvideo    .ckpt      the seed's zjut_mindvideo names (needs the mindvideo scheme)

The source's container is found from its content and its naming scheme from its keys
(``--from`` insists on one); the destination's from ``--to`` or its extension. Every
array is copied byte for byte, dtype kept, and the written file is read back and compared
before the command says it is done. ``--arch`` names the preset the weights belong to;
without it the presets whose names and shapes fit are found (presets that differ only in
their non-local function have identical weights; the first is reported).

Naming schemes are those of :data:`harness.checkpoints.SCHEMES`; writing a scheme uses
``from_canonical(arrays, cfg)`` of ``harness.checkpoints.<scheme module>``, so a scheme
registered there later is a format here too.

Exit status: 0 converted, 1 the read-back check failed, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from harness.cli import InputError, OneLineParser, run_main, setup_logging
from harness.files import check_output_path
from frameworks.spec.arch import PRESETS, I3DNLConfig, WeightMismatchError, get_preset, parameter_specs

log = logging.getLogger("harness.convert")


@dataclass(frozen=True)
class Format:
    container: str                  # a harness.checkpoints.io container
    scheme: Optional[str]           # naming scheme; None on reading: detect it from the keys
    write_scheme: str               # the names written
    extensions: Tuple[str, ...]     # what DST's extension implies (first match wins)
    help: str


FORMATS: Dict[str, Format] = {
    "torch": Format("torch", None, "canonical", (".pth", ".pt"), "torch.save state dict, canonical names"),
    "ms": Format("ckpt", None, "mindspore", (".ckpt",), "MindSpore .ckpt, our MindSpore model's names"),
    "npz": Format("npz", None, "canonical", (".npz",), "numpy .npz, canonical names"),
    "safetensors": Format("safetensors", None, "canonical", (".safetensors",), "canonical names"),
    "mmaction2": Format("torch", "mmaction2", "mmaction2", (), "mmaction2 .pth (backbone.*, cls_head.*)"),
    "caffe2": Format("pickle", "caffe2", "caffe2", (".pkl",), "video-nonlocal-net .pkl blobs"),
    "mindvideo": Format("ckpt", "mindvideo", "mindvideo", (), "the seed's zjut_mindvideo .ckpt"),
}
ALIASES = {"pt": "torch", "pytorch": "torch", "pth": "torch", "mindspore": "ms", "ckpt": "ms", "pkl": "caffe2"}
# the module of harness.checkpoints that writes a scheme's names, where it is not the scheme's own name
_SCHEME_MODULES = {"mindspore": "mindspore_ckpt"}


def format_name(text: str) -> str:
    name = ALIASES.get(text.lower(), text.lower())
    if name not in FORMATS:
        raise InputError(f"unknown format {text!r}; choose from {', '.join(FORMATS)}")
    return name


def format_for_path(path: str) -> str:
    lower = path.lower()
    for name, fmt in FORMATS.items():
        if fmt.extensions and lower.endswith(fmt.extensions):
            return name
    raise InputError(f"cannot tell the output format from {os.path.basename(path)!r}; pass --to "
                     f"({', '.join(FORMATS)})")


def renamer(scheme: str) -> Callable[[Dict[str, np.ndarray], I3DNLConfig], Dict[str, np.ndarray]]:
    """canonical -> ``scheme``'s names, from the scheme's module in harness.checkpoints."""
    if scheme == "canonical":
        return lambda arrays, cfg: dict(arrays)
    if scheme == "mindspore":
        from harness.checkpoints import mindspore_ckpt

        return lambda arrays, cfg: mindspore_ckpt.from_canonical(arrays)
    module_name = f"harness.checkpoints.{_SCHEME_MODULES.get(scheme, scheme)}"
    try:
        return importlib.import_module(module_name).from_canonical
    except (ImportError, AttributeError):
        raise InputError(f"writing {scheme} names is not supported yet ({module_name}.from_canonical "
                         "is missing)") from None


# ---------------------------------------------------------------------- reading
@dataclass
class Source:
    path: str
    container: str
    scheme: str
    cfg: I3DNLConfig
    arrays: Dict[str, np.ndarray]       # canonical, in parameter_specs order
    also_fits: List[str]
    sha256: str


def _num_classes(raw: Dict[str, np.ndarray], scheme: str, cfg: I3DNLConfig) -> Optional[int]:
    """The class count the file's classifier bias has, if the scheme can name it."""
    try:
        names = renamer(scheme)({"head.fc.bias": None}, cfg)
    except (InputError, KeyError):
        return None
    (foreign,) = names
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


def read_source(path: str, fmt: Optional[str], arch: Optional[str], depth: Optional[int] = None,
                num_classes: Optional[int] = None, *, trust: bool = False) -> Source:
    from harness.checkpoints import SCHEMES, CheckpointError, detect_scheme, to_canonical
    from harness.checkpoints.io import read_raw, sha256_file

    try:
        raw = read_raw(path, trust=trust)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    expected = FORMATS[fmt] if fmt else None
    if expected and raw.container != expected.container:
        raise InputError(f"--from {fmt} expects a {expected.container} file, but {path} is a {raw.container} file")
    scheme = expected.scheme if expected and expected.scheme else None
    try:
        scheme = scheme or detect_scheme(raw.arrays)
    except CheckpointError as exc:
        raise InputError(f"{path}: {exc}") from None
    if scheme not in SCHEMES:
        raise InputError(f"{fmt} weights are not supported yet (no {scheme!r} scheme in harness.checkpoints)")

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
        except KeyError as exc:  # the scheme has no name for a parameter of this preset
            errors.append((sys.maxsize, cfg, f"{scheme} names cannot express {cfg.name} ({exc.args[0]})"))
            continue
        except CheckpointError as exc:
            raise InputError(f"{path}: {exc}") from None
        fits.append((cfg, {k: canonical[k] for k in parameter_specs(cfg)}))
    if not fits:
        _, cfg, reason = min(errors, key=lambda e: e[0])
        where = f"arch {arch!r}" if arch else f"any arch preset (closest: {cfg.name})"
        raise InputError(f"{path} ({scheme} names) does not fit {where} at depth {cfg.depth}: {reason}")
    cfg, arrays = fits[0]
    others = [c for c, a in fits[1:] if c.depth == cfg.depth]
    for other, other_arrays in fits[1:]:
        if list(other_arrays) != list(arrays):
            raise InputError(f"{path} fits both {cfg.name} and {other.name} with different names; pass --arch")
    _check_dtypes(arrays, path)
    return Source(path, raw.container, scheme, cfg, arrays, [c.name for c in others], sha256_file(path))


def _check_dtypes(arrays: Dict[str, np.ndarray], path: str) -> None:
    """One floating dtype for every tensor: anything else is a damaged or foreign file."""
    dtypes: Dict[str, List[str]] = {}
    for name, value in arrays.items():
        dtypes.setdefault(str(np.asarray(value).dtype), []).append(name)
    if len(dtypes) > 1:
        counts = ", ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in sorted(dtypes.items(), key=lambda kv: len(kv[1])))
        raise InputError(f"{path}: dtype mismatch: the tensors mix dtypes: {counts}")
    (dtype,) = dtypes
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise InputError(f"{path}: dtype mismatch: weights are {dtype}, expected a floating-point dtype")


# ---------------------------------------------------------------------- writing
def write_destination(path: str, fmt: str, arrays: Dict[str, np.ndarray], cfg: I3DNLConfig) -> Dict[str, np.ndarray]:
    """Write canonical ``arrays`` as ``fmt``; returns what was written, by written name."""
    from harness.checkpoints.io import WRITERS

    target = FORMATS[fmt]
    named = renamer(target.write_scheme)(arrays, cfg)
    writer = WRITERS.get(target.container)
    if writer is None:
        raise InputError(f"writing {target.container} files is not supported yet")
    try:
        writer(path, named)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return named


def verify(path: str, written: Dict[str, np.ndarray]) -> List[str]:
    """Read ``path`` back; the names of arrays that are not byte-identical to ``written``."""
    from harness.checkpoints.io import read_raw

    back = read_raw(path).arrays
    bad = [k for k in written if k not in back]
    bad += [k for k in back if k not in written]
    for name, value in written.items():
        if name in back:
            got, want = np.asarray(back[name]), np.asarray(value)
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                bad.append(name)
    return bad


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.convert", description=__doc__,
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
    p.add_argument("--num-classes", type=int, help="classes (default: found from the classifier's shape)")
    from harness.checkpoints.safe_pickle import TRUST_HELP
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "SRC"))
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def convert(args) -> str:
    if args.arch is not None and args.arch not in PRESETS:
        raise InputError(f"unknown arch preset {args.arch!r}; choose from {', '.join(PRESETS)}")
    check_output_path(args.dst, "DST")
    src_format = format_name(args.src_format) if args.src_format else None
    dst_format = format_name(args.dst_format) if args.dst_format else format_for_path(args.dst)
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        raise InputError("SRC and DST are the same file")
    source = read_source(args.src, src_format, args.arch, args.depth, args.num_classes,
                         trust=getattr(args, "trust_checkpoint", False))
    written = write_destination(args.dst, dst_format, source.arrays, source.cfg)
    bad = verify(args.dst, written)
    dtype = next(iter(source.arrays.values())).dtype
    found = (f"read {args.src}: {source.scheme} names in a {source.container} file, arch {source.cfg.name} "
             f"(depth {source.cfg.depth}, {source.cfg.num_classes} classes), {len(source.arrays)} arrays of "
             f"{dtype}, sha256 {source.sha256[:12]}")
    if source.also_fits:
        found += f"; the same weights fit {', '.join(source.also_fits)} (pass --arch to say which)"
    if bad:
        raise VerificationError(f"{found}\nerror: {args.dst} does not read back byte-identical: {', '.join(bad[:5])}")
    target = FORMATS[dst_format]
    return (f"{found}\nwrote {args.dst}: {dst_format} ({target.write_scheme} names in a {target.container} file), "
            f"{len(written)} arrays, read back byte-identical")


class VerificationError(Exception):
    pass


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        try:
            print(convert(args))
        except VerificationError as exc:
            found, error = str(exc).split("\n", 1)
            print(found)
            print(error, file=sys.stderr)
            return 1
        return 0

    return run_main(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
