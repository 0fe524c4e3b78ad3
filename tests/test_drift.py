"""`python -m harness.drift`: the difference list comes from the spec; every step is the
evaluate run it names (bit for bit, same framework, threads and batch); the path ends at
TO; a difference that changes nothing shows delta 0, a planted one does not; a killed
audit resumes to the same scores; shards merge into the single-process audit.

Test-sized clips (8 frames, 64 px) on a make_dataset set. The lean tests use seeded random
weights (``harness.parity --save-weights``): every equality here holds whatever the weights.
The slow acceptance test trains a small model with ``harness.train`` when it works, and
falls back to the seeded weights otherwise (it says which)."""
from __future__ import annotations

import dataclasses
import json
import shlex

import numpy as np
import pytest

from frameworks.spec.arch import get_preset
from frameworks.spec.data_presets import PRESETS, DataPreset
from harness.drift import Side, build_plan, differences, leaves
from harness.scores import read_scores
from tests.conftest import kill_when, make_videos, run_cli

SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=64", "--data-override", "crop_size=64"]
LEAN_LIMIT = ["--limit", "8"]   # 8 of the 12 videos (classes 0-2): the lean tests stay under a minute
SMALL_DICT = {"clip_len": 8, "short_edge": 64, "crop_size": 64}
SEED_TO_TEST = ["sampling", "frame_interval", "interpolation", "crop", "crop_rounding", "values", "clip_combine",
                "label_order"]
SEED_TO_VAL = ["sampling", "frame_interval", "interpolation", "crop_rounding", "values", "clip_combine", "label_order"]


def side(name, cfg="i3d_nl_dot_product_r50", **overrides) -> Side:
    preset = PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
    return Side(name, overrides, preset, get_preset(cfg))


def scores_of(summary_path):
    return read_scores(str(summary_path)[:-5] + ".scores")


def assert_same_audit(doc, doc_dir, new, new_dir):
    """Two drift results agree: every table row's numbers and every step's per-video scores
    (each result's run summaries are relative to its own folder)."""
    for r_old, r_new in zip(doc["table"], new["table"], strict=True):
        assert r_old["label"] == r_new["label"]
        for key in ("top1", "top5", "mean_class_accuracy", "top1_agreement_with_from", "n_videos"):
            assert r_old[key] == r_new[key], (r_old["label"], key)
    for run_old, run_new in zip(doc["runs"], new["runs"], strict=True):
        a, b = scores_of(doc_dir / run_old["summary"]), scores_of(new_dir / run_new["summary"])
        assert a.video_ids == b.video_ids
        np.testing.assert_array_equal(a.scores, b.scores)


# ----------------------------------------------------------------------------- the spec, no data
def test_differences_come_from_the_dataclass_fields_and_their_metadata():
    diffs = differences(PRESETS["seed_eval"], PRESETS["mmaction2_test_10x3"], "data")
    assert [d.name for d in diffs] == SEED_TO_TEST
    fields = {d.name: [f for f, _, _ in d.fields] for d in diffs}
    assert fields["sampling"] == ["sampler", "num_clips", "offset_seed"]   # one declared group
    assert fields["values"] == ["value_scale", "mean", "std"]              # normalize_op is equal
    assert fields["crop"] == ["crop"]                                       # crop_size 256 on both
    # every field is covered: a declared group, a difference of its own, or a description
    names = {f.name for f in dataclasses.fields(DataPreset)}
    described = {f.name for f in dataclasses.fields(DataPreset) if f.metadata.get("drift") == "describes"}
    assert described == {"name", "source", "known_quirks"}
    assert {p for p, _, _ in leaves(PRESETS["seed_eval"])} == names - described
    # a preset nobody wrote code for is audited: a field without metadata is its own difference
    new = PRESETS["mmaction2_val"].replace(name="new", source="a test", decoder="pyav", short_edge=320,
                                           pre_resize_height=300, known_quirks=("x",))
    assert [(d.name, d.changes()) for d in differences(PRESETS["mmaction2_val"], new, "data")] == [
        ("short_edge", {"short_edge": 320}), ("decoder", {"decoder": "pyav"}),
        ("pre_resize", {"pre_resize_height": 300})]


