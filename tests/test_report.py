"""`python -m harness.report`: published numbers from the registry, measured ones recomputed
from saved scores, throughput from benchmark files."""
from __future__ import annotations

import json

import numpy as np

from harness.scores import Chunk, write_chunk
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
    write_chunk(str(scores_dir), 0, Chunk([0, 1, 2, 3], list("abcd"), [0, 1, 2, 3], list(scores)), 400)
    summary = {"summary_version": 2, "scores": "torch_run.scores", "shard": [0, 1], "framework": "torch",
               "arch": "i3d_nl_dot_product_r50",
               "checkpoint_sha256": digest, "checkpoint": "x.pth", "data_preset": "mmaction2_test_10x3",
               "n_videos": 4, "top1": 0.0, "top5": 0.0, "clips_per_s": 12.5}
    (tmp_path / "torch_run.json").write_text(json.dumps(summary))
    table = build_table(str(tmp_path))
    row = next(r for r in table["accuracy"] if r["checkpoint"] == "i3d_nl_dot_product_r50_mmaction2")
    assert row["measured_in"] == "PyTorch" and row["top1"] == 0.75 and row["top5"] == 1.0
    assert row["published_top1"] == 74.80
    unmeasured = next(r for r in table["accuracy"] if r["checkpoint"] == "i3d_nl_embedded_gaussian_r50_caffe2")
    assert unmeasured["measured_in"] == "not measured"
    text = render(table, "github")
    assert "| i3d_nlnet_pytorch | i3d_nl_dot_product_r50_mmaction2 |" in text and "| 75.00 | 100.00 |" in text
    for fmt in ("csv", "json"):
        assert "i3d_nl_dot_product_r50_mindvideo" in render(table, fmt)
    assert r"i3d\_nl\_dot\_product\_r50\_mindvideo & i3d\_nl\_mindvideo\_r50" in render(table, "latex")


def test_missing_results_folder_is_exit_2(cli, tmp_path):
    proc = cli("harness.report", "--results", tmp_path / "none")
    assert proc.returncode == 2 and "no results folder" in proc.stderr


def _summary(tmp_path, name, **fields):
    from harness.scores import Chunk, write_chunk

    scores_dir = tmp_path / f"{name}.scores"
    scores_dir.mkdir()
    write_chunk(str(scores_dir), 0, Chunk([0], ["a"], [0], [np.eye(400, dtype=np.float32)[0]]), 400)
    doc = {"summary_version": 2, "scores": f"{name}.scores", "shard": [0, 1], "framework": "torch",
           "arch": "i3d_nl_dot_product_r50", "data_preset": "mmaction2_test_10x3", "checkpoint": "x.pth",
           "checkpoint_sha256": "8e1f2148" + "0" * 56, **fields}
    (tmp_path / f"{name}.json").write_text(json.dumps(doc))


def test_a_run_of_another_arch_is_not_listed_under_a_checkpoint(tmp_path):
    """The same file evaluated on another graph is not a measurement of the published model."""
    _summary(tmp_path, "right")
    _summary(tmp_path, "wrong_arch", arch="i3d_nl_mindvideo_r50")
    rows = [r for r in build_table(str(tmp_path))["accuracy"] if r["checkpoint"] == "i3d_nl_dot_product_r50_mmaction2"]
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["right.json"]


def test_odd_result_files_are_skipped_with_a_warning_not_a_traceback(tmp_path, cli):
    _summary(tmp_path, "null_sha", checkpoint_sha256=None)
    (tmp_path / "bench.json").write_text(json.dumps({"benchmark": "forward", "results": [{"framework": "torch"}]}))
    (tmp_path / "list.json").write_text("[1, 2]")
    registry = tmp_path / "registry.toml"
    registry.write_text('[bare]\norigin = "x"\nurl = "http://x/y.pth"\nfilename = "y.pth"\nformat = "mmaction2"\n'
                        'arch = "i3d_r50"\ndata_preset = "mmaction2_val"\nframework_row = "pytorch"\npublished = {}\n')
    proc = cli("harness.report", "--results", tmp_path, env={"NLPARITY_REGISTRY": str(registry)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "skipped" in proc.stderr and "bench.json" in proc.stderr
    assert "| i3d_nlnet_pytorch | bare | i3d_r50 | - | - | not measured |" in proc.stdout
