"""Layer-by-layer comparison of saved outputs; imports no framework.

Tolerance rule (Polygraphy's, made scale-free): an element fails only if its error
exceeds *both* ``atol * max|reference layer|`` and ``rtol * |reference element|``.
Scaling ``atol`` by the layer's own magnitude lets one number serve a stem whose values
are O(1) and logits that are O(10), and makes "1e-5 of the layer's max |value|"
(how framework noise is usually quoted) the literal meaning of ``--atol 1e-5``.

Default ``atol`` is per stage (:data:`DEFAULT_STAGE_ATOL`), because float32 rounding
compounds with depth: MindSpore 2.10 vs PyTorch 2.13 on CPU, all seven presets, seeded
well-conditioned random weights (three seeds at 1x3x8x64x64, one at 1x3x32x224x224), the
smallest scaled ``atol`` that passed at ``rtol`` 1e-5 was at worst 8e-7 (stem), 1.7e-6
(res2), 3.6e-6 (res3), 1.8e-5 (res4), 3.8e-5 (res5, the Gaussian non-local preset),
1.1e-5 (pool) and 7.7e-6 (logits); PyTorch float32 against float64 measured the same
sizes (so this is float32 itself, not MindSpore). The defaults are 3-6x those worst
cases; ``atol=`` (``--atol``) replaces them with one number for every layer.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

DEFAULT_RTOL = 1e-5
# canonical layer (or stage prefix) -> scaled atol; see the module docstring for the measurements
DEFAULT_STAGE_ATOL = {"stem": 5e-6, "pool1": 5e-6, "res2": 1e-5, "pool2": 1e-5, "res3": 2e-5,
                      "res4": 5e-5, "res5": 1e-4, "pool": 5e-5, "logits": 3e-5}
DEFAULT_ATOL = DEFAULT_STAGE_ATOL["logits"]  # for a single output compared on its own


def default_atol(name: str) -> float:
    """The default scaled atol of a canonical layer (``res4.3.non_local`` -> the res4 value)."""
    stage = name.split(".", 1)[0]
    return DEFAULT_STAGE_ATOL.get(name, DEFAULT_STAGE_ATOL.get(stage, DEFAULT_ATOL))


@dataclass
class LayerComparison:
    name: str
    shape: List[int]
    ref_max: float
    max_abs: float
    max_rel: float           # max |d| / |ref| over elements with |ref| > 1e-6 max|ref|
    scaled_max_abs: float    # max |d| / max|ref|
    mean_abs: float
    cosine: float
    within: float            # fraction of elements inside the tolerance
    min_atol: float          # smallest (scaled) atol that passes at the given rtol
    atol: float
    rtol: float
    passed: bool
    note: str = ""
    non_finite_ref: int = 0  # NaN / inf elements on each side
    non_finite_got: int = 0
    floor: Optional[float] = None  # --noise-floor: the reference's own float32 error (scaled) against float64
    flag: str = ""                 # e.g. an isolated error far above its stage's (still within tolerance)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def failed(cls, name: str, shape, atol: float, rtol: float, note: str,
               ref_max: float = float("nan"), non_finite_ref: int = 0, non_finite_got: int = 0
               ) -> "LayerComparison":
        """A layer that could not be compared element by element (missing, mis-shaped, NaN)."""
        inf = float("inf")
        return cls(name, list(shape), ref_max, inf, inf, inf, inf, float("nan"), 0.0, inf, atol, rtol, False,
                   note=note, non_finite_ref=non_finite_ref, non_finite_got=non_finite_got)


@dataclass
class ParityReport:
    reference: str
    candidate: str
    layers: List[LayerComparison]
    atol: Optional[float]    # None: the per-stage defaults (each layer records its own)
    rtol: float
    logits: Dict[str, float] = field(default_factory=dict)
    mode: str = "propagated"

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    @property
    def first_failure(self) -> Optional[str]:
        return next((layer.name for layer in self.layers if not layer.passed), None)

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "mode": self.mode,
                "passed": self.passed, "first_failure": self.first_failure,
                "tolerance": {"atol": self.atol, "rtol": self.rtol, "atol_scale": "layer max |reference|",
                              "atol_by_layer": {layer.name: layer.atol for layer in self.layers}},
                "layers": [layer.to_dict() for layer in self.layers], "logits": self.logits}


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> LayerComparison:
    if ref.shape != got.shape:
        return LayerComparison.failed(name, ref.shape, atol, rtol,
                                      f"shape {list(got.shape)} != reference {list(ref.shape)}")
    ref64, got64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    finite_ref, finite_got = np.isfinite(ref64), np.isfinite(got64)
    bad_ref, bad_got = int(ref64.size - finite_ref.sum()), int(got64.size - finite_got.sum())
    if bad_ref or bad_got:
        sides = [f"{n} in the {side}" for n, side in ((bad_ref, "reference"), (bad_got, "candidate")) if n]
        note = f"non-finite values: {', '.join(sides)}"
        if bad_ref and not bad_got:  # e.g. MindSpore's ReLU maps NaN to 0: the candidate hides the fault
            note += " (the candidate is finite where the reference is not)"
        ref_max = float(np.abs(ref64[finite_ref]).max()) if finite_ref.any() else float("nan")
        return LayerComparison.failed(name, ref.shape, atol, rtol, note, ref_max=ref_max,
                                      non_finite_ref=bad_ref, non_finite_got=bad_got)
    diff = np.abs(got64 - ref64)
    mag = np.abs(ref64)
    scale = float(mag.max()) if mag.size else 0.0
    scale = scale if scale > 0 else 1.0
    significant = mag > 1e-6 * scale
    max_rel = float((diff[significant] / mag[significant]).max()) if significant.any() else 0.0
    fails = (diff > atol * scale) & (diff > rtol * mag)
    outside_rtol = diff > rtol * mag
    min_atol = float(diff[outside_rtol].max() / scale) if outside_rtol.any() else 0.0
    denom = float(np.linalg.norm(ref64) * np.linalg.norm(got64))
    cosine = float(ref64 @ got64 / denom) if denom > 0 else (1.0 if not diff.any() else 0.0)
    return LayerComparison(
        name=name, shape=list(ref.shape), ref_max=float(mag.max()) if mag.size else 0.0,
        max_abs=float(diff.max()) if diff.size else 0.0, max_rel=max_rel,
        scaled_max_abs=float(diff.max() / scale) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0, cosine=cosine,
        within=float(1.0 - fails.mean()) if fails.size else 1.0, min_atol=min_atol,
        atol=atol, rtol=rtol, passed=not fails.any())


def compare_stats(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> LayerComparison:
    """Two statistics vectors (:data:`harness.outputs.STATS`) of one layer: each of min, max,
    mean, std, mean |x| must agree within ``atol x max(|min|, |max|)`` of the reference or
    ``rtol`` of the statistic itself, and the non-finite counts exactly. Coarser than an
    element-wise comparison: it finds the diverging layer, not the element."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return LayerComparison.failed(name, [], atol, rtol, "statistics of different shapes")
    scale = max(abs(ref[0]), abs(ref[1])) or 1.0
    d = np.abs(got[:5] - ref[:5])
    fails = (d > atol * scale) & (d > rtol * np.abs(ref[:5]))
    same_nan = bool(ref[5] == got[5])
    passed = not fails.any() and same_nan and bool(np.isfinite(d).all())
    note = "statistics only" + ("" if same_nan else f"; non-finite counts {int(ref[5])} vs {int(got[5])}")
    return LayerComparison(name, [], float(scale), float(d.max()), 0.0, float(d.max() / scale), float(d.mean()),
                           float("nan"), float(1 - fails.mean()), float(d.max() / scale), atol, rtol, passed,
                           note=note, non_finite_ref=int(ref[5]), non_finite_got=int(got[5]))