def test_arch_differences_walk_only_graphs_the_weights_fit(cli):
    assert [d.label for d in differences(get_preset("i3d_nl_dot_product_r50"),
                                         get_preset("i3d_nl_embedded_gaussian_r50"), "arch")] == \
        ["arch.nonlocal_cfg.mode"]
    assert [d.label for d in differences(get_preset("i3d_nl_mindvideo_r50"),
                                         get_preset("i3d_nl_dot_product_r50"), "arch")] == \
        ["arch.conv1_stride", "arch.pool1_stride"]
    proc = cli("harness.drift", "--from", "caffe2_test_10x3", "--to", "mmaction2_test_10x3",
               "--arch-from", "i3d_nl_caffe2_r50", "--arch-to", "i3d_nl_dot_product_r50", "--list")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "identical parameter names and shapes" in lines[0]


def test_the_plan_shares_runs_ends_at_to_and_reports_what_a_preset_refuses():
    plan = build_plan(side("seed_eval", **SMALL_DICT), side("mmaction2_test_10x3", **SMALL_DICT))
    kinds = [s.kind for s in plan.steps]
    assert kinds == ["from"] + ["alone"] * 8 + ["path"] * 8 + ["to"]
    path, to = [s for s in plan.steps if s.kind == "path"], plan.steps[-1]
    assert path[-1].run == to.run and plan.runs[to.run].preset is to.preset   # TO's own preset, its name
    assert path[0].run == plan.steps[1].run                                   # path 1 is "alone: sampling"
    assert len(plan.runs) == 16
    # a difference the preset refuses alone: short_edge 200 under FROM's 224 crop
    plan = build_plan(side("mmaction2_val"), side("mmaction2_val", short_edge=200, crop_size=192))
    alone = {s.label: s for s in plan.steps if s.kind == "alone"}
    assert alone["alone: short_edge"].run is None
    assert "refuses" in alone["alone: short_edge"].invalid and "crop_size 224" in alone["alone: short_edge"].invalid
    assert alone["alone: crop"].run is not None


