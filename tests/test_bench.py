"""`python -m harness.bench forward`: warm processes taking turns, flat fields that add up,
and the spec's FLOP count against torch's own counter; the seed recipe's training step
(the trainer's own, interleaved, memory-checked before a larger shape); a failed run is a
failed run (one line, exit 2, nothing written, a good result file never replaced)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess

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
    run = by_label["torch/eager/infer"]["runs"][0]
    assert run["clips_per_s"] > 0
    # the CPU's peak for the one thread used, beside the probe, in the JSON and on stdout
    peak = doc["cpu_peak"]
    assert peak["cores"] == 1 and peak["gflops"] > 0 and peak["read"] and peak["assumed"]
    if peak.get("below_probe"):   # a GEMM beat the formula here: no share of it, and said so
        assert "peak_gflops" not in run and "do not hold on this CPU" in proc.stdout
    else:
        assert run["peak_gflops"] == peak["gflops"] and run["utilisation_of_peak"] == pytest.approx(
            run["achieved_gflops"] / peak["gflops"])
        assert run["utilisation_of_peak"] <= 1
    assert isinstance(run["above_gemm_probe"], bool)
    assert "float32 peak" in proc.stdout and "GEMM probe" in proc.stdout
    assert doc["noise"]["verdict"] in proc.stdout + proc.stderr and not doc["noise"]["suggest_threads_1"]
    assert all(int(x) <= 100 for x in re.findall(r"(\d+)%", proc.stdout))


@pytest.mark.parametrize("argv, message", [
    (["--frameworks", "jax"], "unknown framework"),
    (["--variants", "exact,turbo"], "unknown variant token"),
    (["--variants", "jax:fast"], "is not a framework"),
    (["--frameworks", "mmaction2,ms", "--variants", "inplace"], "does not apply to ms"),
    (["--frameworks", "ms", "--variants", "jit_O0+jit_O1"], "one jit level at a time"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--ms-mode", "eager"], "unknown MindSpore mode"),
    (["--compile", "fastest"], "--compile"),
    (["--recipe", "timm"], "--recipe"),
    (["--warmup", "-1"], "--warmup"),
    (["--train-input-shape", "2,3,8,32"], "N,C,T,H,W"),
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


# ----------------------------------------------------------------------------- peak, shares, noise
def _cpuinfo(tmp_path, flags, vendor="GenuineIntel", family="6", mhz="2100.000", name="cpuinfo"):
    path = tmp_path / name
    block = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: Test CPU\n"
             f"cpu MHz\t\t: {mhz}\nflags\t\t: fpu sse2 {flags}\n\n")
    path.write_text(block + block.replace("processor\t: 0", "processor\t: 1").replace(flags, "sse2"))
    return str(path)


@pytest.mark.parametrize("flags, vendor, family, lanes", [
    ("avx avx2 fma avx512f", "GenuineIntel", "6", 16),     # two 512-bit FMA units: 64 FLOPs per cycle
    ("avx avx2 fma avx512f", "AuthenticAMD", "25", 8),     # Zen 4: 512-bit instructions on 256-bit units
    ("avx avx2 fma avx512f", "AuthenticAMD", "26", 16),    # Zen 5: full 512-bit units
    ("avx avx2 fma", "AuthenticAMD", "23", 8),
])
def test_cpu_peak_reads_the_isa_and_clock_and_names_what_it_assumes(tmp_path, flags, vendor, family, lanes):
    from harness.bench import cpu_peak

    info = _cpuinfo(tmp_path, flags, vendor, family)
    peak = cpu_peak(2, cpuinfo=info, cpufreq_max=str(tmp_path / "absent"))
    assert peak["vector_lanes"] == lanes and peak["fma_units"] == 2
    assert peak["gflops"] == pytest.approx(lanes * 2 * 2 * 2.1 * 2)        # lanes x units x 2 x GHz x cores
    assert any("cpu MHz" in r for r in peak["read"]) and any("FMA units" in a for a in peak["assumed"])
    # the maximum clock, where cpufreq gives one, wins over the clock of the moment
    (tmp_path / "max").write_text("3500000\n")
    assert cpu_peak(1, cpuinfo=info, cpufreq_max=str(tmp_path / "max"))["gflops"] == pytest.approx(lanes * 4 * 3.5)


def test_a_peak_below_a_measured_gemm_is_withdrawn_with_its_reason():
    """ONNX Runtime's MLAS ran a 2048^2 GEMM at 235 GFLOP/s on one core of an AMD EPYC whose
    formula (clock read now, 2.6 GHz; 2 FMA units assumed) gave 166: no share of that peak is
    printed, and the peak line says why."""
    from harness.bench import _withdraw_a_peak_below_the_probe, peak_line

    def doc():
        peak = {"gflops": 166.2, "formula": "16 lanes x 2 units x 2 FLOPs x 2.60 GHz x 1 core", "read": ["x"],
                "assumed": ["2 FMA units"]}
        runs = [{"achieved_gflops": 178.0, "peak_gflops": 166.2, "utilisation_of_peak": 1.07, "above_peak": True}]
        return peak, [{"runs": runs}]

    peak, results = doc()
    _withdraw_a_peak_below_the_probe(peak, 235.4, results)
    assert peak["below_probe"] == 235.4 and set(results[0]["runs"][0]) == {"achieved_gflops"}
    assert "do not hold on this CPU" in peak_line(peak, 235.4)
    peak, results = doc()
    _withdraw_a_peak_below_the_probe(peak, 110.0, results)   # a probe under the peak: kept
    assert "below_probe" not in peak and results[0]["runs"][0]["peak_gflops"] == 166.2
    assert "do not hold" not in peak_line(peak, 110.0)


def test_cpu_peak_says_when_it_cannot_know(tmp_path):
    from harness.bench import cpu_peak, peak_line

    missing = cpu_peak(1, cpuinfo=str(tmp_path / "nope"))
    assert missing["gflops"] is None and "cannot read" in missing["error"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n\n")
    assert cpu_peak(1, cpuinfo=str(arm))["gflops"] is None
    assert "no CPU peak" in peak_line(missing, 50.0) and "50.0 GFLOP/s" in peak_line(missing, 50.0)
    noclock = cpu_peak(1, cpuinfo=_cpuinfo(tmp_path, "avx2 fma", mhz="?"), cpufreq_max=str(tmp_path / "absent"))
    assert any(a.startswith("clock 3.00 GHz") for a in noclock["assumed"])   # assumed, and said so


def test_a_network_faster_than_the_gemm_probe_is_never_shown_above_100_percent(capsys):
    """torch's fast path beat the single 2048 GEMM probe (110% printed before): the share of
    the probe reads "above the GEMM probe", the share of the peak stays a percentage."""
    from harness import bench

    row = {"batch_size": 1, "step_s": [0.5, 0.5, 0.5], "cpu_s": [0.5] * 3, "load_average": [0.5, 0.6, 0.7]}
    run = bench._summarise_row(row, "infer", gflops=55.0, probe=100.0, cores=2, peak=166.0)   # 110 GFLOP/s
    assert run["above_gemm_probe"] and not run["above_peak"] and not run["noisy"]
    assert run["utilisation_of_peak"] == pytest.approx(110 / 166)
    assert bench.share_text(110.0, 100.0, "GEMM probe") == "above the GEMM probe"
    assert bench.share_text(110.0, 166.0, "peak") == "66%" and bench.share_text(None, 1.0, "peak") == "-"
    doc = {"results": [{"label": "torch/eager/fast/infer", "runs": [run]}], "ratios": {}, "gflops_per_clip": 55.0,
           "cpu_peak": {"gflops": 166.0, "formula": "16 lanes x 2 units x 2 FLOPs x 2.60 GHz x 1 core = 166.0 GFLOP/s",
                        "read": ["ISA AVX-512"], "assumed": ["2 FMA units"]},
           "gemm_probe_gflops_best": {"float32": 100.0}, "noise": bench.noise_verdict([], 1, 2)}
    bench._print_table(doc)
    out = capsys.readouterr().out
    shares = [int(x) for x in re.findall(r"(\d+)%", out)]
    assert shares == [66] and "above the GEMM probe" in out
    assert "166.0 GFLOP/s" in out and "assumed: 2 FMA units" in out and "100.0 GFLOP/s" in out


def test_one_noise_line_suggests_one_thread_only_when_threads_were_shared():
    from harness import bench

    steady = bench._summarise_row({"batch_size": 1, "step_s": [1.0, 1.02, 1.01], "load_average": [1.0]},
                                  "infer", 10.0, None, cores=2)
    swung = bench._summarise_row({"batch_size": 1, "step_s": [1.0, 3.1, 1.2], "load_average": [2.9]},
                                 "infer", 10.0, None, cores=2)
    assert not steady["noisy"] and swung["noisy"]
    results = [{"label": "torch/eager/infer", "runs": [swung]}, {"label": "ms/graph/infer", "runs": [steady]}]
    two = bench.noise_verdict(results, threads=2, cores=2)
    assert two["noisy"] and two["suggest_threads_1"] and two["noisy_runs"] == ["torch/eager/infer batch 1"]
    assert "\n" not in two["verdict"] and "--threads 1" in two["verdict"] and "3.10" in two["verdict"]
    one = bench.noise_verdict(results, threads=1, cores=2)
    assert one["noisy"] and not one["suggest_threads_1"] and "--threads 1" not in one["verdict"]
    calm = bench.noise_verdict([{"label": "x", "runs": [steady]}], threads=2, cores=2)
    assert not calm["noisy"] and calm["verdict"].startswith("steady")


# ----------------------------------------------------------------------------- the seed recipe's step
def _seed_bench(cli, out, *argv):
    return cli("harness.bench", "forward", "--mode", "train", "--recipe", "seed", "--threads", "1", *argv,
               "--json", out)


def test_seed_recipe_times_each_trainer_in_turns(cli, tmp_path):
    """The seed's whole step (the trainer's own ``step``) in warm torch and MindSpore graph
    processes taking turns, on two clip shapes; mmaction2, which has no trainer, is recorded
    with the reason; the report reads the file as training rows of the seed recipe."""
    out = tmp_path / "results" / "train.json"
    out.parent.mkdir()
    proc = _seed_bench(cli, out, "--frameworks", "torch,ms,mmaction2", "--train-input-shape", "2,3,8,32,32",
                       "2,3,8,48,48", "--warmup", "1", "--iters", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["train_recipe"]["name"] == "seed" and doc["train_recipe"]["recipe"]["dropout"] == 0.5
    assert doc["train_input_shapes"] == [[2, 3, 8, 32, 32], [2, 3, 8, 48, 48]] and doc["interleaved"]
    by_label = {r["label"]: r for r in doc["results"]}
    for label in ("torch/eager/train", "ms/graph/train"):
        result = by_label[label]
        assert result["recipe"] == "seed" and [run["input_shape"] for run in result["runs"]] == doc["train_input_shapes"]
        for run in result["runs"]:
            assert "error" not in run, run
            assert len(run["step_s"]) == 2 and len(run["warmup_s"]) == 1 and run["first_call_s"] > 0
            assert run["trainer_build_s"] > 0 and run["loss"] > 0 and run["host_rss_peak_mib"] > 0
            assert run["train_ms_per_step"] == pytest.approx(1000 * run["step_s_median"])
    small, large = by_label["torch/eager/train"]["runs"]
    cfg = get_preset("i3d_nl_dot_product_r50")
    assert small["gflops_per_clip"] == pytest.approx(3 * gflops_per_clip(cfg, (3, 8, 32, 32)))   # each its own clip's
    assert large["gflops_per_clip"] == pytest.approx(3 * gflops_per_clip(cfg, (3, 8, 48, 48)))
    refused = by_label["mmaction2/eager/train"]["runs"]
    assert all("mmaction2 has no trainer" in run["error"] for run in refused)
    assert set(doc["ratios"]) == {"train batch 2 float32", "train batch 2 float32 clip 3x8x48x48"}
    from harness.report import build_report

    rows = build_report(str(out.parent))["tables"]["speed"]["rows"]
    assert sorted((r["framework"], r["variant"], r["clip"]) for r in rows) == sorted(
        (fw, f"{mode}+seed recipe", clip) for fw, mode in (("PyTorch", "eager"), ("MindSpore", "graph"))
        for clip in ("3x8x32x32", "3x8x48x48"))
    assert all(r["bench"] == "training" and r["train_ms_per_step"] > 0 for r in rows)


def test_the_seed_recipe_runs_the_exact_network_in_float32_only():
    from harness import bench

    steps = bench.Steps("train", {"recipe": {}, "lrs": [0.1]})
    make = lambda fw, variant="exact", dtype="float32": bench.Config(fw, "eager", dtype, variant, {})  # noqa: E731
    assert steps.refusal(make("torch")) is None and steps.refusal(make("ms")) is None
    assert "--recipe plain" in steps.refusal(make("torch", "fast")) and "bfloat16" in steps.refusal(
        make("torch", dtype="bfloat16"))
    assert "has no trainer" in steps.refusal(make("mmaction2"))
    assert bench.Steps("train").refusal(make("mmaction2", "fast", "bfloat16")) is None   # plain: every one


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_error_line(proc, *needles) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("torch/")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_no_gpu_is_one_line_and_the_committed_result_is_kept(cli, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tests.conftest import ROOT

    good = tmp_path / "train_step_cpu.json"
    shutil.copy(os.path.join(ROOT, "results", "train_step_cpu.json"), good)
    before = digest(good)
    proc = _seed_bench(cli, good, "--device", "gpu", "--frameworks", "torch", "--train-input-shape", "2,3,8,32,32")
    one_error_line(proc, "no configuration could run the benchmark", f"nothing written to {good}",
                   "torch sees no CUDA device")
    assert digest(good) == before                      # was: replaced by a file holding only the error


def test_a_run_where_every_configuration_fails_writes_nothing(cli, tmp_path):
    out = tmp_path / "r.json"
    # one clip of 8x32x32: training-mode BatchNorm gets one value per channel at res5 and refuses
    proc = _seed_bench(cli, out, "--frameworks", "torch", "--train-input-shape", "1,3,8,32,32", "--iters", "1")
    one_error_line(proc, "no configuration could run the benchmark", "Expected more than 1 value per channel")
    assert not out.exists()


def test_warmup_0_times_every_step_after_the_first(cli, tmp_path):
    out = tmp_path / "r.json"
    proc = _seed_bench(cli, out, "--frameworks", "torch", "--train-input-shape", "2,3,8,32,32", "--warmup", "0",
                       "--iters", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["results"][0]["runs"][0]
    assert "warmup_s" not in run and len(run["step_s"]) == 1 and run["first_call_s"] > 0


# ----------------------------------------------------------------------------- memory before a larger shape
def test_memory_is_estimated_by_clip_elements_before_a_larger_shape():
    from harness.bench import memory_verdict

    gib = 2 ** 30
    small = [2, 3, 8, 112, 112]
    seed = [6, 3, 32, 224, 224]
    assert memory_verdict(None, seed, 0, 8 * gib) == (None, None)                       # nothing to scale from
    assert memory_verdict((int(np_prod(seed)), gib), small, 0, 8 * gib) == (None, None)  # not larger
    need, why = memory_verdict((int(np_prod(small)), 0.25 * gib), seed, 0, 64 * gib)
    assert need == pytest.approx(0.25 * gib * 48) and why is None                       # 12 GiB of 64: fits
    need, why = memory_verdict((int(np_prod(small)), 0.25 * gib), seed, 0, 16 * gib)
    assert why.startswith("not tried: estimated 12.0 GiB") and "70% of the 16.0 GiB available" in why
    _, why = memory_verdict((int(np_prod(small)), 0.25 * gib), seed, 4 * gib, 20 * gib)
    assert "beside 4.0 GiB" in why and "--sequential" in why                           # 16 of 20: not beside 4
    assert memory_verdict((int(np_prod(small)), 0.25 * gib), seed, 0, None)[1] is None   # no /proc/meminfo


def np_prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


class _Child:
    def __init__(self):
        self.asked = []

    def request(self, **message):
        self.asked.append(message["op"])
        return {"error": "asked"}


def test_a_shape_that_would_not_fit_is_recorded_and_never_tried(monkeypatch):
    from argparse import Namespace

    from harness import bench

    monkeypatch.setattr(bench, "available_bytes", lambda: 2 ** 30)
    fits, big = bench.Config("torch", "eager", "float32", "exact", {}, "a"), \
        bench.Config("ms", "graph", "float32", "exact", {}, "b")
    fits.child, big.child = _Child(), _Child()
    fits.measured["train"] = (np_prod([2, 3, 8, 32, 32]), 1024.0)          # 1 KiB: 2 KiB at twice the batch
    big.measured["train"] = (np_prod([2, 3, 8, 32, 32]), 2.0 ** 30)       # 1 GiB: 2 GiB at twice the batch
    args = Namespace(warmup=0, iters=1, iters_per_turn=1)
    bench._measure([fits, big], "train", [4, 3, 8, 32, 32], args, bench.Steps("train"))
    assert big.child.asked == [] and fits.child.asked[:2] == ["reset_memory", "prepare"]
    row = big.runs["train"][0]
    assert row["skipped"] and row["error"].startswith("not tried: estimated 2.0 GiB") and row["batch_size"] == 4


# ----------------------------------------------------------------------------- frameworks are the runners' business
def test_bench_compares_no_framework_name():
    """What a framework's configurations are comes from its runner class (bench_*): bench.py
    names no framework, so a new runner is benchmarked by declaring its own."""
    from tests.conftest import ROOT

    found = subprocess.run(["grep", "-nE", '"(torch|ms|mmaction2)"', os.path.join(ROOT, "harness", "bench.py")],
                           capture_output=True, text=True).stdout
    assert found == "", found


def test_a_runner_declaring_nothing_is_timed_once_per_dtype():
    from argparse import Namespace

    from harness import bench

    class Plain:   # a runner class with no bench_* declarations
        name = "plain"

    args = Namespace(dtype=["float32", "bfloat16"])
    assert bench.declared(Plain, "modes", args) == ["default"] and bench.declared(Plain, "tokens") == {}
    assert bench.declared(Plain, "options", set(), "bfloat16", "default", args) == {"dtype": "bfloat16"}
    args = bench.build_parser().parse_args(["forward", "--variants", "fast", "--frameworks", "torch,ms,mmaction2"])
    torch_fast = bench.runner_options("torch", "fast", "float32", args)
    assert torch_fast["fold_bn"] and all(torch_fast["execution"].values()) and torch_fast["channels_last"]
    assert bench.runner_options("ms", "fast", "float32", args, "pynative")["mode"] == "pynative"
    labels = [c.label for c in bench.configurations(["torch", "ms", "mmaction2"], args)]
    assert labels == ["torch/eager/fast", "ms/graph/fast", "mmaction2/eager"]
