"""`python -m harness.evaluate`: a real dataset made by make_dataset, faults planted,
interrupted by SIGKILL and resumed, sharded by torchrun and merged, compared across
frameworks. Test-sized inputs (8 frames, 64 px) through the real network."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.evaluate import read_scores
from tests.conftest import ROOT, kill_when, make_videos, run_cli

SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]
PLANTED = {"missing_file": 1, "empty_file": 1, "truncated": 1, "not_a_video": 1, "short_video": 1,
           "unknown_label": 1, "bad_row": 1}
# Identity and accuracy fields; timings and dates differ between runs by nature.
STABLE = ("framework", "arch", "data_preset", "checkpoint_sha256", "n_index", "n_videos", "n_missing",
          "top1", "top5", "mean_class_accuracy", "faults", "spec_hash", "protocol")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400")
    return make_videos(root, 8, 1, 4, faults=True)


@pytest.fixture(scope="module")
def torch_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "torch.json"
    # one thread, as each of the two torchrun shards below gets: torch's float32 results
    # depend on the thread count in their last bits, and the merge test compares bit for bit
    proc = run_cli("harness.evaluate", "--framework", "pt", "--data-root", dataset, *SMALL, "--out", out,
                   "--chunk-videos", "4", "--threads", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), out


def test_summary_has_the_contract_fields_and_counts_every_planted_fault(torch_run):
    summary, out = torch_run
    for key in ("framework", "checkpoint_sha256", "arch", "data_preset", "protocol", "n_videos", "n_missing",
                "top1", "top5", "mean_class_accuracy", "clips_per_s", "model_clips_per_s", "hardware",
                "versions", "spec_hash", "data_wait_share"):
        assert key in summary, key
    assert summary["framework"] == "torch" and summary["protocol"] == "1x1"
    assert summary["checkpoint"].startswith("random (seed 0")
    assert summary["faults"]["counts"] == {**{k: 0 for k in summary["faults"]["counts"]}, **PLANTED}
    listed = {f["kind"]: f["id"] for f in summary["faults"]["list"]}
    assert set(listed) == set(PLANTED)
    # 8 classes x 4 val videos + planted faulty rows; the short video is scored (it loops)
    saved = read_scores(str(out)[:-5] + ".scores")
    assert summary["n_videos"] == len(saved["video_ids"]) == 33
    assert summary["n_missing"] == 6
    assert listed["short_video"] in saved["video_ids"]
    assert saved["scores"].shape == (33, 400)
    np.testing.assert_allclose(saved["scores"].sum(axis=1), 1.0, rtol=1e-5)  # 'prob': softmax, then mean


def test_resume_after_sigkill_equals_an_uninterrupted_run(dataset, torch_run, tmp_path):
    reference, ref_out = torch_run
    out = tmp_path / "killed.json"
    scores_dir = tmp_path / "killed.scores"
    kill_when("harness.evaluate", "--framework", "torch", "--data-root", dataset, *SMALL, "--out", out,
              "--chunk-videos", "2", "--workers", "0", "--threads", "1", "-q",
              ready=lambda: len(list(scores_dir.glob("chunk-*.npz"))) >= 3, timeout=120)
    n_before = len(list(scores_dir.glob("chunk-*.npz")))
    assert 3 <= n_before < 17, "the kill must land mid-run"
    assert not out.exists()

    again = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, *SMALL, "--out", out,
                    "--chunk-videos", "2", "--workers", "0", "--threads", "1", "-q")
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently mixes two runs
    # whatever changes a score is part of the run's identity: another decoder is another run
    other = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, *SMALL, "--out", out,
                    "--chunk-videos", "2", "--workers", "0", "--threads", "1", "-q", "--resume", "--decoder", "pyav")
    assert other.returncode == 2 and "decoder ('decord' -> 'pyav')" in other.stderr
    resumed = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, *SMALL, "--out", out,
                      "--chunk-videos", "2", "--workers", "0", "--threads", "1", "-q", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(out.read_text())
    assert summary["resumed"] is True
    for key in STABLE:
        assert summary[key] == reference[key], key
    a, b = read_scores(str(ref_out)[:-5] + ".scores"), read_scores(str(scores_dir))
    assert a["video_ids"] == b["video_ids"]
    np.testing.assert_array_equal(a["scores"], b["scores"])


def test_torchrun_two_shards_merge_into_the_single_process_run(dataset, torch_run, tmp_path):
    reference, ref_out = torch_run
    out = tmp_path / "dist.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29613", "-m", "harness.evaluate", "--framework", "torch",
                           "--data-root", str(dataset), *SMALL, "--out", str(out), "--workers", "1", "-q"],
                          cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's rendezvous folder
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = sorted(tmp_path.glob("dist.shard*of2.json"))
    assert [s.name for s in shards] == ["dist.shard0of2.json", "dist.shard1of2.json"]
    merged_out = tmp_path / "merged.json"
    merged = run_cli("harness.evaluate", "--merge", *shards, "--out", merged_out)
    assert merged.returncode == 0, merged.stderr
    summary = json.loads(merged_out.read_text())
    for key in STABLE:
        assert summary[key] == reference[key], key
    a, b = read_scores(str(ref_out)[:-5] + ".scores"), read_scores(str(tmp_path / "merged.scores"))
    assert a["video_ids"] == b["video_ids"]
    np.testing.assert_array_equal(a["scores"], b["scores"])
    # a shard missing is refused
    partial = run_cli("harness.evaluate", "--merge", shards[0], "--out", tmp_path / "partial.json")
    assert partial.returncode == 2 and "do not cover" in partial.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--framework", "torch", "--data-root", "/no/such/root"], "/no/such/root"),
    (["--framework", "tf", "--data-root", "."], "unknown framework 'tf'"),
    (["--framework", "torch", "--data-root", ".", "--data-override", "crop=7"], "crop"),
])
def test_bad_input_is_one_line_exit_2(argv, needle):
    proc = run_cli("harness.evaluate", *argv)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_annotations_of_the_wrong_format_exit_2(dataset, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("this is not,a kinetics csv\n1,2\n")
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, "--annotations", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1


def _float64_scores(dataset, weights_path, video_ids):
    """Each video's probabilities from our torch model in float64: the float32 noise floor."""
    import torch

    from frameworks.spec.arch import get_preset
    from frameworks.spec.data_presets import get_data_preset
    from frameworks.torch.model import I3DNL
    from frameworks.torch.weights import load_canonical
    from harness.data import build_index
    from harness.data.loader import load_clips

    cfg = get_preset("i3d_nl_dot_product_r50")
    preset = get_data_preset("mmaction2_val", clip_len=8, short_edge=72, crop_size=64)
    model = I3DNL(cfg).eval()
    with np.load(weights_path) as z:
        load_canonical(model, {k: z[k] for k in z.files}, cfg)
    model.double()
    records = {r.video_id: r for r in build_index(dataset, "val").records}
    out = []
    with torch.no_grad():
        for vid in video_ids:
            clips = load_clips(records[vid].path, preset, video_key=vid).astype(np.float64)
            out.append(preset.combine(model(torch.from_numpy(clips)).numpy()))
    return np.stack(out)