def test_list_and_bad_input(cli):
    proc = cli("harness.drift", "--from", "seed_eval", "--to", "mmaction2_test_10x3", "--list")
    assert proc.returncode == 0, proc.stderr
    for name in SEED_TO_TEST:
        assert name in proc.stdout
    for argv, needle in [
        (["--from", "seed_eval"], "--to"),
        (["--from", "seed_eval", "--to", "mmaction2_val", "--order", "bogus", "--list"], "bogus"),
        (["--from", "seed_eval", "--to", "mmaction2_val"], "--checkpoint"),
        (["--from", "seed_eval", "--to", "nope"], "invalid choice"),
        (["--from", "seed_eval", "--to", "mmaction2_val", "--to-override", "crop_size=999", "--list"], "crop_size"),
        (["--from", "seed_eval", "--to", "mmaction2_val", "--checkpoint", "x.npz", "--data-root", "."],
         "no such checkpoint file or registry name: x.npz"),
        (["--from", "seed_eval", "--to", "mmaction2_val", "--checkpoint", "README.md", "--data-root", ".",
          "--out", "README.md/d.json"], "README.md is a file, not a folder"),
        (["--merge", "nothing.json", "--out", "/tmp/x.json"], "nothing.json"),
    ]:
        proc = cli("harness.drift", *argv)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "std[2]" not in ln]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (argv, proc.stderr)
        assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- on data
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400")
    return make_videos(root, 4, 2, 3)


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "W.npz"
    proc = run_cli("harness.parity", "--frameworks", "torch", "--reference", "mmaction2", "--input-shape",
                   "1,3,8,64,64", "--save-weights", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def drift(dataset, weights, out, *extra, env=None):
    return run_cli("harness.drift", "--checkpoint", weights, "--data-root", dataset, *SMALL, "--threads", "1",
                   "--workers", "1", "--out", out, "-q", *extra, env=env)


def evaluate_like(command: str, out) -> dict:
    """Run the evaluate command a drift run prints, into ``out``."""
    argv = shlex.split(command)[3:]  # drop "python -m harness.evaluate"
    proc = run_cli("harness.evaluate", *argv, "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(open(out).read())


@pytest.fixture(scope="module")
def lean(dataset, seeded_weights, tmp_path_factory):
    """seed_eval -> mmaction2_val (one view per video: cheap) on seeded weights."""
    out = tmp_path_factory.mktemp("lean") / "drift.json"
    proc = drift(dataset, seeded_weights, out, "--from", "seed_eval", "--to", "mmaction2_val", *LEAN_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), out, proc.stdout


def rows_by_label(doc):
    return {r["label"]: r for r in doc["table"]}


def test_lean_audit_lists_every_difference_and_ends_at_to_bit_for_bit(lean, dataset, seeded_weights, tmp_path):
    doc, out, stdout = lean
    assert doc["kind"] == "drift" and "provenance" in doc
    assert [d["name"] for d in doc["differences"]] == SEED_TO_VAL
    assert doc["path_ends_at_to"] is True
    # 14 runs, 4 distinct samplings: each video's frames read 4 times, not 14
    assert len(doc["runs"]) == 14
    assert doc["decoding"] == {"samplings": 4, "video_decodes": 4 * 8, "step_videos": 14 * 8}
    rows = rows_by_label(doc)
    assert all(r["status"] == "ok" and r["n_videos"] == 8 for r in doc["table"])
    assert "FROM seed_eval" in stdout and "TO mmaction2_val" in stdout
    png = out.parent / "drift.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TO is harness.evaluate on mmaction2_val, bit for bit; so is FROM on seed_eval
    for label, preset in (("TO mmaction2_val", "mmaction2_val"), ("FROM seed_eval", "seed_eval")):
        ref = tmp_path / f"{preset}.json"
        proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, "--checkpoint",
                       seeded_weights, "--data-preset", preset, *SMALL, *LEAN_LIMIT, "--threads", "1", "--out", ref,
                       "-q")
        assert proc.returncode == 0, proc.stderr[-2000:]
        a, b = scores_of(ref), scores_of(out.parent / rows[label]["summary"])
        assert a.video_ids == b.video_ids
        np.testing.assert_array_equal(a.scores, b.scores)
        ev, step = json.loads(ref.read_text()), json.loads((out.parent / rows[label]["summary"]).read_text())
        for key in ("data_preset", "data_preset_hash", "arch_hash", "weights_sha256", "top1", "top5", "faults"):
            assert ev[key] == step[key], key
    path = [r for r in doc["table"] if r["kind"] == "path"]
    assert path[-1]["run"] == rows["TO mmaction2_val"]["run"]


def test_a_grouped_difference_equals_the_evaluate_run_it_prints(lean, tmp_path):
    doc, out, _ = lean
    row = rows_by_label(doc)["alone: values"]   # three tuples and a float through --data-override
    assert "value_scale=1.0" in row["evaluate_command"] and "mean=" in row["evaluate_command"]
    ev = evaluate_like(row["evaluate_command"], tmp_path / "values.json")
    a, b = scores_of(tmp_path / "values.json"), scores_of(out.parent / row["summary"])
    np.testing.assert_array_equal(a.scores, b.scores)
    assert ev["data_preset_hash"] == json.loads((out.parent / row["summary"]).read_text())["data_preset_hash"]


def test_class_order_with_a_matching_label_map_changes_nothing(lean):
    doc, out, _ = lean
    rows = rows_by_label(doc)
    row = rows["alone: label_order"]
    assert row["delta_top1"] == 0 and row["delta_top5"] == 0 and row["delta_mean_class_accuracy"] == 0
    assert row["top1_agreement_with_from"] == 1.0 and row["max_abs_delta_score"] == 0.0
    a, b = scores_of(out.parent / rows["FROM seed_eval"]["summary"]), scores_of(out.parent / row["summary"])
    np.testing.assert_array_equal(a.labels, b.labels)   # make_dataset: class i is i in both numberings


def test_a_planted_wrong_std_shows_a_delta(dataset, seeded_weights, tmp_path):
    out = tmp_path / "planted.json"
    proc = drift(dataset, seeded_weights, out, "--from", "mmaction2_val", "--to", "mmaction2_val",
                 "--to-override", "std=[58.395, 57.12, 65.025]", "--no-plot")   # the seed's 0.255, x 255
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [d["name"] for d in doc["differences"]] == ["values"]
    assert doc["differences"][0]["fields"] == {"std": {"from": [58.395, 57.12, 57.375], "to": [58.395, 57.12, 65.025]}}
    std = rows_by_label(doc)["alone: values"]
    assert std["status"] == "ok" and std["max_abs_delta_score"] > 0
    assert std["top1_agreement_with_from"] < 1.0 or std["delta_top1"] != 0


def test_a_difference_under_which_every_video_fails_is_invalid_alone_not_an_error(dataset, seeded_weights,
                                                                                  tmp_path):
    # 72 px frames: a centre crop of 64 runs, a three crop of 64 cannot (it must span the short side)
    out = tmp_path / "broken.json"
    proc = run_cli("harness.drift", "--checkpoint", seeded_weights, "--data-root", dataset, "--data-override",
                   "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64",
                   "--from", "mmaction2_val", "--to", "mmaction2_val", "--to-override", "crop=three",
                   "--to-override", "short_edge=64", "--threads", "1", "--workers", "1", "--out", out, "-q",
                   "--no-plot", "--limit", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by_label(json.loads(out.read_text()))
    assert rows["alone: crop"]["status"] == "invalid alone"
    assert "every video failed" in rows["alone: crop"]["invalid"] and "three crop" in rows["alone: crop"]["invalid"]
    assert rows["alone: short_edge"]["status"] == rows["TO mmaction2_val"]["status"] == "ok"
    assert "invalid alone" in proc.stdout


def test_every_step_records_the_faults_evaluate_records(seeded_weights, tmp_path):
    """Every planted fault, the short video (used, with the loader's note) among them: each
    step's summary lists what harness.evaluate lists for that preset, and the same scores."""
    root = tmp_path / "faulty"
    make_videos(root, 2, 1, 1, faults=True)
    out = tmp_path / "faulty.json"
    proc = drift(root, seeded_weights, out, "--from", "mmaction2_val", "--to", "mmaction2_val", "--to-override",
                 "std=[58.395, 57.12, 65.025]", "--no-plot", "--chunk-videos", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = tmp_path / "evaluate.json"
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", root, "--checkpoint", seeded_weights,
                   "--data-preset", "mmaction2_val", *SMALL, "--threads", "1", "--out", ref, "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads(ref.read_text())
    assert ev["faults"]["counts"]["short_video"] == 1 and ev["n_missing"] == 6
    for row in json.loads(out.read_text())["table"]:
        step = json.loads((tmp_path / row["summary"]).read_text())
        assert step["faults"] == ev["faults"] and step["n_videos"] == ev["n_videos"] == 3, row["label"]
    from_row = rows_by_label(json.loads(out.read_text()))["FROM mmaction2_val"]
    np.testing.assert_array_equal(scores_of(ref).scores, scores_of(tmp_path / from_row["summary"]).scores)


# ----------------------------------------------------------------------------- resume; slow: shards, acceptance
def test_resume_after_sigkill_equals_the_uninterrupted_audit(lean, dataset, seeded_weights, tmp_path):
    doc, ref_out, _ = lean
    out = tmp_path / "killed.json"
    steps = tmp_path / "killed.steps"
    args = ["--checkpoint", seeded_weights, "--data-root", dataset, *SMALL, "--threads", "1", "--workers", "0",
            "--chunk-videos", "1", "--out", out, "-q", "--from", "seed_eval", "--to", "mmaction2_val", "--no-plot",
            *LEAN_LIMIT]
    kill_when("harness.drift", *args, ready=lambda: len(list(steps.glob("*.scores/chunk-*.npz"))) >= 40,
              timeout=300)
    n_before = len(list(steps.glob("*.scores/chunk-*.npz")))
    assert 40 <= n_before < 8 * 14, "the kill must land mid-run"
    assert not out.exists()
    again = run_cli("harness.drift", *args)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run_cli("harness.drift", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    new = json.loads(out.read_text())
    assert new["resumed"] is True
    assert_same_audit(doc, ref_out.parent, new, tmp_path)


@pytest.mark.slow
def test_two_shards_merge_into_the_single_process_audit(lean, dataset, seeded_weights, tmp_path):
    doc, ref_out, _ = lean
    out = tmp_path / "sharded.json"
    common = ["--from", "seed_eval", "--to", "mmaction2_val", "--no-plot", *LEAN_LIMIT]
    p0 = drift(dataset, seeded_weights, out, *common, "--shard", "0/2")
    p1 = drift(dataset, seeded_weights, out, *common, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert p0.returncode == 0 and p1.returncode == 0, (p0.stderr[-2000:], p1.stderr[-2000:])
    shards = [tmp_path / "sharded.shard0of2.json", tmp_path / "sharded.shard1of2.json"]
    merged = run_cli("harness.drift", "--merge", *shards, "--out", tmp_path / "merged.json")
    assert merged.returncode == 0, merged.stderr[-2000:]
    new = json.loads((tmp_path / "merged.json").read_text())
    assert (tmp_path / "merged.png").exists()
    assert_same_audit(doc, ref_out.parent, new, tmp_path)
    partial = run_cli("harness.drift", "--merge", shards[0], "--out", tmp_path / "partial.json")
    assert partial.returncode == 2 and "do not cover" in partial.stderr


@pytest.fixture(scope="module")
def small_model(dataset, seeded_weights, tmp_path_factory):
    """A model trained on the dataset's train split by harness.train, else the seeded weights."""
    folder = tmp_path_factory.mktemp("train")
    proc = run_cli("harness.train", "--framework", "torch", "--data-root", dataset, "--out", folder,
                   "--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override",
                   "crop_size=64", "--epochs", "25", "--batch-size", "2", "--lr", "0.003", "--warmup-epochs", "1",
                   "--t-max", "25", "--threads", "1", "--workers", "1", "-q")
    checkpoints = sorted(folder.glob("ckpt-*.pth"))
    if proc.returncode == 0 and checkpoints:
        return checkpoints[-1], ["--num-classes", "4"], "trained"
    return seeded_weights, [], f"seeded (harness.train failed: {proc.stderr.strip()[-200:]})"


@pytest.mark.slow
def test_acceptance_seed_eval_to_mmaction2_test_10x3(dataset, small_model, tmp_path):
    weights, extra, what = small_model
    out = tmp_path / "audit.json"
    proc = drift(dataset, weights, out, "--from", "seed_eval", "--to", "mmaction2_test_10x3", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    print(f"weights: {what}\n{proc.stdout}")
    assert [d["name"] for d in doc["differences"]] == SEED_TO_TEST
    rows = rows_by_label(doc)
    assert all(r["status"] == "ok" for r in doc["table"])
    # TO, the path's end, is harness.evaluate with preset B, bit for bit
    to = rows["TO mmaction2_test_10x3"]
    assert [r for r in doc["table"] if r["kind"] == "path"][-1]["run"] == to["run"]
    ref = tmp_path / "B.json"
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", dataset, "--checkpoint", weights,
                   *extra, "--data-preset", "mmaction2_test_10x3", *SMALL, "--threads", "1", "--out", ref, "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(scores_of(ref).scores, scores_of(out.parent / to["summary"]).scores)
    # every single difference equals harness.evaluate with that preset override
    for name in SEED_TO_TEST:
        row = rows[f"alone: {name}"]
        evaluate_like(row["evaluate_command"], tmp_path / f"{name}.json")
        a, b = scores_of(tmp_path / f"{name}.json"), scores_of(out.parent / row["summary"])
        assert a.video_ids == b.video_ids, name
        np.testing.assert_array_equal(a.scores, b.scores, err_msg=name)
    label = rows["alone: label_order"]
    assert label["delta_top1"] == 0 and label["top1_agreement_with_from"] == 1.0
