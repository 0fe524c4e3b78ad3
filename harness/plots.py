"""The report's plots, drawn from :func:`harness.report.build_report`'s data (PNG, Agg).

``parity_layers.png``     per-layer worst error of each framework pair, log scale, tolerance drawn
``parity_training.png``   training-step comparisons: each entry's share of its own tolerance
``throughput.png``        clips/s per framework x device x dtype (best batch), log scale
``loss_curves.png``       training loss per step, every framework on one axis
``per_class_N.png``       per-class top-1 difference between two runs of the same weights

Figures are made with :class:`matplotlib.figure.Figure` and the Agg canvas directly: no
pyplot, no global backend switch, nothing shown on a screen. Every axis names its unit.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from harness.files import atomic_path

FLOOR = 1e-12   # an error of exactly 0 (bit-identical), drawn on a log axis


@dataclass
class Plot:
    name: str        # file name
    caption: str
    png: bytes
    axes: Tuple[str, str] = ("", "")   # the x and y labels drawn (each names its unit)


def figure(width: float, height: float, missing: str = "plots need matplotlib: pip install 'nlparity[report]'"):
    """A matplotlib figure on the Agg canvas (no display); ``missing`` is the one-line error
    when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from harness.cli import InputError

        raise InputError(missing) from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot(name: str, caption: str, fig, ax) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return Plot(name, caption, buf.getvalue(), (ax.get_xlabel(), ax.get_ylabel()))


def parity_plot(series: List[dict]) -> Optional[Plot]:
    """Forward parity: each framework pair's worst error per layer, the tolerance drawn."""
    series = [s for s in series if s["kind"] == "forward" and s["layers"]]
    if not series:
        return None
    names: List[str] = []
    for s in series:
        names += [n for n in s["layers"] if n not in names]
    pos = {n: i for i, n in enumerate(names)}
    fig = figure(min(20.0, max(8.0, 0.28 * len(names) + 3)), 5.0)
    ax = fig.add_subplot(1, 1, 1)
    zero_drawn, drawn = False, 0
    for s in series:
        xs = [pos[n] for n in s["layers"]]
        ys = [FLOOR if (e is not None and e <= 0) else e for e in s["error"]]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y != float("inf")]
        if not pts:
            continue
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.2,
                        label=s["label"])
        drawn += 1
        zeros = [x for x, e in zip(xs, s["error"]) if e is not None and e <= 0]
        if zeros:
            zero_drawn = True
            ax.plot(zeros, [FLOOR] * len(zeros), linestyle="none", marker="v", markersize=5,
                    color=line.get_color())
    if not drawn:
        return None
    tolerances = {tuple(s["atol"]): s for s in series if any(a is not None for a in s["atol"])}
    for i, (atol, s) in enumerate(tolerances.items()):
        xs = [pos[n] for n, a in zip(s["layers"], atol) if a is not None]
        ax.step(xs, [a for a in atol if a is not None], where="mid", color="black", linestyle="--", linewidth=1.0,
                label="tolerance (scaled atol)" if i == 0 else None)
    ax.set_yscale("log")
    every = -(-len(names) // 70)  # at most 70 names under the axis
    ax.set_xticks(range(0, len(names), every))
    ax.set_xticklabels(names[::every], rotation=90, fontsize=7)
    ax.set_xlabel("layer (canonical name, input to output)")
    ax.set_ylabel("worst error (fraction of the layer's max |reference|, log scale)")
    title = "Per-layer parity error"
    ax.set_title(title + (f"; v = 0 (bit-identical), drawn at {FLOOR:g}" if zero_drawn else ""))
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _plot("parity_layers.png", f"{title}: max |difference| / max |reference| per layer, one line per framework pair; "
                       "the dashed line is the tolerance.", fig, ax)


def tolerance_share_plot(series: List[dict]) -> Optional[Plot]:
    """Training-step parity compares hundreds of entries (gradients, weights, BN statistics,
    lr, momentum) with tolerances of their own: each entry's share of its tolerance, one
    point per entry, the tolerance at 1."""
    series = [s for s in series if s["kind"] == "training step" and any(v is not None for v in s["share"])]
    if not series:
        return None
    fig = figure(12.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    zero_drawn = False
    for s in series:
        pts = [(i, max(v, FLOOR)) for i, v in enumerate(s["share"]) if v is not None and v != float("inf")]
        zero_drawn = zero_drawn or any(v == 0 for v in s["share"] if v is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none", marker="o", markersize=2.5, alpha=0.7,
                label=s["label"])
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="tolerance (share 1: above fails)")
    ax.set_yscale("log")
    ax.set_xlabel("entry (index in the file: gradients, weights, BN statistics, lr, momentum)")
    ax.set_ylabel("share of its tolerance (smallest passing atol / atol, log scale)")
    ax.set_title("Training-step parity" + (f"; 0 drawn at {FLOOR:g}" if zero_drawn else ""))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _plot("parity_training.png", "Training-step parity: every compared entry's share of its own tolerance "
                                        "(above the dashed line fails).", fig, ax)


def throughput_plot(rows: List[dict]) -> Optional[Plot]:
    best: Dict[tuple, dict] = {}
    for r in rows:
        if r["bench"] != "inference" or not r.get("clips_per_s"):
            continue
        key = (r["framework"], r["variant"], r["device"], r["dtype"] or "?")
        if key not in best or r["clips_per_s"] > best[key]["clips_per_s"]:
            best[key] = r
    if not best:
        return None
    items = sorted(best.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][0], kv[0][1]))
    labels = [f"{fw} {var if var != '-' else ''} | {dev} | {dt} (batch {r['batch']})".replace("  ", " ")
              for (fw, var, dev, dt), r in items]
    values = [r["clips_per_s"] for _, r in items]
    frameworks = sorted({k[0] for k, _ in items})
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    colours = [palette[frameworks.index(k[0]) % len(palette)] for k, _ in items]
    fig = figure(9.0, 1.0 + 0.45 * len(items))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(items)), values, color=colours)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("inference throughput (clips/s, log scale; best batch size)")
    ax.set_ylabel("framework | device | dtype (categories)")
    ax.set_title("Forward throughput per framework, device and dtype")
    ax.grid(True, axis="x", alpha=0.3)
    return _plot("throughput.png", "Inference clips/s per framework, device and dtype (each at its best batch size).",
                 fig, ax)


