"""The report's plots, drawn from :func:`harness.report.build_report`'s data (PNG, Agg).

``parity_layers.png``     per-layer worst error, one panel per result file (one run), log scale,
                          tolerance drawn; every series visible (its own marker, line style and
                          a small sideways offset), identical series said so in the legend
``parity_training.png``   training parity by check and parameter family: the worst error and the
                          float32 floor as shares of the tolerance (harness.report_training)
``throughput.png``        inference clips/s, one panel per result file and device (what was timed
                          together), linear axis, each bar's ratio to the panel's reference
                          written on it, noisy timings hatched and labelled
``loss_curves.png``       training loss per step, one panel per result file, titled with what
                          it draws
``per_class_N.png``       per-class top-1 difference between two runs of the same weights

Figures are made with :class:`matplotlib.figure.Figure` and the Agg canvas directly: no
pyplot, no global backend switch, nothing shown on a screen. Every axis names its unit. A
plot never compares numbers that were not measured together: runs from different files or
machines go to different panels, each titled with its file and machine.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from harness.files import atomic_path

FLOOR = 1e-12   # an error of exactly 0 (bit-identical), drawn on a log axis


@dataclass
class Plot:
    name: str        # file name
    caption: str
    png: bytes
    axes: Tuple[str, str] = ("", "")   # the x and y labels drawn (each names its unit)
    panels: List[dict] = field(default_factory=list)   # what each panel draws (see :func:`describe`)


def describe(ax) -> dict:
    """What one panel draws, as data a test (or a reader of the JSON) can check: its title,
    axis scales and labels, each labelled line's marker and style, the bars' hatches and
    lengths, and the texts written on it."""
    lines = [{"label": ln.get_label(), "marker": str(ln.get_marker()), "linestyle": str(ln.get_linestyle()),
              "x": [float(x) for x in ln.get_xdata()], "y": [float(y) for y in ln.get_ydata()]}
             for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    bars = [{"width": float(p.get_width()), "hatch": p.get_hatch()} for p in ax.patches
            if type(p).__name__ == "Rectangle"]
    return {"title": ax.get_title(), "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "lines": lines, "bars": bars,
            "texts": [t.get_text() for t in ax.texts],
            "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []}


def figure(width: float, height: float, missing: str = "plots need matplotlib: pip install 'nlparity[report]'"):
    """A matplotlib figure on the Agg canvas (no display); ``missing`` is the one-line error
    when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from harness.errors import InputError

        raise InputError(missing) from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot(name: str, caption: str, fig, ax, axes: Optional[Tuple[str, str]] = None) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return Plot(name, caption, buf.getvalue(), axes or (ax.get_xlabel(), ax.get_ylabel()),
                [describe(a) for a in fig.axes])


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def _by_source(items: List[dict], path=lambda x: x["source"]["path"]) -> Dict[str, List[dict]]:
    groups: Dict[str, List[dict]] = {}
    for item in items:
        groups.setdefault(path(item), []).append(item)
    return groups


def _same_as(series: List[dict], key: str) -> Dict[int, int]:
    """Index of each series -> the index of an earlier one with exactly the same values."""
    same = {}
    for i, s in enumerate(series):
        for k in range(i):
            if k not in same and s["layers"] == series[k]["layers"] and s[key] == series[k][key]:
                same[i] = k
                break
    return same


