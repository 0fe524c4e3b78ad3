"""The report's plots tell the truth about what they draw: a panel holds only what was
measured together (one result file, one machine) and is titled with it; throughput is drawn
on a linear axis with each bar's ratio written on it and noisy timings marked; every series
of a parity panel is visible; a loss plot's title names the curves it draws. Each check reads
what matplotlib drew (:func:`harness.plots.describe`), not what the code meant to draw."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from harness import plots
from harness.report import build_report
from tests.conftest import ROOT


def _bench(path, cpu, threads, runs, noisy=()):
    """A forward benchmark as harness.bench writes it: results[].runs[] with step_s."""
    results = []
    for (framework, variant), step in runs.items():
        run = {"batch_size": 1, "input_shape": [1, 3, 32, 224, 224], "step_s": [step] * 3,
               "load_average": {"min": 1.0, "median": 1.5, "max": 3.5 if framework in noisy else 1.6},
               "noisy": framework in noisy}
        if framework in noisy:
            run["noise"] = "load average 3.50 > 2 cores"
        results.append({"framework": framework, "mode": "eager" if framework != "ms" else "graph",
                        "variant": variant, "dtype": "float32", "device": "cpu", "task": "infer",
                        "hardware": {"device": "cpu", "cpu": cpu, "threads": str(threads)}, "runs": [run]})
    path.write_text(json.dumps({"kind": "bench_forward", "benchmark": "forward", "arch": "i3d_nl_dot_product_r50",
                                "interleaved": True, "input_shape": [1, 3, 32, 224, 224], "results": results}))


@pytest.fixture
def report(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    # two machines, two files: a 2.4x ratio inside one, never a ratio across them
    _bench(res / "bench_small.json", "Small CPU", 2, {("torch", "exact"): 0.6, ("ms", "exact"): 1.44},
           noisy=("ms",))
    _bench(res / "bench_big.json", "Big CPU", 16, {("torch", "exact"): 0.06})
    for name in ("parity_ms_vs_torch_cpu.json", "gpu_h200_torch_device_check.json"):
        shutil.copy(os.path.join(ROOT, "results", name), res / name)
    (res / "train.json").write_text(json.dumps({
        "kind": "train", "framework": "torch", "arch": "i3d_nl_dot_product_r50",
        "curve": [{"step": i + 1, "loss": v} for i, v in enumerate([1.4, 1.2, 0.9, 0.7])]}))
    (res / "train_parity.json").write_text(json.dumps({
        "kind": "train_parity", "losses": {"torch": [2.0, 1.8, 1.7], "ms": [2.0, 1.81, 1.69]}}))
    return build_report(str(res))


def _by_name(report):
    return {p.name: p for p in plots.make_plots(report)}


def test_throughput_panels_hold_one_file_and_one_machine_on_a_linear_axis(report, tmp_path):
    plot = _by_name(report)["throughput.png"]
    titles = [p["title"] for p in plot.panels]
    small = next(p for p in plot.panels if p["title"].startswith("bench_small.json"))
    assert any(t.startswith("bench_big.json: Big CPU") for t in titles)
    for panel in plot.panels:
        assert panel["xscale"] == "linear"
        files = re.findall(r"[\w.-]+\.json", panel["title"])
        assert len(files) == 1, panel["title"]   # one result file per panel, named in its title
        assert len({t.split(" clips/s")[0] for t in panel["texts"]}) == len(panel["bars"])
    # the ratio inside a panel is written on the bar and is the ratio of the bars' lengths
    torch_bar, ms_bar = small["bars"]
    assert torch_bar["width"] / ms_bar["width"] == pytest.approx(2.4)
    ms_text = next(t for t in small["texts"] if t.strip().startswith(f"{ms_bar['width']:.3g}"))
    assert "0.42x" in ms_text and "NOISY" in ms_text and ms_bar["hatch"] and not torch_bar["hatch"]
    assert any("reference" in t for t in small["texts"])
    assert "hatched" in plot.caption
    (tmp_path / "throughput.png").write_bytes(plot.png)


def test_every_parity_series_is_visible_and_identical_ones_are_said_to_be(report):
    plot = _by_name(report)["parity_layers.png"]
    assert len(plot.panels) == 2   # the CPU parity file and the GPU device check: two runs, two panels
    cpu = next(p for p in plot.panels if p["title"].startswith("parity_ms_vs_torch_cpu.json"))
    series = [ln for ln in cpu["lines"] if "tolerance" not in ln["label"]]
    assert len(series) == 2
    styles = {(ln["marker"], ln["linestyle"]) for ln in series}
    assert len(styles) == 2                                   # told apart by marker and line style
    assert series[0]["x"] != series[1]["x"]                    # and shifted: neither covers the other
    assert series[0]["y"] == series[1]["y"]                    # graph and pynative are bit-identical ...
    assert any("identical to" in label for label in cpu["legend"])   # ... and the legend says so
    for panel in plot.panels:
        assert panel["yscale"] == "log" and "log scale" in panel["ylabel"]


def test_loss_titles_name_what_is_drawn(report):
    plot = _by_name(report)["loss_curves.png"]
    assert len(plot.panels) == 2
    for panel in plot.panels:
        drawn = [ln["label"] for ln in panel["lines"]]
        assert sorted(panel["legend"]) == sorted(drawn)
        assert "both" not in panel["title"]
        if len(drawn) == 1:
            assert f"{drawn[0]} only" in panel["title"]
        else:
            assert all(name in panel["title"] for name in drawn)
            assert len({(ln["marker"], ln["linestyle"]) for ln in panel["lines"]}) == len(drawn)
    single = next(p for p in plot.panels if len(p["lines"]) == 1)
    assert "PyTorch only" in single["title"] and "train.json" in single["title"]


def test_the_committed_results_plot_without_mixing_runs(tmp_path):
    """The plots of results/ as committed: each throughput panel one file and one device."""
    report = build_report(os.path.join(ROOT, "results"))
    by_name = _by_name(report)
    for panel in by_name["throughput.png"].panels:
        assert panel["xscale"] == "linear" and len(re.findall(r"[\w.-]+\.json", panel["title"])) == 1
    devices = {p["title"].split(": ", 1)[1].split(",")[0] for p in by_name["throughput.png"].panels}
    assert {"NVIDIA H200", "Intel(R) Xeon(R) Processor"} <= devices
    paths = plots.write_plots(list(by_name.values()), str(tmp_path / "plots"))
    assert sorted(os.path.basename(p) for p in paths) == sorted(by_name)