def loss_plot(curves: List[dict]) -> Optional[Plot]:
    if not curves:
        return None
    fig = figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for c in curves:
        ax.plot(c["steps"], c["loss"], linewidth=1.2, marker="." if len(c["steps"]) < 50 else None, label=c["label"])
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_title("Training loss, both frameworks on one axis")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _plot("loss_curves.png", "Training loss per step of every training run, on one axis.", fig, ax)


def per_class_plot(pair: dict, number: int) -> Plot:
    fig = figure(max(6.0, 0.25 * len(pair["classes"]) + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    diffs = pair["diff_pp"]
    ax.bar(range(len(diffs)), diffs, color=["tab:red" if d < 0 else "tab:green" for d in diffs])
    ax.plot(range(len(diffs)), diffs, linestyle="none", marker="o", markersize=4, color="black")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(diffs)))
    ax.set_xticklabels([str(c) for c in pair["classes"]], rotation=90 if len(diffs) > 20 else 0, fontsize=7)
    ax.set_xlabel("class (label index)")
    ax.set_ylabel("top-1 accuracy difference, B - A (percentage points)")
    limit = max([abs(d) for d in diffs] + [1.0])
    ax.set_ylim(-1.1 * limit, 1.1 * limit)
    ax.set_title(f"Per-class top-1: B = {pair['b']} minus A = {pair['a']}", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    return _plot(f"per_class_{number}.png", f"Per-class top-1 accuracy of {pair['b']} minus {pair['a']} "
                                           "(same weights, spec and val set).", fig, ax)


def make_plots(report: dict) -> List[Plot]:
    data = report["plots_data"]
    plots = [parity_plot(data["parity_layers"]), tolerance_share_plot(data["parity_layers"]),
             throughput_plot(report["tables"]["speed"]["rows"]), loss_plot(data["loss_curves"])]
    plots += [per_class_plot(pair, i + 1) for i, pair in enumerate(data["per_class"])]
    return [p for p in plots if p is not None]


def write_plots(plots: List[Plot], folder: str) -> List[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for plot in plots:
        path = os.path.join(folder, plot.name)
        with atomic_path(path, suffix=".png") as tmp:
            with open(tmp, "wb") as f:
                f.write(plot.png)
        paths.append(path)
    return paths
