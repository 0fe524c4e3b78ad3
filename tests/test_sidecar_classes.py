"""The sidecar (``X.nlparity.json``) carries class names and the data preset with the
weights, and :func:`harness.text.printable` makes any name safe to print."""
from __future__ import annotations

import json

import pytest

from frameworks.spec.arch import get_preset
from harness.checkpoints.sidecar import (data_preset_note, read_sidecar, sidecar_classes, sidecar_data_preset,
                                         sidecar_path, write_sidecar)
from harness.text import printable


def test_sidecar_keeps_classes_and_data_preset(tmp_path):
    cfg = get_preset("i3d_nl_dot_product_r50").replace(num_classes=3)
    path = str(tmp_path / "w.ckpt")
    write_sidecar(path, cfg, "src.pth", "ab" * 32, classes=["a", "b", "c"], data_preset="seed_eval")
    doc = read_sidecar(path)
    assert doc["classes"] == ["a", "b", "c"] and doc["data_preset"] == "seed_eval" and doc["num_classes"] == 3
    assert sidecar_classes(path) == ["a", "b", "c"] and sidecar_data_preset(path) == "seed_eval"


def test_old_call_signature_still_works_and_records_nothing_new(tmp_path):
    cfg = get_preset("i3d_nl_dot_product_r50")
    path = str(tmp_path / "w.ckpt")
    write_sidecar(path, cfg, "src.pth", "")          # positional, as parity and train call it
    write_sidecar(path, cfg, source="x", source_sha256="y")
    assert "classes" not in read_sidecar(path) and sidecar_classes(path) is None
    assert sidecar_data_preset(path) is None and data_preset_note(path, "mmaction2_val") is None


def test_wrong_number_of_class_names_is_refused_on_write_and_ignored_on_read(tmp_path):
    cfg = get_preset("i3d_nl_dot_product_r50").replace(num_classes=3)
    path = str(tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match="2 class names for a classifier of 3"):
        write_sidecar(path, cfg, "src", "", classes=["a", "b"])
    with open(sidecar_path(path), "w") as f:   # a hand-edited sidecar: names that do not fit are dropped
        json.dump({"arch": cfg.name, "num_classes": 3, "classes": ["a", 7, "c"], "data_preset": 5}, f)
    doc = read_sidecar(path)
    assert doc["arch"] == cfg.name and "classes" not in doc and "data_preset" not in doc


def test_data_preset_note_names_both_presets_in_one_line(tmp_path):
    cfg = get_preset("i3d_nl_dot_product_r50").replace(num_classes=2)
    path = str(tmp_path / "w.pth")
    (tmp_path / "w.pth").write_bytes(b"x")
    write_sidecar(path, cfg, "src", "", classes=["a", "b"], data_preset="seed_eval")
    note = data_preset_note(path, "mmaction2_val")
    assert note.startswith("note: ") and "mmaction2_val" in note and "seed_eval" in note and "\n" not in note
    assert data_preset_note(path, "seed_eval") is None


@pytest.mark.parametrize("raw, shown", [
    ("walking the dog", "walking the dog"), ("\x1b[2J", "\\x1b[2J"), ("a\nb\r", "a\\nb\\r"),
    ("\x9b31m", "\\x9b31m"), ("abc\u202eevil", "abc\\u202eevil"), ("caf\u00e9", "caf\u00e9"), ("x\\y", "x\\\\y"),
    ("\x07bell\x7f", "\\x07bell\\x7f"),
])
def test_printable_escapes_every_control_character(raw, shown):
    out = printable(raw)
    assert out == shown
    assert all(ch.isprintable() for ch in out)


def test_read_labels_names_what_is_wrong_in_one_line(tmp_path):
    from harness.checkpoints.io import CheckpointError
    from harness.checkpoints.sidecar import MAX_LABELS_BYTES, read_labels
    from harness.files import OutputPathError

    (tmp_path / "ok.txt").write_text("a\n\n b \n", encoding="utf-8")
    assert read_labels(str(tmp_path / "ok.txt")) == ["a", "b"]
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "empty.txt").write_text("\n \n")
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(MAX_LABELS_BYTES + 1)
    for name, needle, kind in (("latin.txt", "is not UTF-8 text", CheckpointError),
                               ("empty.txt", "holds no class names", CheckpointError),
                               ("big.txt", "not a list of class names", CheckpointError),
                               ("missing.txt", "no such file", OutputPathError)):
        with pytest.raises(kind) as info:
            read_labels(str(tmp_path / name), "--labels")
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(OutputPathError, match="is a folder, not a file"):
        read_labels(str(tmp_path), "--labels")


def test_known_classes_prefers_the_sidecar_then_metadata_then_classes_txt(tmp_path):
    from harness.checkpoints.sidecar import known_classes

    path = str(tmp_path / "w.pth")
    (tmp_path / "w.pth").write_bytes(b"x")
    assert known_classes(path, {}) == (None, "")
    (tmp_path / "classes.txt").write_text("p\nq\n")
    assert known_classes(path, {}) == (["p", "q"], str(tmp_path / "classes.txt"))
    assert known_classes(path, {"classes": ["m", "n"]}) == (["m", "n"], "the checkpoint's metadata")
    write_sidecar(path, get_preset("i3d_nl_dot_product_r50").replace(num_classes=2), "s", "", classes=["s", "t"])
    assert known_classes(path, {"classes": ["m", "n"]}) == (["s", "t"], "w.pth.nlparity.json")
    (tmp_path / "w.pth.nlparity.json").write_bytes(b"[" * 10)      # not ours: ignored, not fatal
    assert read_sidecar(path) is None
