"""The one table of weight-file formats (harness.checkpoints.formats): every container and
format round-trips byte for byte through it, every scheme's renaming is a bijection, a
failed write leaves nothing behind, and no import changes the table."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import MappingProxyType

import numpy as np
import pytest

from frameworks.spec.arch import PRESETS, get_preset, parameter_specs
from harness.checkpoints import (SchemeCannotName, WeightsDoNotFit, detect_scheme, from_canonical, load_weights,
                                 mindspore_ckpt, to_canonical)
from harness.checkpoints import io as ckpt_io
from harness.checkpoints.formats import (ALIASES, CONTAINERS, FORMATS, SCHEMES, check_dtypes, find_format,
                                         find_scheme, format_for_path)
from harness.checkpoints.io import CheckpointError
from harness.checkpoints.formats import read_raw, sniff_container
from tests.conftest import ROOT

# each scheme's own graph (mindvideo names cannot express Caffe2's biased non-local output)
HOME_PRESET = {"caffe2": "i3d_nl_caffe2_r50", "mindvideo": "i3d_nl_mindvideo_r50"}


def tiny(preset: str):
    """A preset at 1/16 of its width: every name of the real graph, 150k parameters."""
    return get_preset(preset).replace(base_channels=4, num_classes=7)


def random_arrays(cfg, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in parameter_specs(cfg).items()}


def assert_byte_identical(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k


# ------------------------------------------------------------------ the tables themselves
def test_the_tables_are_read_only_and_complete():
    for table in (CONTAINERS, SCHEMES, FORMATS, ALIASES):
        assert isinstance(table, MappingProxyType)
        with pytest.raises(TypeError):
            table["new"] = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONTAINERS["npz"].write = None
    assert list(CONTAINERS) == ["torch", "npz", "safetensors", "pickle", "ckpt"]
    assert list(SCHEMES)[:2] == ["mindspore", "canonical"]   # detected in this order: shared prefixes
    assert list(FORMATS) == ["torch", "ms", "npz", "safetensors", "mmaction2", "caffe2", "mindvideo"]
    for name, row in {**CONTAINERS, **SCHEMES, **FORMATS}.items():
        assert row.name == name
    for fmt in FORMATS.values():
        assert CONTAINERS[fmt.container.name] is fmt.container and SCHEMES[fmt.scheme.name] is fmt.scheme
    for alias, name in ALIASES.items():
        assert find_format(alias.upper()) is FORMATS[name]


def test_format_lookup_by_name_and_extension():
    assert format_for_path("a/W.PTH").name == "torch" and format_for_path("w.pt").name == "torch"
    assert [format_for_path(f"w{ext}").name for ext in (".ckpt", ".npz", ".safetensors", ".pkl")] == \
        ["ms", "npz", "safetensors", "caffe2"]
    with pytest.raises(CheckpointError, match="cannot tell the output format from 'w.onnx'; pass --to"):
        format_for_path("w.onnx")
    with pytest.raises(CheckpointError, match="unknown format 'onnx'; choose from torch, ms"):
        find_format("onnx")
    with pytest.raises(CheckpointError, match="unknown naming scheme 'timm'"):
        find_scheme("timm")
    assert (FORMATS["torch"].read_scheme, FORMATS["mmaction2"].read_scheme) == (None, SCHEMES["mmaction2"])


TABLE_DUMP = r"""
import json, sys
{imports}
formats = sys.modules["harness.checkpoints.formats"]
name = lambda f: f"{{f.__module__}}.{{f.__qualname__}}"
dump = {{
    "containers": [[c.name, name(c.sniff), name(c.read), name(c.write), list(c.extensions)]
                   for c in formats.CONTAINERS.values()],
    "schemes": [[s.name, name(s.detect), name(s.to_canonical), name(s.from_canonical), name(s.ignored)]
                for s in formats.SCHEMES.values()],
    "formats": [[f.name, f.container.name, f.scheme.name, list(f.extensions), f.strict]
                for f in formats.FORMATS.values()],
    "aliases": dict(formats.ALIASES),
    "io": sorted(n for n in ("READERS", "WRITERS", "_SNIFFERS") if hasattr(sys.modules["harness.checkpoints.io"], n)),
}}
print("TABLE " + json.dumps(dump))
"""


def _table_after(imports: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", TABLE_DUMP.format(imports=imports)], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("TABLE "))[6:])


def test_no_import_changes_the_table():
    """Importing harness.checkpoints.io alone gives the table that importing every reader,
    scheme and command gives: no module adds to it (or to io) when imported."""
    alone = _table_after("import harness.checkpoints.io")
    everything = _table_after("import harness.checkpoints.io, harness.checkpoints.mindspore_ckpt, "
                              "harness.checkpoints.caffe2, harness.checkpoints.mmaction2, "
                              "harness.checkpoints.mindvideo, harness.checkpoints.registry, "
                              "harness.checkpoints.__main__, harness.convert")
    assert alone == everything
    assert alone["io"] == [], "io keeps tables of its own again"
    assert [c[0] for c in alone["containers"]] == list(CONTAINERS)


# ------------------------------------------------------------------ containers
CONTAINER_ARRAYS = {
    "stem.conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 1, 2, 2),
    "half": np.linspace(-2, 2, 10, dtype=np.float16).reshape(5, 2),
    "double": np.array([np.pi, -0.0, np.inf, 1e-300]),
    "nan": np.array([np.nan, 1.0], np.float32),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 3), np.float32),
    "strided": np.arange(12, dtype=np.float32).reshape(3, 4).T,   # not C-contiguous
}


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_every_container_round_trips_byte_exact(name, tmp_path):
    container = CONTAINERS[name]
    path = tmp_path / "weights.bin"   # the extension decides nothing
    container.write(str(path), CONTAINER_ARRAYS)
    assert sniff_container(str(path)) == name
    raw = read_raw(str(path))
    assert raw.container == name
    assert_byte_identical(CONTAINER_ARRAYS, raw.arrays)
    assert os.listdir(tmp_path) == ["weights.bin"] and (os.stat(path).st_mode & 0o777) == 0o644
    # writing over an existing file replaces it whole
    container.write(str(path), {"x": np.ones(2, np.float32)})
    assert_byte_identical({"x": np.ones(2, np.float32)}, read_raw(str(path)).arrays)


def test_meta_round_trips_where_the_container_has_a_place_for_it(tmp_path):
    arrays = {"w": np.ones(2, np.float32)}
    CONTAINERS["torch"].write(str(tmp_path / "a.pth"), arrays, {"epoch": 3})
    assert read_raw(str(tmp_path / "a.pth")).meta == {"epoch": 3}
    CONTAINERS["pickle"].write(str(tmp_path / "a.pkl"), arrays, {"model_iter": 7})
    raw = read_raw(str(tmp_path / "a.pkl"))
    assert raw.meta == {"model_iter": 7} and list(raw.arrays) == ["w"]
    for name in ("npz", "ckpt", "safetensors"):   # accepted; npz and ckpt have no place for it
        CONTAINERS[name].write(str(tmp_path / f"m.{name}"), arrays, {"epoch": 3})
        assert_byte_identical(arrays, read_raw(str(tmp_path / f"m.{name}")).arrays)


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_a_write_that_fails_leaves_no_temp_file_and_the_old_file_whole(name, tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"the previous weights")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        CONTAINERS[name].write(str(path), CONTAINER_ARRAYS)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["weights.bin"] and path.read_bytes() == b"the previous weights"


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_a_writer_that_fails_midway_leaves_nothing(name, tmp_path):
    """An array the container cannot hold fails inside the writer, whichever step it fails at."""
    bad = {"ok": np.ones(3, np.float32), "objects": np.array([{"a": 1}, None], dtype=object)}
    if name == "pickle":   # a pickle holds anything: fail in the file system instead
        (tmp_path / "weights.bin").mkdir()
    with pytest.raises(Exception):
        CONTAINERS[name].write(str(tmp_path / "weights.bin"), bad)
    assert [p for p in os.listdir(tmp_path) if p != "weights.bin"] == []
    assert not (tmp_path / "weights.bin").is_file()


def test_sniffing_is_by_content_and_names_every_container(tmp_path):
    CONTAINERS["npz"].write(str(tmp_path / "looks.pth"), {"a": np.ones(1, np.float32)})
    assert sniff_container(str(tmp_path / "looks.pth")) == "npz"
    (tmp_path / "noise.pth").write_bytes(b"\x01" * 64)
    with pytest.raises(CheckpointError) as info:
        sniff_container(str(tmp_path / "noise.pth"))
    assert all(c.label in str(info.value) for c in CONTAINERS.values())
    data = (tmp_path / "looks.pth").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged zip archive"):
        sniff_container(str(tmp_path / "cut.npz"))


# ------------------------------------------------------------------ schemes and formats
def test_every_scheme_renames_bijectively_on_every_preset_it_can_name():
    """from_canonical then to_canonical gives back the very same arrays, and the other way
    round; the names are detected as that scheme. Zero-stride arrays: full-size names and
    shapes for no memory."""
    cannot = []
    for scheme in SCHEMES.values():
        for preset in PRESETS:
            cfg = get_preset(preset)
            canonical = {k: np.broadcast_to(np.float32(i), shape)
                         for i, (k, shape) in enumerate(parameter_specs(cfg).items())}
            try:
                foreign = from_canonical(canonical, cfg, scheme.name)
            except SchemeCannotName:
                cannot.append((scheme.name, preset))
                continue
            assert detect_scheme(foreign) == scheme.name, (scheme.name, preset)
            back = scheme.to_canonical(foreign, cfg)
            assert list(back) == list(canonical) and all(back[k] is canonical[k] for k in canonical)
            again = scheme.from_canonical(back, cfg)
            assert list(again) == list(foreign) and all(again[k] is foreign[k] for k in foreign)
    assert cannot == [("mindvideo", "i3d_nl_caffe2_r50")]


def test_every_scheme_has_one_from_canonical_signature():
    cfg = tiny("i3d_nl_dot_product_r50")
    arrays = random_arrays(cfg)
    for scheme in SCHEMES.values():
        named = scheme.from_canonical(arrays, cfg=cfg)   # by keyword too: one signature, (arrays, cfg)
        assert len(named) == len(arrays), scheme.name
    # our MindSpore names do not depend on cfg; callers written before it had one still work
    assert mindspore_ckpt.from_canonical(arrays) == mindspore_ckpt.from_canonical(arrays, cfg)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_round_trips_byte_exact_through_the_table(fmt, tmp_path):
    target = FORMATS[fmt]
    cfg = tiny(HOME_PRESET.get(target.scheme.name, "i3d_nl_dot_product_r50"))
    arrays = random_arrays(cfg, np.float16 if fmt == "ms" else np.float32, seed=len(fmt))
    path = tmp_path / "weights.bin"
    target.container.write(str(path), from_canonical(arrays, cfg, target.scheme.name))
    raw = read_raw(str(path))
    assert raw.container == target.container.name and detect_scheme(raw.arrays) == target.scheme.name
    assert_byte_identical(arrays, to_canonical(raw.arrays, cfg))
    loaded = load_weights(str(path), cfg)
    assert (loaded.container, loaded.scheme) == (target.container.name, target.scheme.name)
    assert_byte_identical(arrays, loaded.arrays)


def test_training_state_each_scheme_ignores():
    keys = ["accum.stem.conv.weight", "stat.stem.conv.weight", "global_step", "stem.conv.weight"]
    assert SCHEMES["mindvideo"].ignored(keys) == {"accum.*": 1, "global_step": 1, "stat.*": 1}
    assert SCHEMES["mindspore"].ignored(keys) == SCHEMES["mindvideo"].ignored(keys)
    assert all(SCHEMES[s].ignored(keys) == {} for s in ("canonical", "mmaction2", "caffe2"))


def test_weights_a_scheme_cannot_name_do_not_fit_in_one_line(tmp_path):
    """mindvideo names onto the Caffe2 graph: once a KeyError traceback from the rename table."""
    cfg = tiny("i3d_nl_mindvideo_r50")
    path = tmp_path / "mv.ckpt"
    CONTAINERS["ckpt"].write(str(path), from_canonical(random_arrays(cfg), cfg, "mindvideo"))
    with pytest.raises(WeightsDoNotFit) as info:
        load_weights(str(path), tiny("i3d_nl_caffe2_r50"))
    assert "mindvideo names cannot express i3d_nl_caffe2_r50" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="unknown naming scheme 'timm'"):
        load_weights(str(path), cfg, scheme="timm")


# ------------------------------------------------------------------ dtype policy
def test_the_dtype_policy():
    for dtype in (np.float16, np.float32, np.float64):
        assert check_dtypes({"a": np.ones(2, dtype), "b": np.ones(1, dtype)}) == np.dtype(dtype)
    with pytest.raises(CheckpointError, match=r"dtype mismatch: the tensors mix dtypes: 1 float16 \(e.g. b\)"):
        check_dtypes({"a": np.ones(2, np.float32), "b": np.ones(1, np.float16), "c": np.ones(1, np.float32)})
    with pytest.raises(CheckpointError, match="dtype mismatch: weights are int32, expected a floating-point"):
        check_dtypes({"a": np.ones(2, np.int32)})
    if np.dtype(np.longdouble) != np.dtype(np.float64):   # no torch, safetensors or MindSpore equivalent
        with pytest.raises(CheckpointError, match="dtype mismatch: weights are float128"):
            check_dtypes({"a": np.ones(2, np.longdouble)})
    with pytest.raises(CheckpointError, match="the weights hold float16; the models run float32"):
        check_dtypes({"a": np.ones(2, np.float16)}, require="float32")
    assert check_dtypes({"a": np.ones(2, np.float32)}, require="float32") == np.float32
    with pytest.raises(CheckpointError, match=r"dtype mismatch: weights are big-endian float32 \(>f4\)"):
        check_dtypes({"a": np.ones(2, ">f4")})
    with pytest.raises(CheckpointError, match="mix dtypes: 1 >f4"):
        check_dtypes({"a": np.ones(2, ">f4"), "b": np.ones(2, np.float32), "c": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="no tensors"):
        check_dtypes({})


def test_io_and_formats_keep_their_public_names():
    for name in ("write_npz", "sha256_file", "arrays_sha256", "RawCheckpoint", "CheckpointError", "refusal"):
        assert hasattr(ckpt_io, name), name
    from harness.checkpoints import formats   # the readers that dispatch over the table live beside it

    for name in ("read_raw", "sniff_container", "integrity_of"):
        assert hasattr(formats, name), name
