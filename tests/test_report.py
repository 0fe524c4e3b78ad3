"""`python -m harness.report`: published numbers from the registry, measured ones recomputed
from saved scores, throughput from benchmark files."""
from __future__ import annotations

import json

import numpy as np

from harness.evaluate import _write_chunk
from harness.report import build_table, render


def test_measured_accuracy_is_recomputed_from_the_saved_scores(tmp_path, monkeypatch):
    digest = "8e1f2148" + "0" * 56  # matches the mmaction2 1.x entry's 8-hex prefix
    scores_dir = tmp_path / "torch_run.scores"
    scores_dir.mkdir()
    # 4 videos: top-1 right for 3 (labels 0,1,2), wrong for the last (label 3 ranked 2nd)
    scores = np.full((4, 400), 0.0, np.float32)
    for i, top in enumerate([0, 1, 2, 5]):
        scores[i, top] = 0.9
    scores[3, 3] = 0.5
    _write_chunk(str(scores_dir), 0, {"positions": [0, 1, 2, 3], "video_ids": list("abcd"), "labels": [0, 1, 2, 3],
                                      "scores": list(scores), "faults": [], "covered_through": 3, "seconds": []})
    summary = {"summary_version": 1, "scores": "torch_run.scores", "shard": [0, 1], "framework": "torch",
               "checkpoint_sha256": digest, "checkpoint": "x.pth", "data_preset": "mmaction2_test_10x3",
               "n_videos": 4, "top1": 0.0, "top5": 0.0, "clips_per_s": 12.5}
    (tmp_path / "torch_run.json").write_text(json.dumps(summary))
    table = build_table(str(tmp_path))
    row = next(r for r in table["accuracy"] if r["checkpoint"] == "i3d_nl_dot_product_r50_mmaction2")
    assert row["measured_in"] == "PyTorch" and row["top1"] == 0.75 and row["top5"] == 1.0
    assert row["published_top1"] == 74.80
    unmeasured = next(r for r in table["accuracy"] if r["checkpoint"] == "i3d_nl_dot_product_r50_caffe2")
    assert unmeasured["measured_in"] == "not measured"
    text = render(table, "github")
    assert "| i3d_nlnet_pytorch | i3d_nl_dot_product_r50_mmaction2 |" in text and "| 75.00 | 100.00 |" in text
    for fmt in ("csv", "json"):
        assert "i3d_nl_dot_product_r50_mindvideo" in render(table, fmt)
    assert r"i3d\_nl\_dot\_product\_r50\_mindvideo & i3d\_nl\_mindvideo\_r50" in render(table, "latex")


def test_missing_results_folder_is_exit_2(cli, tmp_path):
    proc = cli("harness.report", "--results", tmp_path / "none")
    assert proc.returncode == 2 and "no results folder" in proc.stderr
