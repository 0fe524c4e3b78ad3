"""The .ckpt reader and writer on the protobuf runtime, without MindSpore: the bytes are those
of the hand-written writer it replaced (kept below, frozen), and what protobuf would build for
a hostile file is bounded before it parses (tests/test_ckpt_format.py checks against MindSpore)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harness.checkpoints import mindspore_ckpt
from harness.checkpoints.io import CheckpointError
from harness.checkpoints.mindspore_ckpt import parse_ckpt, read_ckpt, serialize_ckpt, write_ckpt
from tests.conftest import ROOT


# ------------------------------------------------- the writer as it was before protobuf (frozen)
def _frozen_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _frozen_len_field(number: int, payload: bytes) -> bytes:
    return _frozen_varint(number << 3 | 2) + _frozen_varint(len(payload)) + payload


def frozen_serialize(arrays, crc=False, slice_kib=512 * 1024) -> bytes:
    """harness/checkpoints/mindspore_ckpt.py's serialize_ckpt at commit 5554220, verbatim but for names."""
    import binascii

    out = bytearray()
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        tensor_type = mindspore_ckpt._TYPE_OF[array.dtype]
        dims = b"".join(_frozen_varint(1 << 3 | 0) + _frozen_varint(d) for d in array.shape)
        content, chunk = array.tobytes(), slice_kib * 1024
        for start in range(0, max(len(content), 1), chunk):
            tensor = (dims + _frozen_len_field(2, tensor_type.encode())
                      + _frozen_len_field(3, content[start:start + chunk]))
            entry = _frozen_len_field(1, name.encode("utf-8")) + _frozen_len_field(2, tensor)
            out += _frozen_len_field(1, entry)
    if crc:
        out += b"crc_num" + binascii.crc32(out).to_bytes(10, "big")
    return bytes(out)


def _every_kind(rng) -> dict:
    arrays = {f"t.{name}": (rng.standard_normal((3, 2, 1)) * 100).astype(dtype)
              for name, dtype in mindspore_ckpt._NUMPY_OF.items()}
    arrays.update({
        "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4).T, "big_endian": np.arange(5, dtype=">f8"),
        "int64_extremes": np.array([-(2 ** 63), -1, 0, 2 ** 63 - 1], np.int64),
        "ünïcode.näme": np.ones((1,), np.float32), "": np.ones(2, np.float16),
        "long_dims": np.zeros((1,) * 20 + (300,), np.float32),    # a dim of two varint bytes
        "res2.0.conv1.conv3d.weight": rng.standard_normal((64, 64, 3, 1, 1)).astype(np.float32),
    })
    return arrays


