"""harness.align: the band and verdict on hand-made curves, the plot, bad input, and one
real alignment at a tiny size (slow)."""
from __future__ import annotations

import json
import math

import pytest

from harness.align import judge_accuracy, judge_losses, loss_band, overall
from tests.conftest import run_cli

REF = [1.30, 1.20, 1.10, 1.00, 0.90]
BAND = [1.30, 1.20, 1.12, 1.00, 0.90]          # torch at another thread count: 0.02 apart at step 2 only


def test_the_band_is_the_running_max_of_the_torch_spread_with_a_floor():
    band = loss_band([REF, BAND], floor=1e-3)
    assert band["raw"] == pytest.approx([0, 0, 0.02, 0, 0], abs=1e-12)
    assert band["envelope"] == pytest.approx([0, 0, 0.02, 0.02, 0.02], abs=1e-12)
    # the floor is a share of the reference's loss: 1e-3 x 1.3, 1e-3 x 1.2
    assert band["band"] == pytest.approx([1.3e-3, 1.2e-3, 0.02, 0.02, 0.02], abs=1e-12)
    # three runs: the widest pair at each step
    three = loss_band([REF, BAND, [1.30, 1.25, 1.10, 1.00, 0.90]], floor=0.0)
    assert three["raw"] == pytest.approx([0, 0.05, 0.02, 0, 0], abs=1e-12)
    assert three["band"] == pytest.approx([0, 0.05, 0.05, 0.05, 0.05], abs=1e-12)


def test_a_candidate_inside_the_band_passes():
    # errors 0, 0.002, 0.03, 0.07, 0.01 against limits 0.0052, 0.0048, 0.08, 0.08, 0.08
    candidate = [1.30, 1.202, 1.13, 1.07, 0.91]
    r = judge_losses(REF, [BAND], candidate, multiple=4, floor=1e-3)
    assert r["verdict"] == "PASS" and r["first_step_outside"] is None and r["steps"] == 5
    assert r["candidate_error"] == pytest.approx([0, 0.002, 0.03, 0.07, 0.01], abs=1e-12)
    assert r["limit"] == pytest.approx([0.0052, 0.0048, 0.08, 0.08, 0.08], abs=1e-12)
    assert r["max_error_over_band"] == pytest.approx(3.5)        # 0.07 / 0.02 at step 3
    assert r["max_band_raw"] == pytest.approx(0.02) and r["max_candidate_error"] == pytest.approx(0.07)


def test_a_candidate_outside_names_the_first_step_that_leaves():
    # errors 0, 0.005, 0, 0.15, 0 against bands 0.0013, 0.0012, 0.02, 0.02, 0.02
    candidate = [1.30, 1.205, 1.10, 1.15, 0.90]
    r = judge_losses(REF, [BAND], candidate, multiple=4, floor=1e-3)
    assert r["verdict"] == "FAIL" and r["first_step_outside"] == 1 and r["n_steps_outside"] == 2
    assert r["reason"].startswith("step 1: |candidate - reference| 0.005 > 4 x band 0.0012")
    # a wider multiple: step 1 is inside (0.005 <= 0.0072), step 3 still out (0.15 > 0.12); wider still, inside
    six = judge_losses(REF, [BAND], candidate, multiple=6, floor=1e-3)
    assert six["verdict"] == "FAIL" and six["first_step_outside"] == 3 and six["n_steps_outside"] == 1
    assert judge_losses(REF, [BAND], candidate, multiple=8, floor=1e-3)["verdict"] == "PASS"
    # a NaN in the candidate is outside, at its step
    nan = judge_losses(REF, [BAND], [1.30, 1.20, math.nan, 1.0, 0.9], multiple=4, floor=1e-3)
    assert nan["verdict"] == "FAIL" and nan["first_step_outside"] == 2


