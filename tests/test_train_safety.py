"""`python -m harness.train` never harms its folder and never lies about it: one run writes a
folder at a time (a second is refused, a dead one's lock does not block), a killed run's
temporaries go at the next start, a damaged or foreign state / checkpoint is one line, a
batch short of faulty videos is filled (never one clip under training-mode BatchNorm), and
the names travel with the weights. Tiny clips (8 frames at 32x32) through the real network."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, kill_when, make_videos, run_cli

# 8 frames at 32x32: the smallest clip the network takes; res5's BatchNorm then sees one value
# per channel and clip, so a one-clip step in training mode raises (the bug this guards)
TINY = ["--data-override", "clip_len=8", "--data-override", "short_edge=36", "--data-override", "crop_size=32"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """train: 8 clean videos of 2 classes; val: 4 good videos and one of each planted fault."""
    root = tmp_path_factory.mktemp("k400safety")
    return make_videos(root, 2, 4, 2, size="96x72", faults=True)


def args(dataset, out, *extra, framework="torch"):
    return ["--framework", framework, "--data-root", str(dataset), "--out", str(out), *TINY, "--batch-size", "2",
            "--epochs", "1", "--lr", "0.01", "--threads", "1", "--workers", "1", "-q", *extra]


def err_lines(proc) -> list:
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


def assert_one_line_error(proc, *needles):
    lines = err_lines(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tree(path) -> dict:
    """Names, sizes and times in ``path`` (the lock file aside: a refused run may take and drop it)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.name != ".lock"}


