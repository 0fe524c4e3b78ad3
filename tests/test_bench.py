"""`python -m harness.bench`: each framework timed in its own process, results as data."""
from __future__ import annotations

import json


def test_forward_benchmark_writes_both_frameworks_with_provenance(cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("harness.bench", "--frameworks", "torch,ms", "--input-shape", "1,3,8,64,64", "--batch-sizes", "1,2",
               "--warmup", "1", "--iters", "2", "--json", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["parameters"] == 35_397_840 and doc["arch"] == "i3d_nl_dot_product_r50" and doc["date"]
    by_framework = {r["framework"]: r for r in doc["results"]}
    assert set(by_framework) == {"torch", "ms"}
    assert by_framework["ms"]["hardware"]["onednn_max_cpu_isa"]  # which oneDNN ISA MindSpore used
    assert "torch" in by_framework["torch"]["versions"] and "mindspore" in by_framework["ms"]["versions"]
    for result in doc["results"]:
        assert [run["batch_size"] for run in result["runs"]] == [1, 2]
        for run in result["runs"]:
            assert len(run["step_s"]) == 2 and run["clips_per_s"] > 0
            assert abs(run["clips_per_s"] - run["batch_size"] / run["step_s_median"]) < 1e-9
    assert set(doc["relative_to_first"]) == {"torch/eager", "ms/graph"}


def test_unknown_framework_is_one_line_exit_2(cli):
    proc = cli("harness.bench", "--frameworks", "jax")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown framework" in proc.stderr