def _parity_panel(ax, series: List[dict], names: List[str]) -> bool:
    """One file's comparisons on one axis; returns whether an exact zero was drawn."""
    pos = {n: i for i, n in enumerate(names)}
    same = _same_as(series, "error")
    zero_drawn = False
    width = 0.5 / max(len(series), 1)
    for i, s in enumerate(series):
        shift = (i - (len(series) - 1) / 2) * width   # side by side: no series hides another
        xs = [pos[n] + shift for n in s["layers"]]
        ys = [FLOOR if (e is not None and e <= 0) else e for e in s["error"]]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y != float("inf")]
        if not pts:
            continue
        zero_everywhere = all(e is not None and e <= 0 for e in s["error"])
        label = s["label"].split(" [")[0] + (f": identical to {series[same[i]]['label'].split(' [')[0]}"
                                              if i in same else "") + (
            f" (0 at every layer: bit-identical, drawn at {FLOOR:g})" if zero_everywhere else "")
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)], markersize=4,
                        linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.2, label=label,
                        markerfacecolor="none" if i % 2 else None)
        zeros = [x for x, e in zip(xs, s["error"]) if e is not None and e <= 0]
        if zeros:
            zero_drawn = True
            ax.plot(zeros, [FLOOR] * len(zeros), linestyle="none", marker="v", markersize=5, color=line.get_color())
    tolerances = {tuple(s["atol"]): s for s in series if any(a is not None for a in s["atol"])}
    for k, (atol, s) in enumerate(tolerances.items()):
        xs = [pos[n] for n, a in zip(s["layers"], atol) if a is not None]
        ax.step(xs, [a for a in atol if a is not None], where="mid", color="black", linestyle="--", linewidth=1.0,
                label="tolerance (scaled atol)" if k == 0 else None)
    ax.set_yscale("log")
    every = -(-len(names) // 70)  # at most 70 names under the axis
    ax.set_xticks(range(0, len(names), every))
    ax.set_xticklabels(names[::every], rotation=90, fontsize=7)
    ax.set_xlabel("layer (canonical name, input to output)")
    ax.set_ylabel("worst error (fraction of the layer's max |reference|, log scale)")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return zero_drawn


def parity_plot(series: List[dict]) -> Optional[Plot]:
    """Forward parity: each comparison's worst error per layer, the tolerance drawn; one
    panel per result file (comparisons measured in one run), titled with it."""
    series = [s for s in series if s["kind"] == "forward" and s["layers"]
              and any(e is not None and e != float("inf") for e in s["error"])]
    if not series:
        return None
    panels = _by_source(series)
    longest = max(len({n for s in group for n in s["layers"]}) for group in panels.values())
    fig = figure(min(20.0, max(8.0, 0.28 * longest + 3)), 4.6 * len(panels))
    first = None
    for k, (path, group) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        first = first or ax
        names: List[str] = []
        for s in group:
            names += [n for n in s["layers"] if n not in names]
        zero = _parity_panel(ax, group, names)
        what = "; ".join(dict.fromkeys(s["label"].split(" [")[0] for s in group))
        setting = ", ".join(dict.fromkeys(x for s in group for x in (s.get("arch"), s.get("shape")) if x))
        ax.set_title(f"{os.path.basename(path)}: {what}" + (f" ({setting})" if setting else "")
                     + (f"; v = 0 (bit-identical), drawn at {FLOOR:g}" if zero else ""), fontsize=9)
    fig.tight_layout()
    return _plot("parity_layers.png", "Per-layer parity error, one panel per result file: max |difference| / max "
                                      "|reference| per layer, one line per comparison in it (shifted sideways so "
                                      "none hides another); the dashed line is the tolerance.", fig, first)


def _reference(rows: List[dict]) -> dict:
    """The bar a panel's ratios are taken against: PyTorch eager (exact) at the smallest batch."""
    def rank(r: dict) -> tuple:
        torch_eager = r["framework"] == "PyTorch" and r["variant"] in ("eager+exact", "eager", "-", "exact")
        return (not torch_eager, r["framework"] != "PyTorch", r["batch"] or 0)
    return min(rows, key=rank)


def _bar_label(r: dict, dtypes: int) -> str:
    variant = "" if r["variant"] in ("-", "") else f" {r['variant']}"
    return f"{r['framework']}{variant}" + (f" {r['dtype']}" if dtypes > 1 else "") + f" (batch {r['batch']})"


# one colour per framework in every plot (by title; a framework not listed gets the next free one)
FRAMEWORK_COLORS = {"PyTorch": "tab:orange", "MindSpore": "tab:blue", "mmaction2": "tab:green",
                    "ONNX Runtime": "tab:purple"}
_SPARE_COLORS = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def framework_color(title: str) -> str:
    if title not in FRAMEWORK_COLORS:
        FRAMEWORK_COLORS[title] = _SPARE_COLORS[(len(FRAMEWORK_COLORS) - 4) % len(_SPARE_COLORS)]
    return FRAMEWORK_COLORS[title]


def _throughput_panel(ax, rows: List[dict], title: str) -> None:
    ref = _reference(rows)
    dtypes = len({r["dtype"] for r in rows})
    values = [r["clips_per_s"] for r in rows]
    noisy = [bool(r.get("noisy")) for r in rows]
    bars = ax.barh(range(len(rows)), values, color=[framework_color(r["framework"]) for r in rows],
                   hatch=None, edgecolor="black", linewidth=0.5)
    for bar, is_noisy in zip(bars, noisy):
        if is_noisy:
            bar.set_hatch("///")
    top = max(values)
    for i, (r, v) in enumerate(zip(rows, values)):
        ratio = "reference" if r is ref else f"{v / ref['clips_per_s']:.2f}x"
        load = f", load {r['load_average_max']:.1f}" if r.get("load_average_max") is not None else ""
        ax.text(v + 0.01 * top, i, f" {v:.3g} clips/s, {ratio}" + (f"  NOISY{load}" if noisy[i] else ""),
                va="center", fontsize=8)
    ax.set_xlim(0, top * 1.45)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_bar_label(r, dtypes) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("inference throughput (clips/s, linear" + (
        f"; ratio to {_bar_label(ref, dtypes)} on each bar)" if len(rows) > 1 else ")"))
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)