def flag_outliers(report: "ParityReport", factor: float = 10.0, least: float = 1e-7) -> List[str]:
    """Flag (and return) the layers whose error is ``factor`` times their stage's median
    even when within tolerance: in isolated mode a layer's error is its own, so one far above
    its neighbours' is where a real difference starts."""
    by_stage: Dict[str, List[LayerComparison]] = {}
    for layer in report.layers:
        by_stage.setdefault(layer.name.split(".", 1)[0], []).append(layer)
    flagged = []
    for layers in by_stage.values():
        errors = [lay.scaled_max_abs for lay in layers if math.isfinite(lay.scaled_max_abs)]
        if len(errors) < 3:
            continue
        median = float(np.median(errors))
        for lay in layers:
            if math.isfinite(lay.scaled_max_abs) and lay.scaled_max_abs > max(factor * median, least):
                lay.flag = f"{lay.scaled_max_abs / max(median, 1e-30):.0f}x its stage's median error"
                flagged.append(lay.name)
    return flagged


def topk_agreement(ref_logits: np.ndarray, got_logits: np.ndarray, k: int = 5) -> Dict[str, float]:
    ref2, got2 = ref_logits.reshape(ref_logits.shape[0], -1), got_logits.reshape(got_logits.shape[0], -1)
    top1 = float(np.mean(ref2.argmax(1) == got2.argmax(1)))
    k = min(k, ref2.shape[1])
    ref_k = np.argsort(-ref2, axis=1)[:, :k]
    got_k = np.argsort(-got2, axis=1)[:, :k]
    topk = float(np.mean([set(a) == set(b) for a, b in zip(ref_k, got_k)]))
    return {"top1_agreement": top1, f"top{k}_set_agreement": topk}