# ------------------------------------------------------------------ 1. one run per folder
def test_a_second_run_on_the_same_out_is_refused_and_the_first_finishes_whole(dataset, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "harness.train", *args(dataset, out, "--save-every", "1")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    assert lock.read_text().strip() == str(first.pid)
    second = run_cli("harness.train", *args(dataset, out, "--save-every", "1", "--seed", "1"))
    assert_one_line_error(second, f"another training run (pid {first.pid}) is writing {out}")
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    # the folder is the first run's alone: state, summary and every checkpoint agree on its seed
    state = json.loads((out / "state.json").read_text())
    summary = json.loads((out / "train.json").read_text())
    assert state["identity"]["seed"] == 0 and summary["init_weights"].endswith("(seed 0)")
    assert summary["steps_done"] == 4 and [r["step"] for r in summary["curve"]] == [0, 1, 2, 3]
    import torch

    for ckpt in sorted(out.glob("ckpt-*.pth")):
        assert torch.load(ckpt, weights_only=True)["meta"]["identity"] == state["identity"], ckpt


def test_a_dead_runs_lock_does_not_block_and_its_temporaries_are_removed(dataset, tmp_path):
    """A run SIGKILLed while it wrote a checkpoint leaves its lock file and the temporary:
    the next --resume starts anyway and removes the temporary, saying how many bytes."""
    out = tmp_path / "killed"
    temporaries = lambda: [p for p in out.glob(".*") if p.name.endswith(".tmp")]  # noqa: E731
    for _ in range(4):      # the kill must land while a checkpoint is being written
        shutil.rmtree(out, ignore_errors=True)
        kill_when("harness.train", *args(dataset, out, "--save-every", "1"), ready=lambda: bool(temporaries()),
                  timeout=300)
        if temporaries():
            break
    left = temporaries()
    assert left, "no kill landed mid-write in 4 tries"
    nbytes = sum(p.stat().st_size for p in left)
    assert (out / ".lock").exists()
    holder = int((out / ".lock").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(holder, 0)                         # the pid in the lock file is dead
    resume = ["--resume"] if (out / "state.json").exists() else []
    proc = run_cli("harness.train", *args(dataset, out, "--save-every", "1", *resume))
    assert proc.returncode == 0, proc.stderr[-3000:]
    removed = [ln for ln in proc.stdout.splitlines() if ln.startswith("removed ")]
    assert len(removed) == 1 and f"{nbytes:,} bytes" in removed[0], (nbytes, proc.stdout)
    assert not temporaries() and not [p for p in left if p.exists()]
    assert json.loads((out / "state.json").read_text())["step"] == 4


# ------------------------------------------------------------------ 2. temporaries of dead writers
@pytest.fixture(scope="module")
def two_steps(dataset, tmp_path_factory):
    """A torch run of 2 steps (--keep 1: one checkpoint), for the tests that damage it."""
    out = tmp_path_factory.mktemp("two") / "run"
    proc = run_cli("harness.train", *args(dataset, out, "--save-every", "1", "--max-steps", "2", "--keep", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_temporaries_of_dead_writers_are_removed_at_resume_and_the_live_ones_kept(dataset, two_steps, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "harness.train"])
    try:
        planted = {".ckpt-000003.pth.k2j4h5qz.pth.tmp": 912 * 2 ** 20,        # atomic_path's, 912 MiB (sparse)
                   ".ckpt-000003.pth.nlparity.json.a1b2c3.tmp": 100,
                   ".state.json.x8y9z0.tmp": 2000,
                   f".ckpt-000003.ckpt.{dead}.partial.ckpt": 3 * 2 ** 20,      # MindSpore's, its writer dead
                   f".ckpt-000003.ckpt.{dead}.partial.tmp": 12345}
        kept = {f".ckpt-000003.ckpt.{live.pid}.partial.ckpt": 777,            # its writer still runs
                ".notes.tmp": 5, "ckpt-notes.txt": 6, ".ckpt-000003.pth": 7}  # not this command's temporaries
        for name, size in {**planted, **kept}.items():
            with open(out / name, "wb") as f:
                f.truncate(size)
        proc = run_cli("harness.train", *args(dataset, out, "--save-every", "1", "--max-steps", "3", "--keep", "1",
                                              "--resume"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        removed = [ln for ln in proc.stdout.splitlines() if ln.startswith("removed ")]
        total = sum(planted.values())
        assert removed == [f"removed 5 temporary files a killed run left in {out}: {total:,} bytes "
                           f"({total / 2 ** 20:.1f} MiB)"], proc.stdout
        names = set(os.listdir(out))
        assert not names & set(planted) and set(kept) <= names
        assert json.loads((out / "state.json").read_text())["step"] == 3
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ 3. damaged or foreign state / checkpoint
def _resume_fails(dataset, out, *needles, framework="torch"):
    before = tree(out)
    proc = run_cli("harness.train", *args(dataset, out, "--save-every", "1", "--max-steps", "3", "--keep", "1",
                                          "--resume", framework=framework))
    line = assert_one_line_error(proc, *needles)
    assert tree(out) == before, "a refused --resume changed the folder"
    return line


STATE_CASES = [
    ("truncated", lambda text: text[:100], "is damaged (not valid JSON"),
    ("foreign object", lambda text: json.dumps({"step": 2}), "is not a training state written by harness.train (no"),
    ("a list", lambda text: "[1, 2]", "(a JSON list, not an object)"),
    ("a path out of the folder", lambda text: json.dumps(dict(json.loads(text), checkpoint="../../ckpt-000002.pth")),
     "is not a checkpoint name of this folder"),
    ("another step's checkpoint", lambda text: json.dumps(dict(json.loads(text), step=7)),
     "is not the one of step 7"),
    ("not UTF-8", lambda text: "\udcff", "is damaged"),
]


@pytest.mark.parametrize("case,damage,needle", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_a_damaged_or_foreign_state_file_is_one_line(dataset, two_steps, tmp_path, case, damage, needle):
    out = tmp_path / "run"
    out.mkdir()
    for name in os.listdir(two_steps):     # the checkpoint linked, not copied (the test damages state.json only)
        src = two_steps / name
        os.link(src, out / name) if name.startswith("ckpt-") else shutil.copy(src, out / name)
    text = (two_steps / "state.json").read_text()
    (out / "state.json").write_bytes(damage(text).encode("utf-8", "surrogateescape"))
    _resume_fails(dataset, out, str(out / "state.json"), needle)


def _with_checkpoint(two_steps, out, make) -> None:
    out.mkdir()
    for name in os.listdir(two_steps):
        if not name.startswith("ckpt-"):
            shutil.copy(two_steps / name, out / name)
    shutil.copy(two_steps / "ckpt-000002.pth.nlparity.json", out)
    make(two_steps / "ckpt-000002.pth", out / "ckpt-000002.pth")


def _foreign_pth(src, dst):
    import torch

    torch.save({"stem.conv.weight": torch.zeros(2, 3)}, dst)       # a weights-only file of another program


def _other_runs_pth(src, dst):
    import torch

    state = torch.load(src, weights_only=True)
    state["meta"]["identity"] = dict(state["meta"]["identity"], seed=5)
    torch.save(state, dst)


CKPT_CASES = [
    ("truncated", lambda src, dst: dst.write_bytes(src.read_bytes()[:2 ** 20]),
     "is truncated or damaged (not a complete torch zip archive)"),
    ("garbage", lambda src, dst: dst.write_bytes(b"\x00garbage" * 100), "ckpt-000002.pth"),
    ("foreign", _foreign_pth, "is not a training checkpoint of harness.train (it has no 'state_dict' entry"),
    ("another run's", _other_runs_pth, "belongs to another run (it differs in seed)"),
    ("missing", lambda src, dst: None, "names ckpt-000002.pth, which is not in"),
]


@pytest.mark.parametrize("case,make,needle", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_a_truncated_or_foreign_checkpoint_is_one_line(dataset, two_steps, tmp_path, case, make, needle):
    out = tmp_path / "run"
    _with_checkpoint(two_steps, out, make)
    line = _resume_fails(dataset, out, needle)
    assert "ckpt-000002.pth" in line


# ------------------------------------------------------------------ 4. faulty videos: never a one-clip step
def test_fill_candidates_are_the_next_videos_of_the_epoch_order():
    from frameworks.spec.labels import LabelMap
    from harness.data import DatasetIndex, VideoRecord
    from harness.data.index import FaultLog
    from harness.train_data import TrainPlan, epoch_order

    index = DatasetIndex([VideoRecord(f"v{i}", f"/x/v{i}.mp4", i % 2) for i in range(7)], LabelMap(("a", "b")),
                         FaultLog())
    for rank in (0, 1):
        plan = TrainPlan(index, 4, 1, 2, seed=3, rank=rank, world=2, min_clips=2)
        for step in (0, 1):
            order = epoch_order(7, step, 3).tolist()
            own = order[2 * rank:2 * rank + 2]
            got = [r.video_id for r, key in plan.fill_records(step)]
            assert got == [f"v{i}" for i in order[2 * rank + 2:] + order[:2 * rank]]     # the next ones, wrapping
            assert not {f"v{i}" for i in own} & set(got) and len(got) == 5
            assert all(key == f"{r.video_id}@{step}" for r, key in plan.fill_records(step))
    with pytest.raises(ValueError):
        TrainPlan(index, 4, 1, 2, world=2, min_clips=3)


@pytest.fixture(scope="module")
def faulty_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("faulty") / "run"
    proc = run_cli("harness.train", *args(dataset, out, "--split", "val", "--save-every", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]    # was: ValueError: Expected more than 1 value per channel
    return out, proc


def test_faulty_videos_are_counted_and_no_step_runs_on_one_clip(faulty_run):
    out, proc = faulty_run
    summary = json.loads((out / "train.json").read_text())
    # val: 4 good videos + truncated, not-a-video, short (used, looping) = 7 indexed; 3 steps of 2
    assert summary["steps_done"] == 3 and summary["min_clips"] == 2
    assert [r["clips"] for r in summary["curve"]] == [2, 2, 2]
    assert sum(r["filled"] for r in summary["curve"]) == len(summary["filled_steps"]) >= 1
    counts = summary["faults"]["counts"]
    assert {k: v for k, v in counts.items() if v} == {"missing_file": 1, "empty_file": 1, "truncated": 1,
                                                       "not_a_video": 1, "unknown_label": 1, "bad_row": 1,
                                                       "short_video": 1}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("faults: ")]
    assert lines == [f"faults: 6 left out (missing_file 1, empty_file 1, truncated 1, not_a_video 1, unknown_label 1, "
                     f"bad_row 1); 1 used as they are (short_video 1); {len(summary['filled_steps'])} "
                     f"step{'s' * (len(summary['filled_steps']) != 1)} filled to 2 clips from the next videos "
                     "(train.json lists each)"], proc.stdout
    for fill in summary["filled_steps"]:
        assert all(v.endswith("@0") and not v.startswith("fault") for v in fill["videos"])


def test_a_resumed_faulty_run_fills_and_counts_as_the_uninterrupted_one(dataset, faulty_run, tmp_path):
    ref_out, _ = faulty_run
    reference = json.loads((ref_out / "train.json").read_text())
    out = tmp_path / "resumed"
    first = run_cli("harness.train", *args(dataset, out, "--split", "val", "--save-every", "1", "--max-steps", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    proc = run_cli("harness.train", *args(dataset, out, "--split", "val", "--save-every", "1", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["resumed_from"] == 1
    key = lambda r: (r["step"], r["lr"], r["loss"], r["clips"], r["filled"])  # noqa: E731
    assert [key(r) for r in summary["curve"]] == [key(r) for r in reference["curve"]]
    assert summary["filled_steps"] == reference["filled_steps"]
    assert summary["faults"]["counts"] == reference["faults"]["counts"]


def test_one_clip_per_process_that_the_network_cannot_take_is_one_line(dataset, tmp_path):
    """Asked for outright (--batch-size 1), a one-clip step on 32x32 clips cannot run in
    training-mode BatchNorm: one line naming the way out, not a traceback."""
    proc = run_cli("harness.train", *args(dataset, tmp_path / "o", "--batch-size", "1", "--max-steps", "1"))
    assert_one_line_error(proc, "step 0: the network cannot train on a batch of 1x3x8x32x32", "--bn-mode frozen")
    assert not (tmp_path / "o").exists(), "a run that failed before its first checkpoint left its folder"


# ------------------------------------------------------------------ 6. the names travel with the weights
def test_every_checkpoints_sidecar_names_the_classes_and_the_data_preset(faulty_run, two_steps):
    from harness.checkpoints.sidecar import sidecar_classes, sidecar_data_preset

    for out in (faulty_run[0], two_steps):
        classes = (out / "classes.txt").read_text().splitlines()
        assert classes == ["abseiling", "air drumming"]          # the label map's order
        ckpts = sorted(out.glob("ckpt-*.pth"))
        assert ckpts
        for ckpt in ckpts:
            assert sidecar_classes(str(ckpt)) == classes and sidecar_data_preset(str(ckpt)) == "seed_train"


def test_infer_names_the_classes_of_a_trained_and_converted_checkpoint(dataset, two_steps, tmp_path):
    converted = tmp_path / "trained.ckpt"
    proc = run_cli("harness.convert", two_steps / "ckpt-000002.pth", converted, "--to", "ms")
    assert proc.returncode == 0, proc.stderr[-2000:]
    video = sorted((dataset / "val").glob("*.mp4"))[0]
    for ckpt in (two_steps / "ckpt-000002.pth", converted):
        proc = run_cli("harness.infer", "--framework", "torch", "--checkpoint", ckpt, video, *TINY, "--top-k", "2")
        assert proc.returncode == 0, proc.stderr[-2000:]
        ranked = [ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("  ")]
        assert sorted(ranked) == ["abseiling", "drumming"], proc.stdout      # "air drumming": names, not "class 1"


# ------------------------------------------------------------------ 7. inputs are never harmed
def test_absurd_classes_and_outputs_over_inputs_are_refused_in_one_line(dataset, two_steps, tmp_path):
    before = tree(tmp_path)
    cases = [
        (args(dataset, tmp_path / "o", "--num-classes", "1000000"), ["--num-classes", "the limit is 100,000"]),
        (args(dataset, tmp_path / "o", "--checkpoint-classes", "0"), ["--checkpoint-classes"]),
        (args(dataset, dataset), ["refusing to write --out folder", "one of this command's inputs"]),
        (args(dataset, tmp_path / "o", "--checkpoint", str(tmp_path)), ["--checkpoint", "is a folder"]),
        (args(dataset, tmp_path / "o", "--annotations", str(tmp_path / "none.csv")), ["--annotations", "no such file"]),
    ]
    for argv, needles in cases:
        assert_one_line_error(run_cli("harness.train", *argv), *needles)
    assert tree(tmp_path) == before, "a refused run left files behind"


def test_a_checkpoint_inside_out_is_never_written_over_or_pruned(dataset, two_steps, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(two_steps / "ckpt-000002.pth", out / "ckpt-000002.pth")   # an earlier run's weights, state gone
    before = tree(out)
    proc = run_cli("harness.train", *args(dataset, out, "--checkpoint", str(out / "ckpt-000002.pth"),
                                          "--max-steps", "3", "--save-every", "1", "--keep", "1"))
    assert_one_line_error(proc, "--checkpoint", "inside --out")
    assert tree(out) == before


# ------------------------------------------------------------------ MindSpore: its own temporary names
@pytest.mark.mindspore
def test_mindspore_partial_checkpoints_are_removed_and_a_truncated_one_is_one_line(dataset, tmp_path):
    out = tmp_path / "ms"
    ms_args = lambda *extra: args(dataset, out, "--save-every", "1", "--keep", "1", *extra,  # noqa: E731
                                  framework="ms")
    proc = run_cli("harness.train", *ms_args("--max-steps", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "ckpt-000001.ckpt"
    kept = tmp_path / "kept.ckpt"
    os.replace(ckpt, kept)
    ckpt.write_bytes(kept.read_bytes()[:2 ** 20])
    _resume_fails(dataset, out, f"checkpoint {ckpt} is truncated or damaged (MindSpore cannot parse it)",
                  framework="ms")
    os.replace(kept, ckpt)
    dead = dead_pid()
    planted = {f".ckpt-000002.ckpt.{dead}.partial.ckpt": 400 * 2 ** 20, f".ckpt-000002.ckpt.{dead}.partial.tmp": 4321}
    for name, size in planted.items():
        with open(out / name, "wb") as f:
            f.truncate(size)
    proc = run_cli("harness.train", *ms_args("--max-steps", "2", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = sum(planted.values())
    assert f"removed 2 temporary files a killed run left in {out}: {total:,} bytes" in proc.stdout
    assert not set(planted) & set(os.listdir(out))
    assert json.loads((out / "state.json").read_text())["step"] == 2
