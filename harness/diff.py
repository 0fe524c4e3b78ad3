"""Your weights against the originals, parameter by parameter, whatever their formats.

    python -m harness.diff original.pth mine.ckpt
    python -m harness.diff i3d_nl_dot_product_r50_mmaction2 converted.npz --all --json diff.json

Both files are read as ``harness.convert`` reads them (any container, any naming scheme,
found from content), brought to canonical names, and compared tensor by tensor under the
rule layer parity uses: an element differs only if its error exceeds both
``atol x max|A's tensor|`` and ``rtol x |A's element|`` (a *scaled* tolerance: the atol is
a fraction of the tensor's own largest magnitude). A file that does not fit an arch
completely is still compared: its missing, extra (unknown) and mis-shaped tensors are
listed by name; optimiser state and counters are ignored and counted, as loading does.

Each row: the canonical name (and each file's own name for it where they differ), shape,
max |A|, max abs difference, that difference scaled by max |A|, the largest relative
difference, and a verdict: ``identical`` (bit for bit), ``within`` (tolerance), ``DIFFERS``,
``missing in A/B``, ``mis-shaped``, ``dtype``. Only rows that are not identical are printed
unless ``--all``. Exit status: 0 the files hold the same weights (within tolerance), 1 they
differ, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import PRESETS, I3DNLConfig, get_preset, parameter_specs
from harness.errors import InputError
from harness.provenance import result_doc
from harness.cli import add_verbose, OneLineParser, run_main, setup_logging, tolerance
from harness.checkpoints.io import describe_integrity
from harness.files import atomic_write_json
from harness.text import printable

DEFAULT_ATOL = 1e-6   # a conversion is lossless; float32 -> float16 -> float32 is ~5e-4
DEFAULT_RTOL = 1e-6


@dataclass
class CanonicalView:
    """A file's tensors under canonical names, as far as its names map onto an arch."""

    path: str
    container: str
    scheme: str
    cfg: I3DNLConfig
    arrays: Dict[str, np.ndarray]
    foreign: Dict[str, str]             # canonical -> the file's own name
    extra: List[str]                    # the file's names no canonical name maps to
    ignored: Dict[str, int]             # optimiser state / counters, by family
    complete: bool                      # every canonical name of cfg present, nothing extra
    sha256: str = ""
    integrity: str = ""                 # the file's own check as read ("crc32 ok", "none in file", ...)


def _mapping(cfg: I3DNLConfig, scheme: str) -> Optional[Dict[str, str]]:
    """``{foreign name: canonical name}`` for every parameter of ``cfg`` in ``scheme``."""
    from harness.checkpoints import from_canonical

    try:
        return from_canonical({c: c for c in parameter_specs(cfg)}, cfg, scheme)
    except (KeyError, ValueError):   # the scheme cannot name a parameter of this preset
        return None


def canonical_view(path: str, arch: Optional[str] = None, trust: bool = False, what: str = "checkpoint"
                   ) -> CanonicalView:
    from harness.checkpoints import SCHEMES, CheckpointError, detect_scheme, ignored_entries
    from harness.checkpoints.io import sha256_file
    from harness.checkpoints.formats import read_raw
    from harness.checkpoints.registry import resolve
    from harness.convert import read_source

    path = resolve(path, what=what)
    try:  # the strict reading: the file fits a preset, with each scheme's value transforms applied
        source = read_source(path, None, arch, trust=trust)
    except InputError:
        source = None
    raw = read_raw(path, trust=trust)
    if source is not None:
        mapping = _mapping(source.cfg, source.scheme) or {}
        return CanonicalView(path, raw.container, source.scheme, source.cfg, source.arrays,
                             {c: f for f, c in mapping.items()}, [], ignored_entries(raw.arrays, source.scheme),
                             True, source.sha256, raw.integrity)
    # not a complete fit: map what maps, with the scheme and onto the preset that explain most of it
    try:
        schemes = [detect_scheme(raw.arrays)]
    except CheckpointError:  # an odd key defeats detection: every scheme competes
        schemes = list(SCHEMES)
    candidates = [get_preset(arch)] if arch else [get_preset(p) for p in PRESETS]
    bias = next((v for k, v in raw.arrays.items() if k.endswith(("fc.bias", "dense.bias")) or k == "pred_b"), None)
    if bias is not None and np.ndim(bias) == 1:
        candidates = [cfg.replace(num_classes=int(np.shape(bias)[0])) for cfg in candidates]
    best = None
    for scheme in schemes:
        for cfg in candidates:
            mapping = _mapping(cfg, scheme)
            if mapping is None:
                continue
            extra = [k for k in raw.arrays if k not in mapping and not ignored_entries([k], scheme)]
            missing = [f for f in mapping if f not in raw.arrays]
            score = (len(extra) + len(missing), -sum(1 for f in mapping if f in raw.arrays))
            if best is None or score < best[0]:
                best = (score, scheme, cfg, mapping, extra)
    if best is None or best[0][1] == 0:
        raise InputError(f"{printable(path)}: no naming scheme maps its names onto {arch or 'an arch preset'}")
    _, scheme, cfg, mapping, extra = best
    arrays = {c: np.asarray(raw.arrays[f]) for f, c in mapping.items() if f in raw.arrays}
    return CanonicalView(path, raw.container, scheme, cfg, arrays, {c: f for f, c in mapping.items()}, extra,
                         ignored_entries(raw.arrays, scheme), False, sha256_file(path), raw.integrity)