def compare_outputs(reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray], names: Sequence[str],
                    atol: Optional[float] = None, rtol: float = DEFAULT_RTOL,
                    per_layer_atol: Optional[Dict[str, float]] = None,
                    reference_name: str = "reference", candidate_name: str = "candidate",
                    mode: str = "propagated", stats: bool = False) -> ParityReport:
    """Compare two dicts of canonical outputs over ``names`` (in that order). ``atol``
    None: each layer's :func:`default_atol`; ``per_layer_atol`` overrides single layers.
    ``stats``: both hold statistics vectors (``--stats-only`` outputs), not arrays."""
    layers = []
    for name in names:
        layer_atol = (per_layer_atol or {}).get(name, default_atol(name) if atol is None else atol)
        if name not in reference or name not in candidate:
            side = reference_name if name not in reference else candidate_name
            layers.append(LayerComparison.failed(name, [], layer_atol, rtol, f"missing from {side}"))
            continue
        compare = compare_stats if stats else compare_arrays
        layers.append(compare(name, reference[name], candidate[name], layer_atol, rtol))
    logits = {}
    if not stats and "logits" in reference and "logits" in candidate and reference["logits"].shape == candidate["logits"].shape:
        with np.errstate(invalid="ignore"):  # NaN logits are reported per layer above
            logits = topk_agreement(reference["logits"], candidate["logits"])
            logits.update(max_abs=float(np.abs(reference["logits"].astype(np.float64) - candidate["logits"]).max()))
    return ParityReport(reference_name, candidate_name, layers, atol, rtol, logits, mode)


def _fmt(x: float, width: int = 9) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan".rjust(width)
    if isinstance(x, float) and math.isinf(x):
        return "inf".rjust(width)
    return f"{x:.2e}".rjust(width)


COLUMNS = """Columns: layer (canonical name); shape; max|ref| (largest magnitude of the reference's output);
max abs (largest |candidate - reference|); abs/max (max abs / max|ref|: the error scaled by the layer's
magnitude, what atol is compared with); max rel (largest |d| / |ref| over elements above 1e-6 max|ref|);
mean abs (mean |d|); cosine (cosine similarity of the two outputs); within (share of elements inside
the tolerance); min atol (the smallest scaled atol that would pass at this rtol); atol (the scaled
tolerance applied: a fraction of max|ref|, per stage by default); f32 floor (--noise-floor: the
reference's own float32 error against float64, scaled); result."""


def format_report(report: ParityReport, only_failures: bool = False) -> str:
    """The per-layer table, then the first failing layer and the verdict."""
    floors = any(layer.floor is not None for layer in report.layers)
    head = (f"{'layer':<18} {'shape':<22} {'max|ref|':>9} {'max abs':>9} {'abs/max':>9} {'max rel':>9} "
            f"{'mean abs':>9} {'cosine':>10} {'within':>8} {'min atol':>9} {'atol':>8}"
            + (f" {'f32 floor':>9}" if floors else "") + "  result")
    atol = (f"{report.atol:g}" if report.atol is not None else "atol") + "*max|ref|"
    lines = [f"{report.candidate} vs {report.reference} ({report.mode}); an element fails if "
             f"|d| > {atol} and |d| > {report.rtol:g}*|ref|", head, "-" * len(head)]
    for layer in report.layers:
        if only_failures and layer.passed and not layer.flag:
            continue
        cos = "nan" if math.isnan(layer.cosine) else f"{layer.cosine:.7f}"
        notes = [n for n in (layer.note, layer.flag) if n]
        lines.append(
            f"{layer.name:<18} {'x'.join(map(str, layer.shape)):<22} {_fmt(layer.ref_max)} {_fmt(layer.max_abs)} "
            f"{_fmt(layer.scaled_max_abs)} {_fmt(layer.max_rel)} {_fmt(layer.mean_abs)} {cos:>10} "
            f"{100 * layer.within:7.3f}% {_fmt(layer.min_atol)} {_fmt(layer.atol, 8)}"
            + (f" {_fmt(layer.floor)}" if floors else "") + f"  {'PASS' if layer.passed else 'FAIL'}"
            + (f"  ({'; '.join(notes)})" if notes else ""))
    if report.logits:
        agreement = ", ".join(f"{k} {v:.3g}" for k, v in report.logits.items())
        lines.append(f"logits: {agreement}")
    if report.passed:
        lines.append(f"PASSED: {report.candidate} matches {report.reference} at every one of {len(report.layers)} layers")
    else:
        n_fail = sum(not layer.passed for layer in report.layers)
        lines.append(f"FAILED: {n_fail} of {len(report.layers)} layers out of tolerance; "
                     f"first failing layer: {report.first_failure}")
    return "\n".join(lines)
