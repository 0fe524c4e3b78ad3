"""The report's training sections: training parity (``kind: train_parity``) by check and
parameter family, and training alignment (``kind: train_alignment``); and their plot.

A training-parity file holds, per check and family, the worst error as a share of its
tolerance and torch float32's own (the floor) as a share of the same tolerance; its rows are
shown as they are, never re-judged: a share over 100% is a failure whatever the file says,
and the two are checked against each other (a row marked PASS with a share over 100% is
flagged and shown as FAIL). Files written before the four checks (``rungs``) existed are
listed as not read, with the reason.
"""
from __future__ import annotations

import os
from typing import List, Optional

from harness.report_inputs import Scan, Source, framework_name

CHECKS = ("components", "optimizer", "step", "trajectory")


def training_parity_rows(found: Scan, guarded, flag) -> List[dict]:
    rows: List[dict] = []
    for src in found.of("train_parity"):
        doc = src.doc
        if not isinstance(doc.get("rungs"), dict) or not isinstance(doc.get("summary"), list):
            found.skip(src.path, "a training-parity file from before the four checks (no 'rungs'): rerun "
                                 "python -m harness.parity --train-steps 3")
            continue
        got = guarded(found, src, lambda: _rows_of(src, flag))
        rows.extend(got or [])
    return rows


def _rows_of(src: Source, flag) -> List[dict]:
    doc = src.doc
    label = (f"{framework_name(doc['candidate'])} vs {framework_name(doc['reference'])}, "
             f"{doc.get('steps')} steps, batch {'x'.join(map(str, doc.get('input_shape') or []))}")
    shares = _shares_by_framework(doc)
    out = []
    for row in sorted(doc["summary"], key=lambda r: (CHECKS.index(r["rung"]) if r["rung"] in CHECKS else 9)):
        share = float(row["worst_share"])
        status = row["status"]
        flags = []
        if status == "PASS" and share > 1.0:
            flags.append(flag(f"{row['rung']} / {row['family']} needed {100 * share:.0f}% of its tolerance and the "
                              "file marks it passed: shown as FAIL", "status"))
            status = "FAIL"
        worst = row.get("worst") or {}
        out.append({"comparison": label, "arch": doc.get("arch"), "seed": doc.get("seed"),
                    "check": row["rung"], "family": row["family"], "n": row["n"], "worst_share": share,
                    "floor_share": row.get("floor_share"), "status": status,
                    "worst": (f"{worst.get('name')} {worst.get('quantity')} ({worst.get('framework')}"
                              + (f", step {worst['step']})" if worst.get("step") else ")")) if worst else "-",
                    "verdict": doc.get("verdict"), "candidate": framework_name(doc["candidate"]),
                    "reference": framework_name(doc["reference"]),
                    "shares": {framework_name(fw): v for (check, family, fw), v in shares.items()
                               if (check, family) == (row["rung"], row["family"])},
                    "flags": flags, "sources": [src.ref()]})
    return out


def _shares_by_framework(doc: dict) -> dict:
    """(check, family, framework) -> the largest judged error as a share of its tolerance."""
    out: dict = {}
    for check, rung in doc["rungs"].items():
        columns = rung["entries"]["columns"]
        for values in rung["entries"]["rows"]:
            e = dict(zip(columns, values))
            if not e["judged"] or not e["tolerance"]:
                continue
            key = (check, e["family"], e["framework"])
            out[key] = max(out.get(key, 0.0), float(e["error"]) / float(e["tolerance"]))
    return out


def alignment_rows(found: Scan, guarded) -> List[dict]:
    rows = []
    for src in found.of("train_alignment"):
        got = guarded(found, src, lambda: _alignment_row(src))
        if got:
            rows.append(got)
    return rows