@dataclass
class ParameterDiff:
    name: str
    verdict: str                 # identical | within | DIFFERS | missing in A | missing in B | mis-shaped | dtype
    shape: List[int] = field(default_factory=list)
    names: Dict[str, str] = field(default_factory=dict)   # each file's own name, where it differs
    max_ref: float = 0.0
    max_abs: float = 0.0
    scaled: float = 0.0
    max_rel: float = 0.0
    n_differ: int = 0
    note: str = ""

    @property
    def same(self) -> bool:
        return self.verdict in ("identical", "within")


def diff_arrays(name: str, a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> ParameterDiff:
    if a.shape != b.shape:
        return ParameterDiff(name, "mis-shaped", list(a.shape), note=f"A {list(a.shape)}, B {list(b.shape)}")
    if a.dtype != b.dtype:
        note = f"A {a.dtype}, B {b.dtype}"
    else:
        note = ""
    if a.dtype == b.dtype and a.tobytes() == b.tobytes():
        return ParameterDiff(name, "identical", list(a.shape), max_ref=float(np.abs(a).max()) if a.size else 0.0)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a64 - b64)
        mag = np.abs(a64)
    scale = float(mag.max()) if mag.size and np.isfinite(mag).all() else 0.0
    scale = scale if scale > 0 else 1.0
    significant = mag > 1e-12 * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        max_rel = float((d[significant] / mag[significant]).max()) if significant.any() else 0.0
        fails = ~((d <= atol * scale) | (d <= rtol * mag))      # NaN on either side fails
    verdict = "DIFFERS" if fails.any() else ("dtype" if note else "within")
    return ParameterDiff(name, verdict, list(a.shape), max_ref=float(np.nanmax(mag)) if mag.size else 0.0,
                         max_abs=float(np.nanmax(d)) if d.size else 0.0, scaled=float(np.nanmax(d)) / scale if d.size else 0.0,
                         max_rel=max_rel, n_differ=int(fails.sum()), note=note)