def test_torch_and_mindspore_agree_video_by_video(dataset, torch_run, tmp_path):
    """Same seeded weights, same clips: every top-1 agrees (or is a near-tie), and MindSpore's
    probabilities differ from torch's by no more than float32 itself does: torch float32
    against torch float64 on the same clips sets the bound, since the dot-product blocks
    amplify rounding by an amount that depends on the input."""
    reference, ref_out = torch_run
    out = tmp_path / "ms.json"
    proc = run_cli("harness.evaluate", "--framework", "mindspore", "--data-root", dataset, *SMALL, "--out", out,
                   "--chunk-videos", "4", "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["weights_sha256"] == reference["weights_sha256"]  # the same seeded weights
    assert summary["versions"]["mindspore"].startswith("2.")
    assert summary["faults"] == reference["faults"] and summary["n_videos"] == reference["n_videos"]
    agreement_json = tmp_path / "agreement.json"
    compared = run_cli("harness.evaluate", "--compare", ref_out, out, "--json", agreement_json)
    assert compared.returncode == 0, compared.stderr
    agreement = json.loads(agreement_json.read_text())
    assert agreement["n_common"] == 33 and agreement["same_weights"] and agreement["same_protocol"]
    assert agreement["n_top1_differ"] == agreement["n_near_ties"]  # only near-ties may flip
    assert agreement["top1_agreement"] >= (33 - agreement["n_near_ties"]) / 33

    torch_saved = read_scores(str(ref_out)[:-5] + ".scores")
    exact = _float64_scores(dataset, reference["weights_file"], torch_saved["video_ids"])
    float32_floor = np.abs(torch_saved["scores"] - exact).max()
    assert 0 < float32_floor < 1e-3
    assert agreement["max_abs_delta"] <= 3 * float32_floor, (agreement["max_abs_delta"], float32_floor)


def test_finite_weights_that_overflow_fail_with_exit_1_and_no_accuracy(dataset, torch_run, tmp_path):
    """Scores that are NaN or inf are a failed run (exit 1, one clear line), never an accuracy."""
    from harness.checkpoints.io import write_npz

    with np.load(torch_run[0]["weights_file"]) as z:
        weights = {k: z[k] for k in z.files}
    weights["stem.bn.weight"] = weights["stem.bn.weight"] * np.float32(1e30)  # finite, but overflows
    write_npz(str(tmp_path / "huge.npz"), weights)
    out = tmp_path / "huge.json"
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, *SMALL, "--out", out,
                   "--checkpoint", tmp_path / "huge.npz", "--limit", "3", "--threads", "1", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: 3 of 3 videos")
    summary = json.loads(out.read_text())
    assert summary["n_non_finite"] == 3 and summary["top1"] is None and "non-finite" in summary["accuracy_note"]
