"""The training-alignment plot (PNG, matplotlib's Agg canvas through :func:`harness.plots.figure`).

Top: the loss of every run per step, overlaid (each its own colour, marker and line style,
so that curves lying on one another stay visible), with the band drawn around the
reference: reference +- multiple x band. Bottom: |candidate - reference| per step against
the band (the torch runs' own spread) and the limit (multiple x band); the first step
outside, if any, is marked. Linear axes; the title says what was measured, where and when.
"""
from __future__ import annotations

from typing import List

from harness.files import atomic_path
from harness.plots import figure

# colour, marker, line style, marker size, line width, filled: where the curves lie on one
# another (they should), each stays visible: the reference a wide line with filled circles,
# band runs dashed with large hollow squares around them, the candidate a thin dotted line
# with small triangles on top
STYLES = {"reference": ("tab:blue", "o", "-", 7, 3.0, True), "band": ("tab:green", "s", "--", 11, 1.6, False),
          "candidate": ("tab:red", "^", ":", 4, 1.2, True)}
BAND_COLOURS = ["tab:green", "tab:orange", "tab:purple", "tab:brown"]


def _title(doc: dict) -> str:
    prov = doc.get("provenance", {})
    loads = [x for r in doc["runs"] for x in (r.get("load_before"), r.get("load_after")) if x is not None]
    if not loads and prov.get("load_average"):
        loads = [prov["load_average"][0]]
    load_text = (f", load average {min(loads):.1f}-{max(loads):.1f} during the runs" if len(loads) > 1 else
                 f", load average {loads[0]:.1f}" if loads else "")
    return (f"Training alignment: {doc['candidate']} vs {doc['reference']} (band: {', '.join(doc['band_runs'])}); "
            f"{doc['verdict']}\n{prov.get('cpu', '?')}, {prov.get('cores', '?')} cores{load_text}; "
            f"{str(prov.get('date', ''))[:16].replace('T', ' ')} UTC")


def _style(run: dict, band_index: List[int]):
    colour, marker, line, size, width, filled = STYLES[run["role"]]
    if run["role"] == "band":
        colour = BAND_COLOURS[band_index[0] % len(BAND_COLOURS)]
        band_index[0] += 1
    return dict(color=colour, marker=marker, linestyle=line, markersize=size, linewidth=width,
                markerfacecolor=colour if filled else "none", markeredgewidth=1.2)


def alignment_plot(doc: dict, path: str) -> str:
    """Draw :func:`harness.align.align`'s result into ``path`` (written atomically)."""
    losses = doc["losses"]
    n = losses["steps"]
    steps = list(range(n))
    fig = figure(11.0, 8.5, missing="the plot needs matplotlib (pip install matplotlib), or pass --no-plot")
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot(2, 1, 1)
    reference = next(r for r in doc["runs"] if r["role"] == "reference")
    if "limit" in losses:
        ref = reference["losses"][:n]
        ax.fill_between(steps, [v - w for v, w in zip(ref, losses["limit"])],
                        [v + w for v, w in zip(ref, losses["limit"])],
                        color="tab:blue", alpha=0.15, linewidth=0,
                        label=f"band: reference +- {losses['multiple']:g} x torch spread")
    band_index = [0]
    for z, run in enumerate(doc["runs"]):
        ax.plot(steps, run["losses"][:n], zorder=3 + z, **_style(run, band_index),
                label=f"{run['name']} ({run['role']}, {run['framework']}, {run['threads']} thread"
                      f"{'s' if run['threads'] > 1 else ''})")
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlim(-0.5, n - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    bx = fig.add_subplot(2, 1, 2, sharex=ax)
    if "limit" in losses:
        bx.fill_between(steps, 0, losses["limit"], color="tab:blue", alpha=0.12, linewidth=0,
                        label=f"inside: {losses['multiple']:g} x band")
        bx.plot(steps, losses["limit"], color="black", linestyle="--", linewidth=1.0,
                label=f"limit: {losses['multiple']:g} x band")
        bx.plot(steps, losses["band"], color="tab:green", linestyle="-", linewidth=1.2, marker="s", markersize=3,
                markerfacecolor="none",
                label=f"band: torch spread, running max (at least {losses['floor']:g} x loss)")
        bx.plot(steps, losses["band_raw"], color="tab:olive", linestyle="none", marker="x", markersize=4,
                label="torch spread at the step")
        bx.plot(steps, losses["candidate_error"], color="tab:red", linestyle=":", linewidth=1.3, marker="^",
                markersize=4, label=f"|{doc['candidate']} - {doc['reference']}|")
        first = losses.get("first_step_outside")
        if first is not None:
            bx.axvline(first, color="tab:red", linewidth=0.8)
            bx.annotate(f"first step outside: {first}", (first, losses["candidate_error"][first]),
                        xytext=(5, 5), textcoords="offset points", fontsize=8, color="tab:red")
    bx.set_xlabel("training step (optimizer updates)")
    bx.set_ylabel("|loss difference| (nats)")
    bx.set_ylim(bottom=0)
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=8, loc="upper left")
    fig.suptitle(_title(doc), fontsize=10)
    fig.subplots_adjust(hspace=0.25)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata={"Software": None})
    return path
