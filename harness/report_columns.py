"""What each table of :mod:`harness.report` shows: its columns (name and how a row becomes
the cell's text), the compact view a terminal gets, the numbered notes, and the source ids.
The text, CSV and HTML renderers all read this (:mod:`harness.report`, :mod:`harness.report_html`)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from harness.report_tables import stage_rank


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return fmt.format(x)
    return str(x)


def published_number(x: Any) -> str:
    """A registry number as the registry writes it: two decimals, more only if it has more."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "-"
    text = f"{x:.2f}"
    return text if float(text) == x else repr(x)


def _signed(x: Any) -> str:
    return _f(x, "{:+.2f}")


def _sci(x: Any) -> str:
    if x is None:
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:.1e}"


class Notes:
    """Numbers the flags of one rendering, in order of first appearance."""

    def __init__(self) -> None:
        self.texts: List[str] = []

    def number(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1

    def mark(self, row: dict, on: str) -> str:
        nums = sorted({self.number(fl.text) for fl in row.get("flags", []) if fl.on == on})
        return f" [{','.join(map(str, nums))}]" if nums else ""

    def all(self, row: dict) -> str:
        return ",".join(map(str, sorted({self.number(fl.text) for fl in row.get("flags", [])}))) or ""


Column = Tuple[str, Callable[[dict, Notes], str]]


def _pair(a: Any, b: Any, fmt: Callable[[Any], str] = _f) -> str:
    return "-" if a is None and b is None else f"{fmt(a)} / {fmt(b)}"


def _counts(r: dict) -> str:
    if r.get("videos_scored") is None:
        return "-"
    return f"{r['videos_scored']} / {r['videos_listed']} / {r['videos_missing']}"


def _agreement(r: dict, notes: Notes) -> str:
    if r.get("agreement_top1") is None:
        return "-" if not r.get("agreement_with") else f"- (vs {r['agreement_with']})"
    return (f"{r['agreement_top1']:.2f} ({r['agreement_videos']} videos, vs {r['agreement_with']})"
            + notes.mark(r, "agreement"))


def _measured(r: dict) -> str:
    if r.get("measured_top5_note"):
        return f"{_f(r.get('measured_top1'))} / {r['measured_top5_note']}"
    return _pair(r.get("measured_top1"), r.get("measured_top5"))


def _utilisation(r: dict) -> str:
    """Share of the CPU's theoretical peak / of the GEMM probe; never a share over 100%."""
    def share(x: Any, what: str) -> str:
        return "-" if x is None else (f"above the {what}" if x > 100.0 else f"{x:.0f}%")

    if r.get("peak_pct") is None and r.get("utilisation_pct") is None:
        return "-"
    return f"{share(r.get('peak_pct'), 'peak')} / {share(r.get('utilisation_pct'), 'GEMM probe')}"


def _preset(r: dict) -> str:
    return f"{r.get('data_preset')}*" if r.get("data_override") else str(r.get("data_preset") or "-")


ACCURACY_COLUMNS: List[Column] = [
    ("type", lambda r, n: r["type"]),
    ("checkpoint", lambda r, n: r["checkpoint"]),
    ("run in", lambda r, n: r["run_in"]),
    ("arch", lambda r, n: str(r["arch"])),
    ("data preset", lambda r, n: _preset(r)),
    ("spec", lambda r, n: str(r.get("spec_hash") or "-")[:8]),
    ("published top-1 / top-5", lambda r, n: _pair(r["published_top1"], r["published_top5"], published_number)),
    ("published protocol", lambda r, n: str(r.get("published_protocol") or "-")),
    ("published on", lambda r, n: "-" if r["published_top1"] is None and r["published_top5"] is None else
     f"{_f(r['published_val_videos'], '{:d}') if r['published_val_videos'] is not None else '?'} videos, "
     f"{r['published_denominator'] or '?'}"),
    ("scored / listed / missing", lambda r, n: _counts(r)),
    ("measured top-1 / top-5", lambda r, n: _measured(r)),
    ("measured on", lambda r, n: "-" if not r.get("measured_on") else f"{r['measured_videos']} videos, "
                                                                        f"{r['measured_on']}"),
    ("delta top-1 / top-5", lambda r, n: ("-" if r.get("delta_top1") is None and r.get("delta_top5") is None else
                                          _pair(r.get("delta_top1"), r.get("delta_top5"), _signed)
                                          + n.mark(r, "delta"))),
    ("top-1 agreement (%)", _agreement),
    ("clips/s end to end / model", lambda r, n: _pair(r.get("clips_per_s"), r.get("model_clips_per_s"))),
    ("device", lambda r, n: str(r.get("device") or "-")),
    ("notes", lambda r, n: n.all(r)),
]
RANDOM_COLUMNS: List[Column] = [
    ("run in", lambda r, n: r["run_in"]),
    ("arch", lambda r, n: str(r["arch"])),
    ("data preset", lambda r, n: _preset(r)),
    ("spec", lambda r, n: str(r.get("spec_hash") or "-")[:8]),
    ("scored / listed / missing", lambda r, n: _counts(r)),
    ("top-1 agreement (%)", _agreement),
    ("max abs score delta", lambda r, n: _sci(r.get("agreement_max_abs_delta"))),
    ("clips/s end to end / model", lambda r, n: _pair(r.get("clips_per_s"), r.get("model_clips_per_s"))),
    ("device", lambda r, n: str(r.get("device") or "-")),
    ("notes", lambda r, n: n.all(r)),
]
SPEED_COLUMNS: List[Column] = [
    ("bench", lambda r, n: r["bench"]),
    ("framework", lambda r, n: r["framework"]),
    ("variant", lambda r, n: r["variant"]),
    ("device", lambda r, n: r["device"]),
    ("dtype", lambda r, n: str(r["dtype"] or "-")),
    ("arch", lambda r, n: str(r["arch"] or "-")),
    ("clip", lambda r, n: str(r["clip"] or "-")),
    ("batch", lambda r, n: _f(r["batch"], "{:d}")),
    ("latency ms (median / p90)", lambda r, n: _pair(r["latency_ms"], r["latency_p90_ms"], lambda x: _f(x, "{:.1f}"))),
    ("ms/clip", lambda r, n: _f(r["ms_per_clip"], "{:.1f}")),
    ("clips/s", lambda r, n: _f(r["clips_per_s"])),
    ("GFLOPs/clip", lambda r, n: _f(r["gflops_per_clip"], "{:.2f}")),
    ("GFLOP/s", lambda r, n: _f(r["gflop_per_s"], "{:.1f}")),
    ("utilisation (of peak / of GEMM probe)", lambda r, n: _utilisation(r)),
    ("peak memory GiB (host / device)", lambda r, n: _pair(r["peak_host_gib"], r["peak_device_gib"])),
    ("train ms/step", lambda r, n: _f(r["train_ms_per_step"], "{:.1f}")),
    ("ratio", lambda r, n: "-" if r["ratio"] is None else f"{r['ratio']:.2f}x vs {r['ratio_to']}" + n.mark(r, "ratio")),
    ("notes", lambda r, n: n.all(r)),
]
TRAINING_COLUMNS: List[Column] = [
    ("framework", lambda r, n: r["framework"]),
    ("arch", lambda r, n: str(r["arch"] or "-")),
    ("data preset", lambda r, n: str(r["data_preset"] or "-")),
    ("steps", lambda r, n: _f(r["steps"], "{:.0f}")),
    ("batch", lambda r, n: _f(r["batch_size"], "{:.0f}")),
    ("final loss", lambda r, n: _f(r["final_loss"], "{:.4f}")),
    ("accuracy % (field)", lambda r, n: _f(r["accuracy_pct"]) + (f" ({r['accuracy_field']})"
                                                                  if r.get("accuracy_field") else "")),
    ("ms/step", lambda r, n: _f(r["ms_per_step"], "{:.1f}")),
    ("device", lambda r, n: r["device"]),
    ("dtype", lambda r, n: str(r["dtype"] or "-")),
    ("notes", lambda r, n: n.all(r)),
]


def _share_cell(x: Optional[float]) -> str:
    return "-" if x is None else (f"{100 * x:.1f}%" if x < 100 else f"{x:.1e}x")


TRAINING_PARITY_COLUMNS: List[Column] = [
    ("comparison", lambda r, n: r["comparison"]),
    ("arch", lambda r, n: str(r["arch"] or "-")),
    ("check", lambda r, n: r["check"]),
    ("family", lambda r, n: r["family"]),
    ("entries", lambda r, n: _f(r["n"], "{:d}")),
    ("worst, of tolerance", lambda r, n: _share_cell(r["worst_share"])),
    ("floor, of tolerance", lambda r, n: _share_cell(r["floor_share"])),
    ("verdict", lambda r, n: r["status"] + n.mark(r, "status")),
    ("worst entry", lambda r, n: r["worst"]),
    ("notes", lambda r, n: n.all(r)),
]
ALIGNMENT_COLUMNS: List[Column] = [
    ("comparison", lambda r, n: r["comparison"]),
    ("band from", lambda r, n: r["band"]),
    ("steps", lambda r, n: _f(r["steps"], "{:d}")),
    ("worst loss error, of band", lambda r, n: _f(r["worst_of_band"], "{:.2f}x")),
    ("limit", lambda r, n: _f(r["limit"], "{:g}x")),
    ("held-out top-1 diff (pp)", lambda r, n: _f(r["held_out_top1_diff_pp"], "{:+.1f}")),
    ("held-out top-1 agreement %", lambda r, n: _f(r["held_out_agreement_pct"], "{:.1f}")),
    ("verdict", lambda r, n: str(r["verdict"])),
    ("notes", lambda r, n: n.all(r)),
]


def stage_text(st: Optional[dict], mark: str = "") -> str:
    """A parity stage's cell: the error of the layer nearest its tolerance (scaled by its
    reference's max |value|, or ``abs`` where that reference is zero up to rounding), its
    share of the tolerance, and the verdict: ``ok`` only at or under 100%."""
    if st is None:
        return "-"
    err = st.get("nearest_error", st.get("worst"))
    text = ("abs " if st.get("nearest_error_kind") == "absolute" else "") + _sci(err)
    share = st.get("of_tolerance")
    if share is not None:
        text += " (inf)" if share == float("inf") else f" ({100 * share:.0f}%)"
    if not st.get("passed"):
        return f"{text} FAIL"
    if st.get("over_tolerance") or (share is not None and share > 1.0):
        return f"{text} over tolerance{mark}"
    return f"{text} ok"


def _verdict(r: dict, n: Notes) -> str:
    if not r["passed"]:
        return f"FAIL (first: {r['first_failure']})"
    over = r.get("over_tolerance") or []
    if over:
        return f"not ok: {len(over)} layer{'s' if len(over) > 1 else ''} over tolerance, passed by the file"
    return "PASS"


def parity_columns(rows: List[dict], compact: bool = False) -> List[Column]:
    stages = sorted({s for r in rows for s in r["stages"]}, key=stage_rank)

    def stage_cell(stage: str) -> Callable[[dict, Notes], str]:
        return lambda r, n: stage_text(r["stages"].get(stage), n.mark(r, f"stage:{stage}"))

    ident: List[Column] = [("kind", lambda r, n: r["kind"]), ("comparison", lambda r, n: r["comparison"]),
                           ("mode", lambda r, n: r["mode"])]
    if not compact:
        ident += [("arch", lambda r, n: str(r["arch"] or "-")), ("input", lambda r, n: r["input"]),
                  ("weights", lambda r, n: r["weights"])]
    return (ident + [(s, stage_cell(s)) for s in stages]
            + [("logits top-1 agreement %", lambda r, n: _f(r["logits_top1_agreement"])),
               ("verdict", _verdict), ("notes", lambda r, n: n.all(r))])


def _pick(columns: List[Column], names: Tuple[str, ...]) -> List[Column]:
    by_name = dict(columns)
    return [(name, by_name[name]) for name in names]


# what a terminal shows by default (--wide, html, csv and json: every column)
COMPACT = {
    "accuracy": ("checkpoint", "run in", "data preset", "published top-1 / top-5", "measured top-1 / top-5",
                 "delta top-1 / top-5", "top-1 agreement (%)", "notes"),
    "accuracy_other": ("checkpoint", "run in", "data preset", "scored / listed / missing", "measured top-1 / top-5",
                       "measured on", "top-1 agreement (%)", "notes"),
    "speed": ("bench", "framework", "variant", "device", "clip", "batch", "ms/clip", "clips/s",
              "utilisation (of peak / of GEMM probe)", "train ms/step", "ratio", "notes"),
    "training_parity": ("check", "family", "entries", "worst, of tolerance", "floor, of tolerance", "verdict",
                        "worst entry", "notes"),
}


# the compact view's shorter headers (the cells are the same)
SHORT_HEADERS = {"published top-1 / top-5": "published top-1/5", "measured top-1 / top-5": "measured top-1/5",
                 "delta top-1 / top-5": "delta top-1/5", "top-1 agreement (%)": "top-1 agreement %",
                 "scored / listed / missing": "scored/listed/missing",
                 "utilisation (of peak / of GEMM probe)": "of peak / of GEMM probe"}


def columns_of(name: str, rows: List[dict], compact: bool = False) -> List[Column]:
    """The columns of table ``name``; ``compact``: the few a terminal has room for."""
    if name == "parity":
        return parity_columns(rows, compact)
    base = "accuracy_other" if name.startswith("accuracy_") else name
    full = {"accuracy": ACCURACY_COLUMNS, "random": RANDOM_COLUMNS, "speed": SPEED_COLUMNS,
            "training": TRAINING_COLUMNS, "training_parity": TRAINING_PARITY_COLUMNS,
            "alignment": ALIGNMENT_COLUMNS,
            # nothing is published for a dataset other than Kinetics-400: no published or delta columns
            "accuracy_other": [c for c in ACCURACY_COLUMNS if not c[0].startswith(("type", "published", "delta"))]
            }[base]
    return _pick(full, COMPACT[base]) if compact and base in COMPACT else full


def source_ids(report: dict) -> Dict[str, str]:
    return {s["path"]: f"S{i + 1}" for i, s in enumerate(report["sources"])}


def other_notes(table: dict, notes: Notes) -> List[str]:
    """A table's notes that no row's flag numbers: table-wide ones, and what ``*`` means."""
    rest = [t for t in table["notes"] if t not in notes.texts]
    overrides = sorted({r["data_override"] for r in table["rows"] if r.get("data_override")})
    if overrides:
        rest.append(f"data preset*: overridden ({'; '.join(overrides)})")
    return rest