def throughput_plot(rows: List[dict]) -> Optional[Plot]:
    """Inference clips/s, one panel per result file and device: only bars timed together
    share an axis (a linear one), each with its ratio to the panel's reference written on it;
    a noisy timing is hatched and says so."""
    rows = [r for r in rows if r["bench"] == "inference" and r.get("clips_per_s")]
    if not rows:
        return None
    panels: Dict[tuple, List[dict]] = {}
    for r in rows:
        panels.setdefault((r["sources"][0]["path"], r["device"]), []).append(r)
    fig = figure(10.0, sum(1.3 + 0.4 * len(g) for g in panels.values()))
    heights = [1.0 + 0.4 * len(g) for g in panels.values()]
    grid = fig.add_gridspec(len(panels), 1, height_ratios=heights)
    first = None
    any_noisy = any(r.get("noisy") for r in rows)
    for k, ((path, device), group) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[k, 0])
        first = first or ax
        clips = sorted({r["clip"] for r in group if r.get("clip")})
        title = (f"{os.path.basename(path)}: {device}" + (f", clip {', '.join(clips)}" if clips else "")
                 + (", interleaved" if group[0].get("interleaved") else ""))
        _throughput_panel(ax, group, title)
    ylabel = "configuration (framework, variant, batch)"
    fig.supylabel(ylabel, fontsize=10)
    fig.tight_layout()
    return _plot("throughput.png", "Inference clips/s, one panel per result file and device (bars in a panel were "
                                   "timed together; no ratio across panels), linear axis, each bar's ratio to the "
                                   "panel's reference written on it" + ("; hatched bars: noisy timings (max/min > "
                                                                        "1.5 or load above the cores)"
                                                                        if any_noisy else "") + ".", fig, first,
                 (first.get_xlabel(), ylabel))


def loss_plot(curves: List[dict]) -> Optional[Plot]:
    """Training loss per step, one panel per result file; the title names every curve drawn."""
    curves = [c for c in curves if c["steps"]]
    if not curves:
        return None
    panels = _by_source(curves)
    fig = figure(8.0, 3.6 * len(panels))
    first = None
    for k, (path, group) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        first = first or ax
        for i, c in enumerate(group):
            ax.plot(c["steps"], c["loss"], linewidth=1.2, linestyle=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)] if len(c["steps"]) < 50 else None, markersize=4,
                    label=c["label"].split(" [")[0], color=framework_color(c["label"].split(" [")[0]))
        names = [c["label"].split(" [")[0] for c in group]
        what = " and ".join(names) if len(names) > 1 else f"{names[0]} only"
        ax.set_title(f"Training loss: {what} ({os.path.relpath(path) if not os.path.isabs(path) else path})",
                     fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)   # steps are whole numbers
        ax.set_xlabel("training step (optimizer updates)")
        ax.set_ylabel("training loss (cross-entropy, nats)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _plot("loss_curves.png", "Training loss per step, one panel per training run (result file); each title "
                                    "names the frameworks drawn in it.", fig, first)


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


TRAINING_CHECKS = ("components", "optimizer", "step", "trajectory")


def training_parity_plot(rows: List[dict]) -> Optional[Plot]:
    """Per result file, one panel per check: for each parameter family, the candidate's and the
    reference's worst error and torch float32's own error (the floor), as shares of the
    family's tolerance, on a log axis with the tolerance (share 1) drawn: a bar above the
    line is a failure, and the report's row says FAIL. An error of exactly 0 is drawn at the
    axis' foot and written 0."""
    files = {}
    for r in rows:
        files.setdefault(r["sources"][0]["path"], []).append(r)
    if not files:
        return None
    checks = [c for c in TRAINING_CHECKS if any(r["check"] == c for rs in files.values() for r in rs)]
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


def make_plots(report: dict) -> List[Plot]:
    data = report["plots_data"]
    plots = [parity_plot(data["parity_layers"]), training_parity_plot(data.get("training_parity") or []),
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
