"""The drift audit's waterfall plot (PNG, matplotlib's Agg canvas, no pyplot).

Left: top-1 along the cumulative path, FROM and TO as full bars and each path step as a
floating bar from the previous step's top-1 to its own (green up, red down). Right: each
difference applied alone to FROM, as its top-1 change in percentage points; a difference
that is invalid alone is marked so. Every axis names its unit.
"""
from __future__ import annotations

from typing import List, Optional

from harness.files import atomic_path
from harness.plots import figure

UP, DOWN, FULL, NONE = "#2e7d32", "#c62828", "#546e7a", "#bdbdbd"


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100.0 * x


def waterfall(rows: List[dict], path: str, title: str = "") -> str:
    """Draw the audit's rows (:func:`harness.drift.tabulate`) into ``path`` (written atomically)."""
    path_rows = [r for r in rows if r["kind"] in ("from", "path", "to")]
    alone = [r for r in rows if r["kind"] == "alone"]
    fig = figure(max(10.0, 0.55 * (len(path_rows) + len(alone)) + 6), 5.5,
                 missing="the plot needs matplotlib (pip install matplotlib), or pass --no-plot")
    _path_panel(fig.add_subplot(1, 2, 1), path_rows)
    _alone_panel(fig.add_subplot(1, 2, 2), alone)
    fig.subplots_adjust(wspace=0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata={"Software": None})
    return path


def _path_panel(ax, path_rows: List[dict]) -> None:
    """Top-1 along the cumulative path: FROM and TO full, each path step floating from the previous."""
    labels, previous, seen = [], None, []
    for i, r in enumerate(path_rows):
        top1 = _pct(r.get("top1")) if r.get("status") == "ok" else None
        label = r["label"].split(": ", 1)[-1] if r["kind"] == "path" else r["label"]
        labels.append(label)
        if top1 is None:
            ax.bar(i, 0, color=NONE)
            ax.annotate("invalid", (i, 0), ha="center", va="bottom", fontsize=7, rotation=90)
            continue
        seen.append(top1)
        if r["kind"] == "path" and previous is not None:
            low, high = sorted((previous, top1))
            ax.bar(i, high - low, bottom=low, color=UP if top1 >= previous else DOWN)
            ax.hlines(previous, i - 1.4, i + 0.4, color="black", linewidth=0.6)   # the waterfall's connector
            ax.annotate(f"{top1 - previous:+.2f}", (i, high), ha="center", va="bottom", fontsize=7)
        else:
            ax.bar(i, top1, color=FULL)
            ax.annotate(f"{top1:.2f}", (i, top1), ha="center", va="bottom", fontsize=7)
        if r["kind"] != "to":
            previous = top1
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("cumulative path from FROM to TO (step)")
    ax.set_title("cumulative path", fontsize=10)
    if seen:   # zoomed on the path, so that a tenth of a point shows; the axis says when it is cut
        lo, hi = min(seen), max(seen)
        span = max(hi - lo, 1.0)
        bottom, top = max(0.0, lo - 2 * span), min(100.0, hi + span)
        ax.set_ylim(bottom, top)
        ax.set_ylabel("top-1 accuracy (%)" + (f", axis from {bottom:.1f}" if bottom > 0 else ""))
    else:
        ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(axis="y", alpha=0.3)


def _alone_panel(bx, alone: List[dict]) -> None:
    """Each difference applied alone to FROM, as its top-1 change in percentage points."""
    names = [r["label"].split(": ", 1)[-1] for r in alone]
    for i, r in enumerate(alone):
        delta = _pct(r.get("delta_top1")) if r.get("status") == "ok" else None
        if delta is None:
            bx.barh(i, 0, color=NONE)
            bx.annotate("invalid alone", (0, i), va="center", fontsize=7)
            continue
        bx.barh(i, delta, color=UP if delta >= 0 else DOWN)
        agree = r.get("top1_agreement_with_from")
        text = f"{delta:+.2f}" + (f"  (top-1 as FROM: {100 * agree:.1f}% of videos)" if agree is not None else "")
        bx.annotate(text, (max(delta, 0.0), i), xytext=(3, 0), textcoords="offset points", va="center",
                    ha="left", fontsize=7)
    bx.axvline(0, color="black", linewidth=0.8)
    lo, hi = bx.get_xlim()
    bx.set_xlim(lo, hi + 1.2 * (hi - lo))   # room for the notes, right of each bar
    bx.set_yticks(range(len(names)))
    bx.set_yticklabels(names, fontsize=8)
    bx.invert_yaxis()
    bx.set_xlabel("top-1 change against FROM (percentage points)")
    bx.set_ylabel("difference applied alone")
    bx.set_title("each difference alone", fontsize=10)
    bx.grid(axis="x", alpha=0.3)
