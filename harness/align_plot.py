"""The training-alignment plot (PNG, matplotlib's Agg canvas through :func:`harness.plots.figure`).

Top: the loss of every run per step, overlaid (each its own colour, marker and line style,
so that curves lying on one another stay visible), with the band drawn around the
reference: reference +- multiple x band. Middle: |candidate - reference| per step against
the band (the torch runs' own spread) and the limit (multiple x band). Bottom: the same as
a ratio to the band, where the early steps (errors of 1e-7 nats beside 0.1 later) can be
read on a linear axis; the first step outside, if any, is marked. Linear axes; the title
says what was measured, where and when.
"""
from __future__ import annotations

from typing import List

from harness.files import atomic_path
from harness.plots import figure

# colour, marker, line style, marker size, line width, filled: where the curves lie on one
# another (they should), each stays visible: the reference a wide line with filled circles,
# band runs dashed with hollow markers of other shapes and sizes around them, the candidate a
# thin dotted line with small triangles on top
STYLES = {"reference": ("tab:blue", "o", "-", 7, 3.0, True), "band": ("tab:green", "s", "--", 11, 1.6, False),
          "candidate": ("tab:red", "^", ":", 4, 1.2, True)}
# each further band run: its own colour, a smaller hollow marker of another shape, another dash
BAND_STYLES = [("tab:green", "s", "--", 12), ("tab:orange", "D", "-.", 8), ("tab:purple", "p", (0, (5, 1, 1, 1)), 10),
               ("tab:brown", "h", (0, (1, 1)), 6)]


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
        colour, marker, line, size = BAND_STYLES[band_index[0] % len(BAND_STYLES)]
        band_index[0] += 1
    return dict(color=colour, marker=marker, linestyle=line, markersize=size, linewidth=width,
                markerfacecolor=colour if filled else "none", markeredgewidth=1.2)


def _label(run: dict) -> str:
    threads = f"{run['threads']} thread{'s' if run['threads'] > 1 else ''}"
    env = "".join(f", {k}={v}" for k, v in (run.get("env") or {}).items())
    return f"{run['name']} ({run['role']}, {run['framework']}, {threads}{env})"


def _curves(ax, doc: dict, steps: List[int]) -> None:
    losses, n = doc["losses"], len(steps)
    reference = next(r for r in doc["runs"] if r["role"] == "reference")
    if "limit" in losses:
        ref = reference["losses"][:n]
        ax.fill_between(steps, [v - w for v, w in zip(ref, losses["limit"])],
                        [v + w for v, w in zip(ref, losses["limit"])],
                        color="tab:blue", alpha=0.15, linewidth=0,
                        label=f"band: reference +- {losses['multiple']:g} x torch spread")
    band_index = [0]
    for z, run in enumerate(doc["runs"]):
        ax.plot(steps, run["losses"][:n], zorder=3 + z, **_style(run, band_index), label=_label(run))
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_title("loss of every run, and the band around the reference", fontsize=9)
    ax.legend(fontsize=8, loc="best")


def _errors(bx, doc: dict, steps: List[int]) -> None:
    losses = doc["losses"]
    bx.fill_between(steps, 0, losses["limit"], color="tab:blue", alpha=0.12, linewidth=0,
                    label=f"inside: {losses['multiple']:g} x band")
    bx.plot(steps, losses["limit"], color="black", linestyle="--", linewidth=1.0,
            label=f"limit: {losses['multiple']:g} x band")
    bx.plot(steps, losses["band"], color="tab:green", linestyle="-", linewidth=1.2, marker="s", markersize=3,
            markerfacecolor="none", label=f"band: torch spread, running max (at least {losses['floor']:g} x loss)")
    bx.plot(steps, losses["band_raw"], color="tab:olive", linestyle="none", marker="x", markersize=4,
            label="torch spread at the step")
    bx.plot(steps, losses["candidate_error"], color="tab:red", linestyle=":", linewidth=1.3, marker="^",
            markersize=4, label=f"|{doc['candidate']} - {doc['reference']}|")
    bx.set_ylabel("|loss difference| (nats)")
    bx.set_ylim(bottom=0)
    bx.set_title("the candidate's distance from the reference, against the band", fontsize=9)
    bx.legend(fontsize=8, loc="upper left")


def _ratios(cx, doc: dict, steps: List[int]) -> None:
    """error / band per step: the early steps, invisible in nats, are as legible as the late ones."""
    losses = doc["losses"]
    ratio = [e / b if b > 0 else float("inf") for e, b in zip(losses["candidate_error"], losses["band"])]
    top = 2.5 * losses["multiple"]
    finite = [r for r in ratio if r == r and r != float("inf")]
    if finite and max(finite) > top:
        top = min(max(finite), 10 * losses["multiple"])
    top *= 1.1
    cx.axhspan(0, losses["multiple"], color="tab:blue", alpha=0.12, linewidth=0)
    cx.axhline(losses["multiple"], color="black", linestyle="--", linewidth=1.0,
               label=f"limit: {losses['multiple']:g}")
    shown = [min(r, top) if r == r else top for r in ratio]
    cx.plot(steps, shown, color="tab:red", linestyle=":", linewidth=1.3, marker="^", markersize=4,
            label=f"|{doc['candidate']} - {doc['reference']}| / band")
    for s, r in zip(steps, ratio):
        if not r <= top:
            cx.annotate(f"{r:.3g}", (s, top), xytext=(3, -4), textcoords="offset points", fontsize=7,
                        ha="left", va="top", rotation=90, color="tab:red")
    first = losses.get("first_step_outside")
    if first is not None:
        cx.axvline(first, color="tab:red", linewidth=0.8)
        cx.annotate(f"first step outside: {first} ({losses['candidate_error'][first]:.3g} nats > "
                    f"{losses['limit'][first]:.3g})", (first, losses["multiple"]), xytext=(5, 5),
                    textcoords="offset points", fontsize=8, color="tab:red")
    cx.set_ylim(0, top)
    cx.set_ylabel("error / band (ratio)")
    cx.set_title("the same, as a multiple of the band (values above the axis written at its top)", fontsize=9)
    cx.legend(fontsize=8, loc="upper right")


def alignment_plot(doc: dict, path: str) -> str:
    """Draw :func:`harness.align.align`'s result into ``path`` (written atomically)."""
    fig = figure(11.0, 12.0, missing="the plot needs matplotlib (pip install matplotlib), or pass --no-plot")
    from matplotlib.ticker import MaxNLocator

    steps = list(range(doc["losses"]["steps"]))
    judged = "limit" in doc["losses"]
    axes = [fig.add_subplot(3 if judged else 1, 1, 1)]
    _curves(axes[0], doc, steps)
    if judged:
        axes.append(fig.add_subplot(3, 1, 2, sharex=axes[0]))
        _errors(axes[1], doc, steps)
        axes.append(fig.add_subplot(3, 1, 3, sharex=axes[0]))
        _ratios(axes[2], doc, steps)
    for ax in axes:
        ax.set_xlabel("training step (optimizer updates)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlim(-0.5, len(steps) - 0.5)
    fig.suptitle(_title(doc), fontsize=10)
    fig.subplots_adjust(hspace=0.35)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata={"Software": None})
    return path
