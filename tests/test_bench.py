"""`python -m harness.bench forward`: warm processes taking turns, flat fields that add up,
and the spec's FLOP count against torch's own counter."""
from __future__ import annotations

import json

import pytest

from frameworks.spec.arch import PRESETS, get_preset
from frameworks.spec.flops import forward_flops, gflops_per_clip, stage_flops

TINY = "1,3,8,32,32"


def _check_runs(doc):
    for result in doc["results"]:
        assert "error" not in result, result
        assert result["threads"] == doc["threads"]                       # equal threads everywhere
        assert result["settings"]["threads"] == doc["threads"]
        assert result["gemm_probe_gflops"] > 0
        for run in result["runs"]:
            assert "error" not in run, run
            steps = run["step_s"]
            assert len(steps) == doc["iters"] and min(steps) > 0 and run["first_call_s"] > 0
            assert run["clips_per_s"] == pytest.approx(run["batch_size"] / run["step_s_median"], rel=1e-12)
            assert run["ms_per_clip"] == pytest.approx(1000 * run["step_s_median"] / run["batch_size"], rel=1e-12)
            assert run["achieved_gflops"] == pytest.approx(run["gflops_per_clip"] * run["clips_per_s"], rel=1e-12)
            assert run["utilisation"] == pytest.approx(run["achieved_gflops"] / result["gemm_probe_gflops"], rel=1e-12)
            assert run["step_s_min"] <= run["step_s_median"] <= run["step_s_p90"] <= run["step_s_max"]
            assert run["host_rss_peak_mib"] > 0 and run["load_average"]["max"] >= run["load_average"]["min"]
            assert isinstance(run["noisy"], bool)
            expected = doc["gflops_per_clip"] * (3 if result["task"] == "train" else 1)
            assert run["gflops_per_clip"] == pytest.approx(expected)
            if result["task"] == "train":
                assert run["train_ms_per_step"] == pytest.approx(run["latency_ms_median"])


def test_each_framework_and_mode_interleaved(cli, tmp_path):
    """torch, MindSpore and mmaction2, inference and a training step, on a tiny clip: the
    acceptance check of the JSON (positive numbers, fields that add up, equal threads)."""
    out = tmp_path / "bench.json"
    proc = cli("harness.bench", "forward", "--frameworks", "torch,ms,mmaction2", "--mode", "both",
               "--input-shape", TINY, "--train-batch-sizes", "2", "--warmup", "0", "--iters", "2", "--threads", "1",
               "--json", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["kind"] == "bench_forward" and doc["parameters"] == 35_397_840 and doc["interleaved"]
    assert doc["gflops_per_clip"] == pytest.approx(gflops_per_clip(get_preset("i3d_nl_dot_product_r50"), (3, 8, 32, 32)))
    assert doc["flops_torch_counter_per_clip"] == pytest.approx(doc["gflops_per_clip"] * 1e9, rel=1e-3)
    assert doc["train_gflops_per_clip"] == pytest.approx(3 * doc["gflops_per_clip"])
    assert {r["label"] for r in doc["results"]} == {f"{fw}/{task}" for fw in ("torch/eager", "ms/graph",
                                                                               "mmaction2/eager")
                                                    for task in ("infer", "train")}
    _check_runs(doc)
    by_label = {r["label"]: r for r in doc["results"]}
    assert by_label["ms/graph/infer"]["hardware"]["onednn_max_cpu_isa"]
    assert "torch" in by_label["torch/eager/infer"]["versions"]
    ratios = doc["ratios"]["infer batch 1 float32"]
    assert ratios["baseline"] == "mmaction2/eager" and ratios["throughput_vs_baseline"]["mmaction2/eager"] == 1.0
    assert set(doc["relative_to_first"]) >= {"torch/eager", "ms/graph"}
    assert "threads 1" in proc.stdout and "clips/s" in proc.stdout


@pytest.mark.slow
def test_fast_variants_side_by_side(cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("harness.bench", "forward", "--frameworks", "torch,ms", "--variants", "exact,fast",
               "--input-shape", TINY, "--batch-sizes", "1,2", "--warmup", "0", "--iters", "2", "--threads", "1",
               "--json", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    _check_runs(doc)
    by_label = {r["label"]: r for r in doc["results"]}
    assert set(by_label) == {"torch/eager/infer", "torch/eager/fast/infer", "ms/graph/infer", "ms/graph/fast/infer"}
    fast = by_label["torch/eager/fast/infer"]["settings"]
    assert fast["fold_bn"] is True and fast["channels_last_3d"] is True and all(fast["execution"].values())
    assert by_label["ms/graph/fast/infer"]["settings"]["execution"] == {"reassociate_nonlocal": True}
    assert [run["batch_size"] for run in by_label["ms/graph/fast/infer"]["runs"]] == [1, 2]


def test_what_a_framework_cannot_run_is_recorded_and_the_rest_goes_on(cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("harness.bench", "forward", "--frameworks", "torch", "--dtype", "float32,tf32",
               "--input-shape", TINY, "--warmup", "0", "--iters", "1", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    by_label = {r["label"]: r for r in doc["results"]}
    assert "CUDA" in by_label["torch/eager/tf32/infer"]["error"]
    assert by_label["torch/eager/infer"]["runs"][0]["clips_per_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--frameworks", "jax"], "unknown framework"),
    (["--variants", "exact,turbo"], "unknown variant token"),
    (["--frameworks", "mmaction2,ms", "--variants", "inplace"], "does not apply to ms"),
    (["--dtype", "float8"], "unknown dtype"),
])
def test_bad_options_are_one_line_exit_2(cli, argv, message):
    proc = cli("harness.bench", "forward", *argv)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def test_spec_flops_equal_torch_flop_counter():
    """The formula over the stage plan against torch's FlopCounterMode, on two presets at
    the real clip size (meta tensors: shapes only) and every preset at a small one."""
    torch = pytest.importorskip("torch")
    from frameworks.torch import fast
    from frameworks.torch.model import I3DNL

    cases = [(name, (1, 3, 32, 224, 224)) for name in ("i3d_nl_dot_product_r50", "i3d_nl_mindvideo_r50")]
    cases += [(name, (2, 3, 8, 224, 224) if PRESETS[name].head == "conv_softmax_avg" else (2, 3, 8, 64, 64))
              for name in PRESETS]
    for name, shape in cases:
        cfg = PRESETS[name]
        with torch.device("meta"):
            model = I3DNL(cfg).eval()
        counted = fast.count_flops(model, shape)
        assert forward_flops(cfg, shape) == pytest.approx(counted, rel=0.01), name
        # the reassociated dot-product block, as the fast path runs it
        model.set_execution(reassociate_nonlocal=True)
        assert forward_flops(cfg, shape, reassociate=True) == pytest.approx(fast.count_flops(model, shape),
                                                                            rel=0.01), name
    per_stage = stage_flops(PRESETS["i3d_nl_dot_product_r50"], (1, 3, 32, 224, 224))
    assert per_stage["pool1"] == 0 and per_stage["res3.1.non_local"] > 0
    assert gflops_per_clip(PRESETS["i3d_nl_dot_product_r50"], (3, 32, 224, 224)) == pytest.approx(88.677, abs=1e-3)
