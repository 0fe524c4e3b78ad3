"""`python -m harness.convert`: lossless round trips, what it says, and bad input (exit 2, one line)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, parameter_specs
from harness import convert
from harness.checkpoints import mmaction2
from harness.checkpoints.formats import read_raw
from harness.checkpoints.mindspore_ckpt import write_ckpt

DEFAULT = "i3d_nl_dot_product_r50"


def random_canonical(preset: str = DEFAULT, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in parameter_specs(get_preset(preset)).items()}


def save_mmaction2(path, arrays, preset: str = DEFAULT):
    """As mmaction2 1.x saves: a state dict under "state_dict", BN counters included."""
    state = {k: torch.from_numpy(v) for k, v in mmaction2.from_canonical(arrays, get_preset(preset)).items()}
    for key in [k for k in state if k.endswith(".bn.running_var")]:
        state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(1000, dtype=torch.int64)
    torch.save({"meta": {"mmaction2_version": "1.1.0"}, "state_dict": state}, path)


def run(capsys, *argv):
    code = convert.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_identical(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k


def test_mmaction2_pth_to_ckpt_to_pth_to_npz_is_byte_identical_to_direct_npz(tmp_path, capsys):
    save_mmaction2(tmp_path / "mm.pth", random_canonical())
    steps = [("mm.pth", "w.ckpt"), ("w.ckpt", "w.pth"), ("w.pth", "via.npz"), ("mm.pth", "direct.npz")]
    for src, dst in steps:
        code, out, err = run(capsys, tmp_path / src, tmp_path / dst)
        assert code == 0, err
    assert (tmp_path / "via.npz").read_bytes() == (tmp_path / "direct.npz").read_bytes()
    # and it says what it found and what it wrote
    code, out, _ = run(capsys, tmp_path / "mm.pth", tmp_path / "again.ckpt")
    assert "mmaction2 names in a torch file" in out and f"arch {DEFAULT}" in out and "322 arrays" in out
    assert "mindspore names in a ckpt file" in out and "read back byte-identical" in out


@pytest.mark.parametrize("fmt,dtype", [("ms", np.float64), ("ms", np.float16), ("torch", np.float16),
                                       ("safetensors", np.float16), ("npz", np.float32)])
def test_round_trips_are_bit_exact_and_keep_the_dtype(tmp_path, capsys, fmt, dtype):
    arrays = random_canonical("i3d_nl_gaussian_r50", dtype)
    np.savez(tmp_path / "src.npz", **arrays)
    assert run(capsys, tmp_path / "src.npz", tmp_path / "mid.bin", "--to", fmt)[0] == 0
    assert run(capsys, tmp_path / "mid.bin", tmp_path / "back.npz")[0] == 0
    back = read_raw(str(tmp_path / "back.npz")).arrays
    assert_identical(arrays, back)


def test_every_foreign_scheme_is_a_format_both_ways(tmp_path, capsys):
    arrays = random_canonical(DEFAULT, seed=3)
    np.savez(tmp_path / "src.npz", **arrays)
    for src, dst, extra in (("src.npz", "c2.pkl", ()), ("c2.pkl", "mv.ckpt", ("--to", "mindvideo")),
                            ("mv.ckpt", "mm.pth", ("--to", "mmaction2")), ("mm.pth", "back.npz", ())):
        code, _, err = run(capsys, tmp_path / src, tmp_path / dst, *extra)
        assert code == 0, err
    assert_identical(arrays, read_raw(str(tmp_path / "back.npz")).arrays)


def test_content_decides_and_the_preset_is_found(tmp_path, capsys):
    arrays = random_canonical("i3d_nl_caffe2_r50")
    from harness.checkpoints.mindspore_ckpt import from_canonical

    write_ckpt(str(tmp_path / "weights.bin"), from_canonical(arrays, get_preset("i3d_nl_caffe2_r50")))
    code, out, err = run(capsys, tmp_path / "weights.bin", tmp_path / "w.safetensors")
    assert code == 0, err
    assert "mindspore names in a ckpt file, arch i3d_nl_caffe2_r50" in out
    # a 174-class head is read as such
    arrays = random_canonical("i3d_r50")
    arrays["head.fc.weight"], arrays["head.fc.bias"] = arrays["head.fc.weight"][:174], arrays["head.fc.bias"][:174]
    np.savez(tmp_path / "ssv2.npz", **arrays)
    code, out, err = run(capsys, tmp_path / "ssv2.npz", tmp_path / "ssv2.ckpt", "--arch", "i3d_r50")
    assert code == 0 and "174 classes" in out, err


def test_ckpt_of_another_architecture_is_refused(tmp_path, capsys):
    from harness.checkpoints.mindspore_ckpt import from_canonical

    write_ckpt(str(tmp_path / "i3d.ckpt"), from_canonical(random_canonical("i3d_r50"), get_preset("i3d_r50")))
    line = one_line_error(capsys, tmp_path / "i3d.ckpt", tmp_path / "x.npz", "--arch", DEFAULT)
    assert "does not fit arch 'i3d_nl_dot_product_r50'" in line and "missing" in line
    write_ckpt(str(tmp_path / "mlp.ckpt"), {"fc1.weight": np.ones((4, 3), np.float32)})
    assert "unrecognised parameter names" in one_line_error(capsys, tmp_path / "mlp.ckpt", tmp_path / "x.npz")


def test_dtype_mismatch_is_refused(tmp_path, capsys):
    arrays = random_canonical()
    arrays["res3.1.non_local.g.weight"] = arrays["res3.1.non_local.g.weight"].astype(np.float16)
    np.savez(tmp_path / "mixed.npz", **arrays)
    line = one_line_error(capsys, tmp_path / "mixed.npz", tmp_path / "x.ckpt")
    assert "dtype mismatch" in line and "res3.1.non_local.g.weight" in line
    ints = {k: v.astype(np.int32) for k, v in random_canonical().items()}
    np.savez(tmp_path / "ints.npz", **ints)
    assert "dtype mismatch" in one_line_error(capsys, tmp_path / "ints.npz", tmp_path / "x.ckpt")


def test_other_bad_input_is_one_line_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", **random_canonical())
    assert "unknown arch preset 'resnet18'" in one_line_error(capsys, tmp_path / "w.npz", tmp_path / "x.ckpt",
                                                               "--arch", "resnet18")
    assert "no such checkpoint file" in one_line_error(capsys, tmp_path / "nope.pth", tmp_path / "x.ckpt")
    assert "--to" in one_line_error(capsys, tmp_path / "w.npz", tmp_path / "x.weights")
    assert "unknown format 'onnx'" in one_line_error(capsys, tmp_path / "w.npz", tmp_path / "x.onnx", "--to", "onnx")
    assert "expects a ckpt file" in one_line_error(capsys, tmp_path / "w.npz", tmp_path / "x.pth", "--from", "ms")
    # missing folders above DST are created (harness.files' rule); a file in their place is refused
    assert "is a file, not a folder" in one_line_error(capsys, tmp_path / "w.npz", tmp_path / "w.npz" / "x.pth")
    assert "SRC" in one_line_error(capsys, tmp_path, tmp_path / "x.ckpt") and not (tmp_path / "x.ckpt").exists()


def test_the_cli_as_a_user_runs_it(cli, tmp_path):
    save_mmaction2(tmp_path / "mm.pth", random_canonical())
    ok = cli("harness.convert", tmp_path / "mm.pth", tmp_path / "w.ckpt")
    assert ok.returncode == 0 and "wrote" in ok.stdout and not ok.stderr.strip(), ok.stderr
    bad = cli("harness.convert", tmp_path / "w.ckpt", tmp_path / "x.npz", "--arch", "i3d_r50")
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" in lines[0]
    unknown = cli("harness.convert", tmp_path / "w.ckpt", tmp_path / "x.npz", "--arch", "nope")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert cli("harness.convert", "--help").returncode == 0


def test_a_file_that_does_not_read_back_identical_is_exit_1(tmp_path, capsys, monkeypatch):
    """The read-back check itself: a destination whose bytes came back different (simulated
    where convert reads it back) fails with exit 1 after saying what was read."""
    np.savez(tmp_path / "src.npz", **random_canonical("i3d_r50", np.float16))
    dst = tmp_path / "w.safetensors"
    real_read_raw = convert.read_raw

    def read_back_damaged(path, trust=False):
        raw = real_read_raw(path, trust=trust)
        if path == str(dst):
            raw.arrays["res4.2.conv2.weight"] = raw.arrays["res4.2.conv2.weight"] * 2
        return raw

    monkeypatch.setattr(convert, "read_raw", read_back_damaged)
    code, out, err = run(capsys, tmp_path / "src.npz", dst)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and out.startswith("read ") and "wrote" not in out
    assert len(lines) == 1 and lines[0] == f"error: {dst} does not read back byte-identical: res4.2.conv2.weight"


def test_names_the_destination_cannot_express_are_refused_before_writing(tmp_path, capsys):
    """mindvideo's names have no bias for Caffe2's non-local output conv (once a KeyError traceback)."""
    np.savez(tmp_path / "c2.npz", **random_canonical("i3d_nl_caffe2_r50", np.float16))
    line = one_line_error(capsys, tmp_path / "c2.npz", tmp_path / "mv.ckpt", "--to", "mindvideo")
    assert "mindvideo names cannot express i3d_nl_caffe2_r50" in line and "non_local.out.bias" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c2.npz"]


def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import os

    np.savez(tmp_path / "src.npz", **random_canonical("i3d_r50", np.float16))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    line = one_line_error(capsys, tmp_path / "src.npz", tmp_path / "w.pth")
    assert line == f"error: cannot write {tmp_path / 'w.pth'}: no space left on the disk"   # in words, no [Errno]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.npz"]


def test_convert_is_a_function_of_typed_arguments(tmp_path):
    arrays = random_canonical("i3d_r50", np.float16)
    np.savez(tmp_path / "src.npz", **arrays)
    result = convert.convert(str(tmp_path / "src.npz"), str(tmp_path / "w.bin"), dst_format="MindSpore",
                             arch="i3d_r50")
    assert result.mismatched == [] and result.format.name == "ms"
    assert (result.source.scheme, result.source.container, result.source.cfg.name) == ("canonical", "npz", "i3d_r50")
    assert "stem.bn.bn2d.gamma" in result.written and len(result.written) == len(arrays)
    assert result.describe().startswith(f"wrote {tmp_path / 'w.bin'}: ms (mindspore names in a ckpt file)")
