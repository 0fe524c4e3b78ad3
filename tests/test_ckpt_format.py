"""The .ckpt reader/writer (protobuf runtime, no MindSpore import) against MindSpore's own save/load, both ways."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from harness.runners.mindspore_runner import configure_onednn_isa
from harness.checkpoints import SCHEMES, detect_scheme, mindspore_ckpt
from harness.checkpoints.io import CheckpointError
from harness.checkpoints.formats import read_raw, sniff_container
from harness.checkpoints.mindspore_ckpt import parse_ckpt, read_ckpt, serialize_ckpt, write_ckpt

configure_onednn_isa()  # before MindSpore is imported (see harness.runners.mindspore_runner)
ms = pytest.importorskip("mindspore")
pytestmark = pytest.mark.mindspore
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arrays(rng):
    return {
        "stem.conv.weight": rng.standard_normal((4, 3, 1, 3, 3)).astype(np.float32),
        "half": rng.standard_normal((5, 2)).astype(np.float16),
        "double": rng.standard_normal((3,)),
        "int8": rng.integers(-100, 100, (7,), dtype=np.int8),
        "uint8": rng.integers(0, 255, (2, 2), dtype=np.uint8),
        "int32": rng.integers(-2 ** 31, 2 ** 31 - 1, (3, 1), dtype=np.int32),
        "int64": np.array([-(2 ** 40), 0, 2 ** 62], dtype=np.int64),
        "flags": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float32),
        "ünïcode.name": np.ones((1,), dtype=np.float32),
    }


def _same(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def test_our_bytes_are_mindspore_save_checkpoint_bytes(tmp_path):
    arrays = _arrays(np.random.default_rng(0))
    theirs = tmp_path / "theirs.ckpt"
    ms.save_checkpoint(dict(arrays), str(theirs))
    assert serialize_ckpt(arrays) == theirs.read_bytes()


def test_what_we_write_is_save_checkpoint_with_its_crc(tmp_path):
    """write_ckpt adds MindSpore's own CRC trailer (save_checkpoint(..., crc_check=True)), so
    that a bit flipped later is found by us and by load_checkpoint(..., crc_check=True)."""
    arrays = _arrays(np.random.default_rng(3))
    ms.save_checkpoint(dict(arrays), str(tmp_path / "theirs.ckpt"), crc_check=True)
    write_ckpt(str(tmp_path / "ours.ckpt"), arrays)
    assert (tmp_path / "ours.ckpt").read_bytes() == (tmp_path / "theirs.ckpt").read_bytes()
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"), crc_check=True)
    _same(arrays, {k: loaded[k].asnumpy() for k in arrays})
    assert read_ckpt(str(tmp_path / "ours.ckpt")).integrity == "crc32 ok"


def test_mindspore_reads_what_we_write(tmp_path):
    arrays = _arrays(np.random.default_rng(1))
    write_ckpt(str(tmp_path / "ours.ckpt"), arrays)
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    _same(arrays, {k: loaded[k].asnumpy() for k in arrays})


def test_we_read_a_cell_saved_by_mindspore(tmp_path):
    net = ms.nn.SequentialCell([ms.nn.Dense(6, 4), ms.nn.BatchNorm1d(4)])
    ms.save_checkpoint(net, str(tmp_path / "cell.ckpt"))
    raw = read_raw(str(tmp_path / "cell.ckpt"))
    assert raw.container == "ckpt"
    _same({p.name: p.asnumpy() for p in net.get_parameters()}, raw.arrays)


def test_sliced_arrays_round_trip_both_ways(tmp_path, monkeypatch):
    """Arrays over SLICE_SIZE are written as consecutive Values with one tag (512 MiB in
    MindSpore; 1 KiB here so that a test can afford it)."""
    from mindspore.train import serialization

    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    monkeypatch.setattr(mindspore_ckpt, "_SLICE_KIB", 1)
    arrays = {"big": np.arange(2000, dtype=np.float32).reshape(100, 20), "small": np.ones(3, np.float32)}
    ms.save_checkpoint(dict(arrays), str(tmp_path / "theirs.ckpt"))
    data = (tmp_path / "theirs.ckpt").read_bytes()
    assert data.count(b"big") == 8 and serialize_ckpt(arrays) == data
    _same(arrays, parse_ckpt(data)[0])
    write_ckpt(str(tmp_path / "ours.ckpt"), arrays)
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    _same(arrays, {k: loaded[k].asnumpy() for k in arrays})


def test_crc_trailer_is_checked(tmp_path):
    path = tmp_path / "crc.ckpt"
    arrays = {"w": np.arange(12, dtype=np.float32)}
    ms.save_checkpoint(dict(arrays), str(path), crc_check=True)
    _same(arrays, read_ckpt(str(path)).arrays)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # a byte of the tensor content
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        read_ckpt(str(path))


def test_string_entries_and_packed_dims(tmp_path):
    ms.save_checkpoint(ms.nn.Dense(2, 3), str(tmp_path / "s.ckpt"), append_dict={"note": "hello", "epoch_num": 7})
    raw = read_ckpt(str(tmp_path / "s.ckpt"))
    assert raw.meta["strings"] == {"note": "hello"} and int(raw.arrays["epoch_num"]) == 7
    # proto3-style packed dims (field 1, wire type 2) must read the same as proto2's unpacked ones
    content = np.arange(6, dtype=np.float32).tobytes()
    tensor = b"\x0a\x02\x02\x03" + b"\x12\x07Float32" + b"\x1a\x18" + content
    value = b"\x0a\x01w" + b"\x12" + bytes([len(tensor)]) + tensor
    arrays, _ = parse_ckpt(b"\x0a" + bytes([len(value)]) + value)
    np.testing.assert_array_equal(arrays["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_content_not_extension_decides(tmp_path):
    arrays = {"res2.0.conv1.weight": np.ones((2, 2, 1, 1, 1), np.float32)}
    write_ckpt(str(tmp_path / "weights.bin"), arrays)
    assert sniff_container(str(tmp_path / "weights.bin")) == "ckpt"
    (tmp_path / "noise.ckpt").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(CheckpointError):
        read_raw(str(tmp_path / "noise.ckpt"))


def test_truncated_ckpt_is_a_one_line_error(tmp_path):
    write_ckpt(str(tmp_path / "full.ckpt"), _arrays(np.random.default_rng(2)))
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError) as info:
        read_ckpt(str(tmp_path / "cut.ckpt"))
    assert "cut.ckpt" in str(info.value) and "\n" not in str(info.value)


def test_reading_and_writing_need_no_mindspore(tmp_path):
    write_ckpt(str(tmp_path / "a.ckpt"), {"x": np.ones(3, np.float32)})
    code = ("import sys; from harness.checkpoints.formats import read_raw; "
            "from harness.checkpoints.formats import CONTAINERS; "
            f"raw = read_raw({str(tmp_path / 'a.ckpt')!r}); "
            f"CONTAINERS['ckpt'].write({str(tmp_path / 'b.ckpt')!r}, raw.arrays); "
            "assert 'mindspore' not in sys.modules, 'mindspore was imported'; print(raw.container)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ckpt", proc.stderr
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()


def test_mindspore_scheme_is_detected_before_canonical():
    from frameworks.spec.naming import mindspore_names
    from frameworks.spec.arch import get_preset, parameter_specs

    cfg = get_preset("i3d_nl_dot_product_r50")
    ms_names = list(mindspore_names(cfg))
    assert detect_scheme(ms_names) == "mindspore"
    assert detect_scheme(list(parameter_specs(cfg))) == "canonical"
    assert detect_scheme(ms_names + ["global_step", "moments.stem.conv.weight"]) == "mindspore"
    assert not SCHEMES["mindspore"].detect(["backbone.conv1.features.0.weight", "head.dense.weight"])


def _wire_layout(message) -> dict:
    """{field number: (repeated, wire type)} of a message descriptor, and of its sub-messages by name."""
    wire = {3: 0, 9: 2, 11: 2, 12: 2}   # int64: varint; string, message, bytes: length-delimited
    return {f.number: (f.is_repeated, wire[f.type], f.message_type.name if f.message_type else None)
            for f in message.fields}


def test_our_message_layout_is_checkpoint_proto_on_the_wire():
    """harness.checkpoints.ckpt_proto against MindSpore's own checkpoint_pb2: the same field
    numbers, repetition and wire types (ours has bytes for string, and an empty MapTensorProto,
    which is refused)."""
    from mindspore.train import checkpoint_pb2

    from harness.checkpoints import ckpt_proto

    pairs = [(ckpt_proto.Checkpoint, checkpoint_pb2.Checkpoint), (ckpt_proto.Value, checkpoint_pb2.Checkpoint.Value),
             (ckpt_proto.TensorProto, checkpoint_pb2.TensorProto)]
    for ours, theirs in pairs:
        mine, their = _wire_layout(ours.DESCRIPTOR), _wire_layout(theirs.DESCRIPTOR)
        assert {n: v[:2] for n, v in mine.items()} == {n: v[:2] for n, v in their.items()}, ours.DESCRIPTOR.name


def test_mindspore_protobuf_classes_reserialize_our_bytes():
    """MindSpore's own message classes parse what we write and serialize it back to the same bytes."""
    from mindspore.train import checkpoint_pb2

    data = serialize_ckpt(_arrays(np.random.default_rng(4)))
    parsed = checkpoint_pb2.Checkpoint.FromString(data)
    assert [v.tag for v in parsed.value][:2] == ["stem.conv.weight", "half"]
    assert b"".join(checkpoint_pb2.Checkpoint(value=[v]).SerializeToString() for v in parsed.value) == data


@pytest.mark.slow
def test_mindspore_loads_our_full_size_checkpoint(tmp_path):
    """The real network's 35,459,152 numbers, written by us, loaded by load_checkpoint(crc_check=True)."""
    from frameworks.spec.arch import get_preset
    from frameworks.spec.train import initial_weights

    arrays = mindspore_ckpt.from_canonical(initial_weights(get_preset("i3d_nl_dot_product_r50")))
    write_ckpt(str(tmp_path / "full.ckpt"), arrays)
    loaded = ms.load_checkpoint(str(tmp_path / "full.ckpt"), crc_check=True)
    _same(arrays, {k: loaded[k].asnumpy() for k in arrays})