def _alignment_row(src: Source) -> dict:
    doc = src.doc
    losses, held = doc["losses"], doc.get("held_out") or {}
    pair = (held.get("pairs") or {}).get(f"{doc['candidate']} vs {doc['reference']}") or {}
    return {"comparison": f"{doc['candidate']} vs {doc['reference']}", "band": ", ".join(doc.get("band_runs", [])),
            "steps": losses.get("steps"), "worst_of_band": losses.get("max_error_over_band"),
            "limit": losses.get("multiple"), "first_step_outside": losses.get("first_step_outside"),
            "held_out_top1_diff_pp": None if pair.get("top1_diff") is None else 100 * pair["top1_diff"],
            "held_out_agreement_pct": None if pair.get("top1_agreement") is None else 100 * pair["top1_agreement"],
            "verdict": doc.get("verdict"), "reason": doc.get("reason"), "flags": [], "sources": [src.ref()]}


def training_parity_plot(rows: List[dict]) -> Optional["Plot"]:   # noqa: F821 - harness.plots.Plot
    """Per result file, one panel per check: for each parameter family, the candidate's and the
    reference's worst error and torch float32's own error (the floor), as shares of the
    family's tolerance, on a log axis with the tolerance (share 1) drawn: a bar above the
    line is a failure, and the report's row says FAIL. An error of exactly 0 is drawn at the
    axis' foot and written 0."""
    from harness.plots import _plot, figure

    files = {}
    for r in rows:
        files.setdefault(r["sources"][0]["path"], []).append(r)
    if not files:
        return None
    checks = [c for c in CHECKS if any(r["check"] == c for rs in files.values() for r in rs)]
    fig = figure(4.4 * len(checks), 3.4 * len(files) + 1.0)
    first, handles = None, None
    for i, (path, file_rows) in enumerate(files.items()):
        for j, check in enumerate(checks):
            ax = fig.add_subplot(len(files), len(checks), i * len(checks) + j + 1)
            first = first or ax
            handles = _family_bars(ax, [r for r in file_rows if r["check"] == check]) or handles
            ax.set_title(check + (f" ({os.path.basename(path)})" if len(files) > 1 else ""), fontsize=9)
            if j == 0:
                ax.set_ylabel("share of its tolerance (ratio, log)")
    comparison = next(iter(files.values()))[0]["comparison"]
    fig.suptitle(f"Training parity, {comparison}: each family's worst error, beside torch float32's own error "
                 "against float64 (the floor), as shares of its tolerance (above the dashed line fails)", fontsize=9)
    if handles:
        fig.legend(*handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return _plot("parity_training.png", "Training parity by check and parameter family: the candidate's and the "
                                        "reference's worst error (red: over the tolerance, fails) beside torch "
                                        "float32's own error against float64 (hatched), as shares of the family's "
                                        "tolerance.", fig, first)


def _family_bars(ax, rows: List[dict]):
    bottom = 1e-4
    x = list(range(len(rows)))
    series = [(rows[0]["candidate"] if rows else "candidate", "#1f77b4", "", -0.27),
              (rows[0]["reference"] if rows else "reference", "#9ecae1", "", 0.0),
              ("floor", "#bbbbbb", "//", 0.27)]
    for name, colour, hatch, offset in series:
        values = [r["floor_share"] if name == "floor" else r["shares"].get(name) for r in rows]
        drawn = [max(v, bottom) if v is not None else None for v in values]
        colours = ["#d62728" if (v or 0) > 1 else colour for v in values]
        label = "torch float32's own error (floor)" if name == "floor" else f"{name} (worst)"
        ax.bar([p + offset for p, v in zip(x, drawn) if v is not None], [v for v in drawn if v is not None],
               width=0.26, color=[c for c, v in zip(colours, drawn) if v is not None], hatch=hatch, label=label,
               bottom=0)
        for p, v in zip(x, values):
            if v == 0:
                ax.text(p + offset, bottom * 1.3, "0", ha="center", fontsize=7)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="tolerance (share 1)")
    ax.set_yscale("log")
    top = max([1.0] + [v for r in rows for v in list(r["shares"].values()) + [r["floor_share"] or 0]])
    ax.set_ylim(bottom, 3 * top)
    ax.set_xticks(x)
    ax.set_xticklabels([r["family"] for r in rows], rotation=30, fontsize=8)
    ax.set_xlabel("parameter family (category)")
    ax.grid(True, axis="y", alpha=0.3)
    return ax.get_legend_handles_labels() if rows else None