def diff_views(a: CanonicalView, b: CanonicalView, atol: float, rtol: float) -> List[ParameterDiff]:
    """Every canonical parameter of A's arch, in build order, then anything only B has."""
    order = list(parameter_specs(a.cfg))
    order += [n for n in list(a.arrays) + list(b.arrays) if n not in order]
    order = list(dict.fromkeys(order))
    rows = []
    for name in order:
        names = {side: view.foreign.get(name, name) for side, view in (("A", a), ("B", b))}
        names = {k: v for k, v in names.items() if v != name}
        if name not in a.arrays or name not in b.arrays:
            side = "A" if name not in a.arrays else "B"
            if name not in a.arrays and name not in b.arrays:
                continue
            rows.append(ParameterDiff(name, f"missing in {side}", names=names))
            continue
        row = diff_arrays(name, np.asarray(a.arrays[name]), np.asarray(b.arrays[name]), atol, rtol)
        row.names = names
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def format_diff(a: CanonicalView, b: CanonicalView, rows: List[ParameterDiff], show_all: bool,
                atol: float, rtol: float) -> str:
    lines = []
    for tag, view in (("A", a), ("B", b)):
        fit = "fits" if view.complete else "comes closest to"
        ignored = (f"; ignored {sum(view.ignored.values())} optimiser/counter entries "
                   f"({', '.join(f'{k} {v}' for k, v in view.ignored.items())})" if view.ignored else "")
        lines.append(f"{tag}: {printable(view.path)} ({view.scheme} names in a {view.container} file, sha256 "
                     f"{view.sha256[:12]}, integrity: {describe_integrity(view.integrity)}; {fit} {view.cfg.name})"
                     f"{printable(ignored)}")
    lines.append(f"an element differs if |B - A| > {atol:g} x max|A's tensor| and > {rtol:g} x |A's element| "
                 "(scaled tolerance)")
    head = f"{'parameter':<42} {'shape':<20} {'max|A|':>9} {'max abs':>9} {'abs/max':>9} {'max rel':>9}  verdict"
    lines += [head, "-" * len(head)]
    for r in rows:
        if r.verdict == "identical" and not show_all:
            continue
        numeric = r.verdict in ("identical", "within", "DIFFERS", "dtype")
        stats = (f"{_fmt(r.max_ref):>9} {_fmt(r.max_abs):>9} {_fmt(r.scaled):>9} {_fmt(r.max_rel):>9}" if numeric
                 else f"{'':>9} {'':>9} {'':>9} {'':>9}")
        extra = [f"{r.n_differ} elements differ"] if r.verdict == "DIFFERS" else []
        extra += [r.note] if r.note else []
        extra += [f"{k}: {printable(v)}" for k, v in r.names.items()] if r.verdict != "identical" else []
        lines.append(f"{printable(r.name):<42} {'x'.join(map(str, r.shape)):<20} {stats}  {r.verdict}"
                     + (f"  ({'; '.join(extra)})" if extra else ""))
    for tag, view in (("A", a), ("B", b)):
        if view.extra:
            shown = ", ".join(printable(k) for k in view.extra[:8]) + \
                (f" (+{len(view.extra) - 8} more)" if len(view.extra) > 8 else "")
            lines.append(f"only in {tag} (no canonical name): {shown}")
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    bad = [r for r in rows if not r.same] or a.extra or b.extra
    lines.append(f"{'DIFFERENT' if bad else 'SAME'}: {len(rows)} parameters: {summary}"
                 + (f"; first: {printable(next(r.name for r in rows if not r.same))}"
                    if any(not r.same for r in rows) else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from harness.checkpoints.safe_pickle import TRUST_HELP

    p = OneLineParser(prog="python -m harness.diff", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="reference weights: a file in any format, or a fetched registry name")
    p.add_argument("b", metavar="B", help="weights to check against A")
    p.add_argument("--arch", choices=list(PRESETS), metavar="PRESET",
                   help="the arch preset both belong to (default: the one A fits, else the one it comes closest to)")
    p.add_argument("--atol", type=tolerance, default=DEFAULT_ATOL,
                   help=f"scaled absolute tolerance: a fraction of each tensor's max |A| (default {DEFAULT_ATOL:g})")
    p.add_argument("--rtol", type=tolerance, default=DEFAULT_RTOL,
                   help=f"relative tolerance per element (default {DEFAULT_RTOL:g}); an element differs only if "
                        "it exceeds both")
    p.add_argument("--all", action="store_true", help="print identical parameters too (default: only the others)")
    p.add_argument("--json", metavar="OUT", help="write every row as JSON")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "A and B"))
    add_verbose(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_main(lambda: _main(args), args.verbose)


def _main(args) -> int:
    from harness.checkpoints.registry import resolve
    from harness.files import MadeFolders, undone_on_failure

    paths = [resolve(args.a, what="A"), resolve(args.b, what="B")]   # a folder or an unreadable file: named
    with undone_on_failure(MadeFolders()) as made:    # a refused run leaves no folder behind
        if args.json:
            made.check_path(args.json, "--json", inputs=[args.a, args.b, *paths])
        return _compare(args)


def _compare(args) -> int:
    a = canonical_view(args.a, args.arch, args.trust_checkpoint, what="A")
    b = canonical_view(args.b, args.arch or (a.cfg.name if a.complete else None), args.trust_checkpoint, what="B")
    if not a.complete and b.complete:   # compare on the arch the complete file fits
        a = canonical_view(args.a, b.cfg.name, args.trust_checkpoint, what="A")
    rows = diff_views(a, b, args.atol, args.rtol)
    print(format_diff(a, b, rows, args.all, args.atol, args.rtol))
    same = all(r.same for r in rows) and not a.extra and not b.extra
    if args.json:
        atomic_write_json(args.json, result_doc("weights_diff", {
            "a": {"path": a.path, "sha256": a.sha256, "scheme": a.scheme, "container": a.container,
                  "arch": a.cfg.name, "complete": a.complete, "extra": a.extra, "ignored": a.ignored,
                  "integrity": a.integrity},
            "b": {"path": b.path, "sha256": b.sha256, "scheme": b.scheme, "container": b.container,
                  "arch": b.cfg.name, "complete": b.complete, "extra": b.extra, "ignored": b.ignored,
                  "integrity": b.integrity},
            "atol": args.atol, "rtol": args.rtol, "same": same,
            "first_difference": next((r.name for r in rows if not r.same), None),
            "parameters": [r.__dict__ for r in rows]}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