def _same(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype.newbyteorder("=") == y.dtype.newbyteorder("=") and x.shape == y.shape, name
        assert x.astype(x.dtype.newbyteorder("<")).tobytes() == y.tobytes() and y.flags.writeable, name


@pytest.mark.parametrize("crc", [False, True])
def test_bytes_are_those_of_the_hand_written_writer(crc, tmp_path):
    arrays = _every_kind(np.random.default_rng(0))
    data = serialize_ckpt(arrays, crc=crc)
    assert data == frozen_serialize(arrays, crc=crc)
    write_ckpt(str(tmp_path / "a.ckpt"), arrays, crc=crc)
    assert (tmp_path / "a.ckpt").read_bytes() == data
    _same(arrays, parse_ckpt(data)[0])


def test_sliced_bytes_are_those_of_the_hand_written_writer(monkeypatch):
    monkeypatch.setattr(mindspore_ckpt, "_SLICE_KIB", 1)
    arrays = {"big": np.arange(2000, dtype=np.float32).reshape(100, 20), "exact": np.ones(512, np.float32),
              "small": np.ones(3, np.float32)}
    data = serialize_ckpt(arrays, crc=True)
    assert data == frozen_serialize(arrays, crc=True, slice_kib=1) and data.count(b"big") == 8
    _same(arrays, parse_ckpt(data)[0])


@pytest.mark.slow
def test_full_size_bytes_are_those_of_the_hand_written_writer(tmp_path):
    """The real network (35,459,152 numbers, 141.9 MB) written by both, byte for byte."""
    from frameworks.spec.arch import get_preset
    from frameworks.spec.train import initial_weights

    arrays = mindspore_ckpt.from_canonical(initial_weights(get_preset("i3d_nl_dot_product_r50")))
    write_ckpt(str(tmp_path / "full.ckpt"), arrays)
    assert (tmp_path / "full.ckpt").read_bytes() == frozen_serialize(arrays, crc=True)
    _same(arrays, read_ckpt(str(tmp_path / "full.ckpt")).arrays)


def test_packed_dims_read_as_unpacked():
    content = np.arange(6, dtype=np.float32).tobytes()
    tensor = b"\x0a\x02\x02\x03" + b"\x12\x07Float32" + b"\x1a\x18" + content
    value = b"\x0a\x01w" + b"\x12" + bytes([len(tensor)]) + tensor
    arrays, _ = parse_ckpt(b"\x0a" + bytes([len(value)]) + value)
    np.testing.assert_array_equal(arrays["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


# ------------------------------------------------------------------ hostile and broken files
def _varint(value: int) -> bytes:
    return _frozen_varint(value)


def _value(tag: bytes = b"w", tensor: bytes = None, extra: bytes = b"") -> bytes:
    body = (_frozen_len_field(1, tag) if tag is not None else b"") + extra
    if tensor is not None:
        body += _frozen_len_field(2, tensor)
    return _frozen_len_field(1, body)


def _tensor(dims=(1,), tensor_type=b"Float32", content=b"\0\0\0\0") -> bytes:
    return (b"".join(b"\x08" + _varint(d) for d in dims) + _frozen_len_field(2, tensor_type)
            + _frozen_len_field(3, content))


HUGE = 3_500_000_000
HOSTILE = {   # name -> (bytes, what the one-line refusal says)
    "value_declares_3.5GB": (b"\x0a" + _varint(HUGE) + _value()[2:], "runs past the end of the file"),
    "content_declares_3.5GB": (_value(tensor=_tensor()[:-6] + b"\x1a" + _varint(HUGE) + b"\0" * 64),
                               "is not a valid protobuf message"),
    "dims_declare_3.5GB": (_value(tensor=_tensor(dims=(HUGE, 1))), "do not fill dims [3500000000, 1]"),
    "dims_product_wraps_int64": (_value(tensor=_tensor(dims=(2 ** 62, 4, 1))), "do not fill dims"),
    "negative_dims": (_value(tensor=_tensor(dims=((1 << 64) - 1, (1 << 64) - 1))), "do not fill dims [-1, -1]"),
    "packed_dims_bomb": (_value(tensor=b"\x0a" + _varint(2_000_000) + b"\x01" * 2_000_000 + _tensor(dims=())),
                         "2000000 dims, more than an array can have (32)"),
    "empty_values": (b"\x0a\x00" * 1_000_000, "a Checkpoint.Value lacks its tag or tensor"),
    "map_tensor": (_value(extra=_frozen_len_field(3, _frozen_len_field(1, _tensor()))), "w is a MapTensor"),
    "no_tensor_type": (_value(tensor=_frozen_len_field(3, b"\0\0\0\0")), "lacks its tensor_type or tensor_content"),
    "bad_utf8_tag": (_value(tag=b"\xff\xfe", tensor=_tensor()), "can't decode byte 0xff"),
    "unknown_type": (_value(tensor=_tensor(tensor_type=b"Objct")), "tensor type 'Objct' has no numpy equivalent"),
    "top_level_field_2": (b"\x12\x01w", "unexpected top-level field 2 (wire type 2)"),
    "duplicate": (_value(tensor=_tensor()) + _value(b"v", _tensor()) + _value(tensor=_tensor()),
                  "parameter 'w' appears twice"),
    "content_not_whole_elements": (_value(tensor=_tensor(content=b"\0" * 5)), "multiple of element size"),
}


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_ckpt")
    for name, (data, _) in HOSTILE.items():
        (root / f"{name}.ckpt").write_bytes(data)
    return root


def test_hostile_files_are_refused_in_one_line_with_memory_capped(hostile_files):
    """Each file is a few bytes to 2 MB; the declared sizes are never allocated: the reader
    runs with its address space capped below the 3.5 GB they declare, and its peak RSS over
    all of them stays near the files' own size (handed to protobuf whole, empty_values alone
    made ~6x its size in messages; packed_dims_bomb makes ~10x, as the old reader did)."""
    code = ("import json, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from harness.checkpoints.mindspore_ckpt import read_ckpt\n"
            "from harness.checkpoints.io import CheckpointError\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "out = {}\n"
            "for name in sys.argv[2:]:\n"
            "    try:\n"
            "        read_ckpt(f'{sys.argv[1]}/{name}.ckpt'); out[name] = 'READ'\n"
            "    except CheckpointError as exc:\n"
            "        out[name] = str(exc)\n"
            "out['peak_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(hostile_files), *HOSTILE], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for name, (_, needle) in HOSTILE.items():
        assert needle in out[name] and "\n" not in out[name] and f"{name}.ckpt" in out[name], (name, out[name])
    assert out["peak_mb"] < 100, out["peak_mb"]


def test_a_file_cut_anywhere_is_a_one_line_error(tmp_path):
    """Except between two Values: what is left is then a whole checkpoint of fewer parameters."""
    first = serialize_ckpt({"a": np.arange(3, dtype=np.float32)})
    data = serialize_ckpt({"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), np.float16)}, crc=True)
    for cut in range(1, len(data) - 17):
        (tmp_path / "cut.ckpt").write_bytes(data[:cut])
        try:
            raw = read_ckpt(str(tmp_path / "cut.ckpt"))
        except CheckpointError as exc:
            assert "cut.ckpt" in str(exc) and "\n" not in str(exc), cut
            continue
        assert cut == len(first) and list(raw.arrays) == ["a"], cut


# ------------------------------------------------------------------ no MindSpore, no protobuf
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, timeout=300)


def test_reading_and_writing_with_mindspore_not_installed(tmp_path):
    path = tmp_path / "a.ckpt"
    proc = _run("import sys; sys.modules['mindspore'] = None   # as if not installed: importing it fails\n"
                "import numpy as np\n"
                "from harness.checkpoints.mindspore_ckpt import read_ckpt, write_ckpt\n"
                f"write_ckpt({str(path)!r}, {{'x': np.arange(3, dtype=np.float32)}})\n"
                f"raw = read_ckpt({str(path)!r}); print(raw.arrays['x'].tolist(), raw.integrity)\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "[0.0, 1.0, 2.0] crc32 ok", proc.stderr[-2000:]
    assert path.read_bytes() == frozen_serialize({"x": np.arange(3, dtype=np.float32)}, crc=True)


def test_without_protobuf_a_ckpt_is_a_one_line_refusal_and_the_rest_imports(tmp_path):
    write_ckpt(str(tmp_path / "a.ckpt"), {"x": np.ones(2, np.float32)})
    proc = _run("import sys; sys.modules['google'] = sys.modules['google.protobuf'] = None\n"
                "from harness.checkpoints.io import CheckpointError\nfrom harness.checkpoints.formats import read_raw\n"
                "import harness.checkpoints.formats, harness.convert\n"
                "try:\n"
                f"    read_raw({str(tmp_path / 'a.ckpt')!r})\n"
                "except CheckpointError as exc:\n"
                "    print(exc)\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ("reading or writing a MindSpore .ckpt needs the 'protobuf' package "
                                   "(pip install protobuf)")