def test_a_degenerate_band_is_inconclusive():
    same = judge_losses(REF, [list(REF)], [1.3, 1.2, 1.1, 1.0, 0.9], multiple=4, floor=1e-3)
    assert same["verdict"] == "INCONCLUSIVE" and "bit-identical at all 5 steps" in same["reason"]
    assert same["max_band_raw"] == 0.0
    broken = judge_losses(REF, [[1.3, math.inf, 1.1, 1.0, 0.9]], REF, multiple=4, floor=1e-3)
    assert broken["verdict"] == "INCONCLUSIVE" and "not finite" in broken["reason"]
    wide = judge_losses(REF, [[0.1, 0.1, 0.1, 0.1, 0.1]], REF, multiple=4, floor=1e-3)
    assert wide["verdict"] == "INCONCLUSIVE" and "as wide as the loss" in wide["reason"]
    alone = judge_losses(REF, [], REF, multiple=4, floor=1e-3)
    assert alone["verdict"] == "INCONCLUSIVE" and "two torch runs" in alone["reason"]


def test_held_out_accuracy_and_agreement_against_the_torch_spread():
    torch_pairs = [{"top1_diff": 1 / 32, "n_top1_differ": 2}]
    ok = judge_accuracy(torch_pairs, {"top1_diff": -3 / 32, "n_top1_differ": 8}, multiple=4, n_videos=32)
    assert ok["verdict"] == "PASS" and ok["top1_limit"] == pytest.approx(4 / 32) and ok["flips_limit"] == 8
    bad = judge_accuracy(torch_pairs, {"top1_diff": 5 / 32, "n_top1_differ": 9}, multiple=4, n_videos=32)
    assert bad["verdict"] == "FAIL"
    assert bad["reason"] == "top-1 differs by 15.6 points > 4 x 3.1; 9 videos' top-1 differ > 4 x 2"
    # torch runs that agree on every video: the spread is one video's worth, never zero
    floor = judge_accuracy([{"top1_diff": 0.0, "n_top1_differ": 0}], {"top1_diff": 2 / 32, "n_top1_differ": 2},
                           multiple=2, n_videos=32)
    assert floor["verdict"] == "PASS" and floor["top1_spread"] == pytest.approx(1 / 32) and floor["flips_spread"] == 1
    loss_pass = judge_losses(REF, [BAND], REF, multiple=4, floor=1e-3)
    assert overall(loss_pass, ok)[0] == "PASS"
    verdict, reason = overall(loss_pass, bad)
    assert verdict == "FAIL" and reason.startswith("held-out: top-1 differs")
    assert overall(judge_losses(REF, [list(REF)], REF, 4, 1e-3), bad)[0] == "INCONCLUSIVE"


