"""`python -m harness.train`: the recipe as data, the training pipeline, checkpoints with
optimiser state, SIGKILL then --resume, torchrun data parallel, MindSpore's training step.
Test-sized inputs (8 frames at 64x64) through the real network."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from frameworks.spec.arch import get_preset, parameter_specs
from frameworks.spec.data_presets import PRESETS, get_train_preset
from frameworks.spec.train import (TrainRecipe, decay_groups, get_recipe, initial_weights, lr_at, lr_schedule,
                                   parameter_kind, steps_per_epoch, trainable_names, weight_decay_of)
from tests.conftest import ROOT, kill_when, make_videos, run_cli

SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]
CFG = get_preset("i3d_nl_dot_product_r50")


# ------------------------------------------------------------------ the recipe (no framework)
def test_the_seed_recipe_is_the_default():
    r = get_recipe()
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs, r.dropout) == \
        ("sgd", 3e-4, 0.9, 1e-4, 6, 5, 0.5)
    assert (r.warmup_epochs, r.cosine_t_max_epochs, r.eta_min, r.no_decay, r.bn_momentum) == (1.0, 100.0, 0.0,
                                                                                               ("bn",), 0.1)
    assert TrainRecipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    for bad in ({"lr": -1.0}, {"lr": float("nan")}, {"no_decay": ("gamma",)}, {"bn_mode": "sync"},
                {"batch_size": 0}, {"dropout": 1.0}, {"bn_momentum": 0.0}):
        with pytest.raises(ValueError):
            r.replace(**bad)


def test_lr_schedule_is_the_seeds_warmup_then_per_epoch_cosine():
    r = get_recipe()
    lrs = lr_schedule(r, steps_per_epoch=4)
    assert lrs.dtype == np.float32 and len(lrs) == 5 * 4
    # warm-up: lr * (i + 1) / warmup_steps, reaching lr at the last warm-up step
    np.testing.assert_allclose(lrs[:4], [0.75e-4, 1.5e-4, 2.25e-4, 3e-4], rtol=1e-6)
    # then eta_min + (lr - eta_min)(1 + cos(pi e / t_max)) / 2, constant within epoch e
    for e in range(1, 5):
        expected = 3e-4 * (1 + math.cos(math.pi * e / 100)) / 2
        np.testing.assert_allclose(lrs[4 * e:4 * e + 4], expected, rtol=1e-6)
    r2 = r.replace(cosine_t_max_epochs=5, cosine_granularity="step", eta_min=0.0)
    assert lr_at(r2, 4, 4) == pytest.approx(3e-4) and lr_at(r2, 4 + 20, 4) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(r.replace(lr_schedule="constant"), 7, 4) == 3e-4
    assert steps_per_epoch(13, 6) == 2
    with pytest.raises(ValueError):
        steps_per_epoch(5, 6)


def test_weight_decay_rule_names_every_parameter_by_kind():
    kinds = {n: parameter_kind(n) for n in trainable_names(CFG)}
    assert kinds["stem.bn.weight"] == kinds["res2.0.bn1.bias"] == kinds["res3.1.non_local.bn.weight"] == "bn"
    assert kinds["res2.0.downsample.bn.bias"] == "bn"
    assert kinds["head.fc.bias"] == kinds["res3.1.non_local.theta.bias"] == "bias"
    assert kinds["stem.conv.weight"] == kinds["head.fc.weight"] == "weight"
    r = get_recipe()
    groups = decay_groups(r, CFG)
    assert set(groups) == {1e-4, 0.0}
    assert all(kinds[n] == "bn" for n in groups[0.0]) and all(kinds[n] != "bn" for n in groups[1e-4])
    assert sum(len(v) for v in groups.values()) == len(trainable_names(CFG))
    assert weight_decay_of(r.replace(no_decay=("bn", "bias")), "head.fc.bias") == 0.0
    assert weight_decay_of(r.replace(no_decay=()), "stem.bn.weight") == 1e-4


def test_initial_weights_are_mmaction2s_and_seeded():
    w = initial_weights(CFG, 0)
    assert {k: v.shape for k, v in w.items()} == parameter_specs(CFG)
    assert all(v.dtype == np.float32 for v in w.values())
    assert not w["res2.0.bn3.weight"].any() and not w["res3.1.non_local.bn.weight"].any()   # zero_init_residual
    assert (w["res2.0.bn1.weight"] == 1).all() and (w["stem.bn.running_var"] == 1).all()
    assert abs(float(w["stem.conv.weight"].std()) - math.sqrt(2 / (64 * 5 * 7 * 7))) < 2e-3
    assert np.array_equal(w["stem.conv.weight"], initial_weights(CFG, 0)["stem.conv.weight"])
    assert not np.array_equal(w["stem.conv.weight"], initial_weights(CFG, 1)["stem.conv.weight"])


def test_the_seed_train_pipeline_is_seeded_per_video_and_epoch():
    preset = get_train_preset()
    assert (preset.crop, preset.crop_size, preset.flip_prob, preset.frame_interval, preset.short_edge) == \
        ("random", 224, 0.5, 6, 256)
    assert "seed_train" not in PRESETS      # evaluation presets stay evaluation presets
    small = preset.replace(clip_len=8, short_edge=72, crop_size=64)
    frames = np.random.default_rng(0).integers(0, 256, (8, 96, 128, 3), dtype=np.uint8)
    a = small.views_uint8(frames, "v@0")
    assert a.shape == (1, 8, 64, 64, 3)
    assert np.array_equal(a, small.views_uint8(frames, "v@0"))
    epochs = [small.views_uint8(frames, f"v@{e}") for e in range(8)]
    assert len({x.tobytes() for x in epochs}) == 8                       # new crop (and flip) every epoch
    flipped = [e for e in range(8) if not np.array_equal(
        epochs[e], small.replace(flip_prob=0.0).views_uint8(frames, f"v@{e}"))]
    assert 0 < len(flipped) < 8                                          # about half the epochs flip
    assert not np.array_equal(small.frame_indices(300, "v@0"), small.frame_indices(300, "v@1"))


def test_train_plan_splits_each_global_batch_over_processes():
    from harness.data import DatasetIndex, VideoRecord
    from harness.data.index import FaultLog
    from harness.train_data import TrainPlan
    from frameworks.spec.labels import LabelMap

    index = DatasetIndex([VideoRecord(f"v{i}", f"/x/v{i}.mp4", i % 2) for i in range(10)], LabelMap(("a", "b")),
                         FaultLog())
    one = TrainPlan(index, 4, 2, 3, seed=0)
    two = [TrainPlan(index, 4, 2, 3, seed=0, rank=r, world=2) for r in range(2)]
    for step in range(6):
        whole = [key for _, key in one.step_records(step)]
        assert whole == [key for p in two for _, key in p.step_records(step)]
        assert all(key.endswith(f"@{step // 2}") for key in whole)
    epoch0 = {k for s in (0, 1) for _, k in one.step_records(s)}
    assert len(epoch0) == 8                                   # 10 videos, 2 full batches of 4, no repeats
    with pytest.raises(ValueError):
        TrainPlan(index, 3, 2, 1, world=2)


# ------------------------------------------------------------------ the command
def test_help_and_bad_input(tmp_path):
    proc = run_cli("harness.train", "--help")
    assert proc.returncode == 0 and "seed_finetune" in proc.stdout and "--resume" in proc.stdout
    for args in (["--framework", "torch", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                 ["--framework", "caffe", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")],
                 ["--framework", "torch", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--lr", "nan"],
                 ["--framework", "torch", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                  "--no-decay", "gamma"]):
        proc = run_cli("harness.train", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400train")
    return make_videos(root, 2, 4, 1, size="96x72")


def _train_args(dataset, out, *extra):
    return ["--framework", "torch", "--data-root", str(dataset), "--out", str(out), *SMALL, "--batch-size", "2",
            "--epochs", "2", "--lr", "0.01", "--threads", "1", "--workers", "1", "-q", *extra]


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    proc = run_cli("harness.train", *_train_args(dataset, out, "--save-every", "1", "--max-steps", "5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "train.json").read_text())


def test_a_run_writes_checkpoints_with_optimiser_state_and_a_result(uninterrupted):
    import torch

    from harness.checkpoints import load_weights

    out, summary = uninterrupted
    assert summary["kind"] == "train" and "provenance" in summary and summary["steps_done"] == 5
    assert summary["steps_per_epoch"] == 4 and summary["total_steps"] == 8 and summary["num_classes"] == 2
    curve = summary["curve"]
    assert [r["step"] for r in curve] == list(range(5)) and all(np.isfinite(r["loss"]) for r in curve)
    np.testing.assert_allclose([r["lr"] for r in curve], lr_schedule(get_recipe(lr=0.01, epochs=2, batch_size=2),
                                                                     4)[:5], rtol=1e-6)
    kept = sorted(p.name for p in out.glob("ckpt-*.pth"))
    assert kept == ["ckpt-000004.pth", "ckpt-000005.pth"]        # --keep 2
    state = torch.load(out / "ckpt-000005.pth", weights_only=True)
    assert state["meta"]["step"] == 5 and state["meta"]["classes"] == (out / "classes.txt").read_text().split("\n")[:2]
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(buffers) == len(trainable_names(CFG)) and all(b.abs().sum() > 0 for b in buffers[:5])
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {1e-4, 0.0}
    loaded = load_weights(str(out / "ckpt-000005.pth"), get_preset("i3d_nl_dot_product_r50", num_classes=2))
    assert loaded.arrays["head.fc.weight"].shape == (2, 2048)
    assert json.loads((out / "ckpt-000005.pth.nlparity.json").read_text())["num_classes"] == 2
    state_json = json.loads((out / "state.json").read_text())
    assert state_json["step"] == 5 and state_json["checkpoint"] == "ckpt-000005.pth"


def test_sigkill_then_resume_gives_the_uninterrupted_run(dataset, uninterrupted, tmp_path):
    ref_out, reference = uninterrupted
    out = tmp_path / "killed"
    state = out / "state.json"
    kill_when("harness.train", *_train_args(dataset, out, "--save-every", "1", "--max-steps", "5"),
              ready=lambda: state.exists() and json.loads(state.read_text())["step"] >= 2, timeout=300)
    killed_at = json.loads(state.read_text())["step"]
    assert 2 <= killed_at < 5, "the kill must land mid-run"
    assert not (out / "train.json").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".") and p != ".lock"], "no partial file left behind"
    assert int((out / ".lock").read_text()) > 0          # the dead run's lock file: it must not block --resume
    again = run_cli("harness.train", *_train_args(dataset, out, "--save-every", "1", "--max-steps", "5"))
    assert again.returncode == 2 and "--resume" in again.stderr          # no silent restart over a run
    resumed = run_cli("harness.train", *_train_args(dataset, out, "--save-every", "1", "--max-steps", "5",
                                                    "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["resumed_from"] == killed_at and summary["steps_done"] == 5
    got = [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in summary["curve"]]
    want = [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in reference["curve"]]
    assert got == want                         # bit for bit: same batches, dropout masks, optimiser state
    changed = run_cli("harness.train", *_train_args(dataset, out, "--resume", "--lr", "0.02"))
    assert changed.returncode == 2 and "recipe_hash" in changed.stderr


def test_torchrun_data_parallel_equals_one_process_with_the_global_batch(dataset, tmp_path):
    from harness.checkpoints import load_weights

    common = ["--batch-size", "4", "--bn-mode", "frozen", "--dropout", "0", "--max-steps", "3", "--threads", "1"]
    single = run_cli("harness.train", *_train_args(dataset, tmp_path / "one", *common))
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "harness.train",
                           *_train_args(dataset, tmp_path / "ddp", *common)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "train.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert ddp["world_size"] == 2 and ddp["launcher"] == "torchrun" and one["world_size"] == 1
    np.testing.assert_allclose([r["loss"] for r in ddp["curve"]], [r["loss"] for r in one["curve"]], rtol=1e-5)
    assert [r["clips"] for r in ddp["curve"]] == [2, 2, 2]                 # each process half the global batch
    cfg = get_preset("i3d_nl_dot_product_r50", num_classes=2)
    a = load_weights(str(tmp_path / "one" / "ckpt-000003.pth"), cfg).arrays
    b = load_weights(str(tmp_path / "ddp" / "ckpt-000003.pth"), cfg).arrays
    start = initial_weights(cfg, 0)
    for name in trainable_names(cfg):
        assert_same_update(a[name], b[name], start[name], name)
    frozen = [n for n in parameter_specs(cfg) if n.endswith("running_mean")]
    assert all(np.array_equal(a[n], start[n]) and np.array_equal(b[n], start[n]) for n in frozen)


def assert_same_update(a: np.ndarray, b: np.ndarray, start: np.ndarray, name: str, steps: int = 3) -> None:
    """The update ``a - start`` equals ``b - start`` to 1e-4 of its largest value, or to a
    few float32 ulps of the weight itself per step: the sum of two half-batch gradients
    and one over the whole batch differ in their last bits, and an update of ~3e-5 on a
    weight of ~0.06 (ulp 7.5e-9) carries that rounding at ~2e-4 of itself (measured: worst
    2.3e-4, res5.0.downsample.conv.weight, torch 2.13 CPU, 3 steps)."""
    da, db = a.astype(np.float64) - start, b.astype(np.float64) - start
    allowed = 1e-4 * max(np.abs(da).max(), 1e-12) + 2 * steps * np.spacing(np.abs(a).astype(np.float32))
    assert (np.abs(da - db) <= allowed).all(), (name, float(np.abs(da - db).max()), float(np.abs(da).max()))


@pytest.mark.slow
@pytest.mark.mindspore
def test_msrun_data_parallel_equals_one_process_with_the_global_batch(dataset, tmp_path):
    """MindSpore 2.10's data parallel runs on CPU under msrun (its own collective library):
    two workers of half the batch each give one process's losses and weights."""
    from harness.checkpoints import load_weights

    common = ["--framework", "ms", "--data-root", str(dataset), *SMALL, "--batch-size", "4", "--epochs", "1",
              "--bn-mode", "frozen", "--dropout", "0", "--max-steps", "2", "--threads", "1", "-q"]
    single = run_cli("harness.train", *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    bin_dir = os.path.dirname(sys.executable)   # msrun starts each worker as the `python` on PATH
    proc = subprocess.run([os.path.join(bin_dir, "msrun"), "--worker_num", "2", "--local_worker_num", "2",
                           "--master_port", "8137", "--log_dir", str(tmp_path / "logs"), "--join", "True",
                           "python", "-m", "harness.train", *common, "--out", str(tmp_path / "dp")], cwd=ROOT,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900,
                          env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    one = json.loads((tmp_path / "one" / "train.json").read_text())
    dp = json.loads((tmp_path / "dp" / "train.json").read_text())
    assert dp["world_size"] == 2 and dp["launcher"] == "msrun" and [r["clips"] for r in dp["curve"]] == [2, 2]
    np.testing.assert_allclose([r["loss"] for r in dp["curve"]], [r["loss"] for r in one["curve"]], rtol=1e-5)
    cfg = get_preset("i3d_nl_dot_product_r50", num_classes=2)
    a = load_weights(str(tmp_path / "one" / "ckpt-000002.ckpt"), cfg).arrays
    b = load_weights(str(tmp_path / "dp" / "ckpt-000002.ckpt"), cfg).arrays
    start = initial_weights(cfg, 0)
    for name in trainable_names(cfg):
        assert_same_update(a[name], b[name], start[name], name, steps=2)


@pytest.mark.slow
@pytest.mark.mindspore
def test_mindspore_fine_tunes_an_mmaction2_checkpoint_checkpoints_and_resumes(dataset, tmp_path):
    """The seed's own case: an mmaction2 .pth (400 classes) fine-tuned in MindSpore with a
    fresh 2-class head; MindSpore training checkpoints, then --resume."""
    from harness.checkpoints import load_weights
    from harness.checkpoints.io import write_npz

    source = tmp_path / "init.npz"
    write_npz(str(source), initial_weights(get_preset("i3d_nl_dot_product_r50"), 7))
    mmaction2 = tmp_path / "i3d_nl_mmaction2.pth"
    assert run_cli("harness.convert", source, mmaction2, "--to", "mmaction2").returncode == 0
    out = tmp_path / "ms"

    def args(max_steps: int, *extra):
        return ["--framework", "ms", "--data-root", str(dataset), "--out", str(out), *SMALL, "--batch-size", "2",
                "--epochs", "1", "--lr", "0.01", "--threads", "2", "-q", "--max-steps", str(max_steps),
                "--checkpoint", str(mmaction2), "--reset-head", *extra]

    proc = run_cli("harness.train", *args(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["framework"] == "ms" and summary["steps_done"] == 2
    assert "mmaction2 weights" in summary["init_weights"] and "re-initialised for 2 classes" in summary["init_weights"]
    assert all(np.isfinite(r["loss"]) for r in summary["curve"])
    loaded = load_weights(str(out / "ckpt-000002.ckpt"), get_preset("i3d_nl_dot_product_r50", num_classes=2))
    assert loaded.ignored.get("accum.*") == len(trainable_names(CFG))           # the momentum buffers are in it
    assert {"global_step", "learning_rate", "step_num"} <= set(loaded.ignored)
    resumed = run_cli("harness.train", *args(4, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((out / "train.json").read_text())
    assert after["resumed_from"] == 2 and after["steps_done"] == 4
    assert [r["loss"] for r in after["curve"][:2]] == [r["loss"] for r in summary["curve"]]
    assert [r["lr"] for r in after["curve"]] == pytest.approx(lr_schedule(
        get_recipe(lr=0.01, epochs=1, batch_size=2), 4).tolist())