def test_the_plot_draws_every_run_and_the_band(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.align_plot import alignment_plot

    losses = judge_losses(REF, [BAND], [1.30, 1.205, 1.10, 1.09, 0.90], multiple=4, floor=1e-3)
    runs = [{"name": "torch_t1", "role": "reference", "framework": "torch", "threads": 1, "losses": REF},
            {"name": "torch_t2", "role": "band", "framework": "torch", "threads": 2, "losses": BAND},
            {"name": "ms_t1", "role": "candidate", "framework": "ms", "threads": 1,
             "losses": [1.30, 1.205, 1.10, 1.09, 0.90]}]
    doc = {"candidate": "ms_t1", "reference": "torch_t1", "band_runs": ["torch_t2"], "verdict": "FAIL",
           "losses": losses, "runs": runs,
           "provenance": {"cpu": "a CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0], "date": "2025-01-01T00:00:00"}}
    path = alignment_plot(doc, str(tmp_path / "align.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_dropout_is_refused_until_harness_train_can_vary_the_mask_seed_alone(monkeypatch, tmp_path):
    import harness.align as align

    args = align.build_parser().parse_args(["--dropout", "0.5", "--out", str(tmp_path / "o"), "--no-plot"])
    monkeypatch.setattr(align, "train_can_vary_dropout_seed", lambda: False)
    with pytest.raises(align.InputError, match="it needs --dropout-seed"):
        align.request_from(args)
    monkeypatch.setattr(align, "train_can_vary_dropout_seed", lambda: True)
    runs = align.request_from(args).runs()
    assert [(r.name, r.role, r.threads, r.extra) for r in runs] == [
        ("torch_t1", "reference", 1, ["--dropout-seed", "0"]), ("torch_t2", "band", 2, ["--dropout-seed", "0"]),
        ("torch_t1_masks1", "band", 1, ["--dropout-seed", "1"]), ("ms_t1", "candidate", 1, [])]
    # without dropout: no mask run, and no option harness.train may not have
    plain = align.build_parser().parse_args(["--out", str(tmp_path / "p"), "--no-plot"])
    req = align.request_from(plain)
    assert [r.extra for r in req.runs()] == [[], [], []]
    # the candidate's oneDNN was capped at AVX2 on an AVX-512 CPU: one more torch run, with that cap
    capped = {"cpu_isa": "AVX512_CORE", "onednn_max_cpu_isa": "AVX2"}
    isa = align.isa_band_run(req, capped, environ={})
    assert (isa.name, isa.role, isa.framework, isa.threads, isa.env) == (
        "torch_t1_avx2", "band", "torch", 1, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    # none where the candidate's kernels are torch's own: no cap, the same cap for all, or asked not to
    assert align.isa_band_run(req, {"cpu_isa": "AVX2", "onednn_max_cpu_isa": "oneDNN default"}, environ={}) is None
    assert align.isa_band_run(req, capped, environ={"ONEDNN_MAX_CPU_ISA": "avx2"}) is None
    assert align.isa_band_run(req, None, environ={}) is None
    req.isa_band = False
    assert align.isa_band_run(req, capped, environ={}) is None


# ------------------------------------------------------------------ the command
def test_help_and_bad_input_are_one_line(tmp_path):
    proc = run_cli("harness.align", "--help")
    assert proc.returncode == 0 and "--band-threads" in proc.stdout and "keep_prob" in proc.stdout
    out = str(tmp_path / "o")
    for args in (["--dropout", "0.5"], ["--band-threads", "1"], ["--data-override", "nonsense=1"],
                 ["--data-root", str(tmp_path / "none")], ["--data-root", str(tmp_path), "--classes", "2"],
                 ["--size", "97x64"], ["--multiple", "nan"]):
        proc = run_cli("harness.align", *args, "--out", out)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
    assert not (tmp_path / "o" / "train").exists()


@pytest.mark.slow
def test_a_tiny_alignment_runs_every_run_and_judges(tmp_path):
    out = tmp_path / "align"
    proc = run_cli("harness.align", "--out", out, "--classes", "2", "--videos-per-class", "4",
                   "--val-videos-per-class", "2", "--seconds", "2", "--size", "96x72", "--epochs", "1",
                   "--batch-size", "2", timeout=1800)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    doc = json.loads((out / "train_alignment.json").read_text())
    assert doc["kind"] == "train_alignment" and doc["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert proc.returncode == (0 if doc["verdict"] == "PASS" else 1)
    names = [r["name"] for r in doc["runs"]]
    assert names[:2] == ["torch_t1", "torch_t2"] and names[-1] == "ms_t1" and len(names) in (3, 4)
    if len(names) == 4:   # MindSpore's oneDNN capped (an AVX-512 CPU): torch with the same cap in the band
        assert names[2] == "torch_t1_avx2" and doc["runs"][2]["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
        assert doc["candidate_vs_same_isa_torch"]["run"] == "torch_t1_avx2"
    assert all(len(r["losses"]) == 4 and r["eval"]["n_videos"] == 4 for r in doc["runs"])
    # the same initial weights and data in every run: step 0's losses agree to float32 rounding
    first = [r["losses"][0] for r in doc["runs"]]
    assert max(first) - min(first) < 1e-4
    assert len({r["train"]["init_weights_sha256"] for r in doc["runs"]}) == 1
    assert doc["dataset"]["generated"] and len(doc["dataset"]["csv_sha256"]["train"]) == 64
    assert doc["recipe"]["dropout"] == 0.0 and "keep_prob" in doc["dropout_note"]
    assert set(doc["held_out"]["pairs"]) == {f"{name} vs torch_t1" for name in names[1:]}
    assert (out / "train_alignment.png").stat().st_size > 10_000
    assert doc["provenance"]["cpu"] and doc["provenance"]["git"]["commit"]
