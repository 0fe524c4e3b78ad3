"""Checkpoint files that lie about themselves (issue "nothing lost, nothing false", items 2 and 3).

2. Sizes are bounded before anything is allocated: a .pth / .npz / .pkl of a few kilobytes
   that declares gigabytes (a bytearray, a storage, an expanded tensor view, a metadata
   structure of shared references, an .npy header, a zip bomb) is refused in one line, exit
   2, and the command's peak RSS stays that of a normal refusal (it was 3.6 GB, or 15 GB and
   the OOM killer, before). Each command runs with its address space capped, so that a
   regression fails the test instead of taking the machine's memory.
3. A file's own integrity check is made and stated: MindSpore's CRC trailer
   (``save_checkpoint(..., crc_check=True)``, written here by MindSpore 2.10 itself) and the
   zip CRC-32 of a .pth are verified (one flipped bit: one line, exit 2), a file without one
   is said to carry none (a flipped bit in its tensor data cannot be detected), and the
   .ckpt files we write carry a CRC.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, parameter_specs
from harness.checkpoints.io import NO_CHECKSUM, CheckpointError
from harness.checkpoints.formats import read_raw
from harness.checkpoints.mindspore_ckpt import crc_trailer, serialize_ckpt, write_ckpt
from harness.checkpoints.safe_pickle import PickleTooLarge, SafeUnpickler, inert_copy
from tests.conftest import ROOT
from tests.safety_payloads import Call

HUGE = 3_500_000_000          # what the hostile files declare: 3.5 GB
CAP = 4 << 30                 # address space of a measured command: a regression fails, it does not swap
PEAK_LIMIT_MB = 1024          # a refusal peaks near 250-300 MB (torch imported); the hostile files made 3,600+


def _lines(text: str):
    return [ln for ln in text.splitlines() if ln.strip()]


def measured(module: str, *args, cap: int = CAP):
    """Run ``python -m module args`` in a fresh process whose only child it is, with its
    address space capped; (returncode, stdout, stderr, peak RSS of the command in MB)."""
    code = ("import json, resource, subprocess, sys\n"
            "cap = int(sys.argv[1])\n"
            "def limit():\n"
            "    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
            "p = subprocess.run([sys.executable, '-m', *sys.argv[2:]], capture_output=True, text=True,"
            " preexec_fn=limit)\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
            "print(json.dumps([p.returncode, p.stdout, p.stderr, peak]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(cap), module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tuple(json.loads(proc.stdout))


# ------------------------------------------------------------------ hostile files (item 2)
def _tiny_state():
    return OrderedDict([("backbone.conv1.conv.weight", torch.ones(2, 3, 1, 1, 1)),
                        ("cls_head.fc_cls.bias", torch.zeros(4))])


def _rewrite_pickle(path, old: bytes, new: bytes) -> None:
    """Replace bytes of a torch zip's data.pkl (the other members copied as they are)."""
    src = str(path) + ".orig"
    os.replace(path, src)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(path, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("data.pkl"):
                assert old in data, "the pickle does not hold what the test patches"
                data = data.replace(old, new, 1)
            out.writestr(info, data)
    os.remove(src)


def _write_hostile(kind: str, path) -> str:
    """One file that declares gigabytes from a few kilobytes; returns what the refusal names."""
    if kind == "pth_bytearray":          # bytearray(3.5e9): an allowlisted constructor given a size
        torch.save({"meta": {"note": Call(bytearray, HUGE)}, "state_dict": _tiny_state()}, path)
        return "declares a bytearray of 3.5 GB"
    if kind == "pth_storage":            # a storage whose pickled element count is not its record's
        torch.save({"state_dict": OrderedDict([("cls_head.fc_cls.bias", torch.zeros(4))])}, path)
        _rewrite_pickle(path, b"K\x04t", b"J" + (HUGE // 4).to_bytes(4, "little") + b"t")
        return "declares a storage data/0 of 3.5 GB"
    if kind == "pth_view":               # a 1-element storage seen as 875M elements (stride 0)
        torch.save({"state_dict": {"cls_head.fc_cls.bias": torch.zeros(1).expand(HUGE // 4)}}, path)
        return "declares a tensor of 875000000 elements on a storage of 1 elements"
    if kind == "pth_shared_lists":       # 10 levels of 10 references to one list: 10^9 objects once copied
        tree = ["x" * 10]
        for _ in range(9):
            tree = [tree] * 10
        torch.save({"meta": {"history": tree}, "state_dict": _tiny_state()}, path)
        return "metadata expands to more than 1,000,000 objects"
    if kind == "npz_header":             # an .npy header declaring 3.5 GB over 16 bytes of data
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (HUGE // 4,)})
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("stem.conv.weight.npy", header.getvalue() + b"\0" * 16)
        return "declares 3.5 GB of float32 [875000000]"
    if kind == "npz_bomb":               # 300 MB of zeros deflated into a few hundred kilobytes
        n = 300 << 20
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n // 4,)})
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            with z.open("stem.conv.weight.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                for _ in range(n >> 20):
                    member.write(bytes(1 << 20))
        return "zip members declare 314.6 MB from a file of"
    if kind == "pkl_ndarray":            # a Caffe2 blob pickle (numpy.ndarray is on its allowlist)
        blobs = {"conv1_w": np.ones((2, 3, 1, 1, 1), np.float32), "pred_w": np.ones((4, 2), np.float32),
                 "pred_b": Call(np.ndarray, (HUGE // 4,), "<f4")}
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
        return "declares an array of 3.5 GB"
    raise ValueError(kind)


HOSTILE = ["pth_bytearray", "pth_storage", "pth_view", "pth_shared_lists", "npz_header", "npz_bomb", "pkl_ndarray"]
SUFFIX = {"npz_header": ".npz", "npz_bomb": ".npz", "pkl_ndarray": ".pkl"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("oversized")
    files = {}
    for kind in HOSTILE:
        path = root / f"{kind}{SUFFIX.get(kind, '.pth')}"
        files[kind] = (path, _write_hostile(kind, path))
        assert path.stat().st_size < 2 << 20, (kind, path.stat().st_size)   # small files, huge claims
    return files


def test_the_cap_does_not_itself_fail_a_command(tmp_path):
    """Control: a small honest .pth under the same cap reaches the command's own verdict."""
    torch.save({"state_dict": _tiny_state()}, tmp_path / "honest.pth")
    code, _, err, peak = measured("harness.convert", tmp_path / "honest.pth", tmp_path / "out.npz")
    assert code == 2 and "does not fit any arch preset" in err, err
    assert peak < PEAK_LIMIT_MB


@pytest.mark.parametrize("kind", HOSTILE)
def test_oversized_declaration_is_refused_before_it_is_allocated(kind, hostile, tmp_path):
    path, what = hostile[kind]
    code, out, err, peak = measured("harness.convert", path, tmp_path / "out.npz")
    lines = _lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    assert lines[0].startswith(f"error: refusing {path}") and what in lines[0], lines[0]
    assert peak < PEAK_LIMIT_MB, f"peak RSS {peak:.0f} MB"
    assert not (tmp_path / "out.npz").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["pth_bytearray", "pth_shared_lists"])
def test_infer_refuses_them_too(kind, hostile, tmp_path):
    path, what = hostile[kind]
    video = tmp_path / "v.mp4"
    video.write_bytes(b"never decoded")
    code, out, err, peak = measured("harness.infer", "--framework", "torch", "--checkpoint", path, video)
    lines = _lines(err)
    assert code == 2 and len(lines) == 1 and what in lines[0], (code, err[-2000:])
    assert peak < PEAK_LIMIT_MB, f"peak RSS {peak:.0f} MB"


def test_the_unpickler_bounds_what_allowlisted_constructors_build():
    """In process, with sizes a regression could afford: the budget is the stream's length."""
    small = pickle.dumps({"x": Call(bytearray, 100_000_000)}, protocol=2)
    with pytest.raises(PickleTooLarge, match="bytearray of 100.0 MB"):
        SafeUnpickler(io.BytesIO(small)).load()
    with pytest.raises(PickleTooLarge, match="an array of 400.0 MB"):
        SafeUnpickler(io.BytesIO(pickle.dumps(Call(np.ndarray, (100_000_000,), "<f4"), protocol=2))).load()
    # what checkpoints really hold still loads: arrays (ndarray through _reconstruct), bytearrays, scalars
    honest = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": bytearray(b"abc"), "s": np.float64(2.5),
              "n": np.ndarray((2, 2), "<f4")}
    for protocol in (2, 4):
        back = SafeUnpickler(io.BytesIO(pickle.dumps(honest, protocol=protocol))).load()
        np.testing.assert_array_equal(back["a"], honest["a"])
        assert back["b"] == bytearray(b"abc") and back["s"] == 2.5 and back["n"].shape == (2, 2)


def test_metadata_copy_is_bounded_but_real_metadata_is_kept():
    tree = [1]
    for _ in range(8):
        tree = [tree] * 10
    with pytest.raises(PickleTooLarge, match="more than 1,000,000 objects"):
        inert_copy({"history": tree})
    meta = {"classes": ["a", "b"], "epoch": 3, "nested": {"lr": [0.1] * 1000}}
    assert inert_copy(meta) == meta


def test_honest_files_of_every_zip_container_still_read(tmp_path):
    """The bounds refuse lies, not files: torch.save, np.savez and savez_compressed of
    zeros (deflate ratio ~1000, under the zip slack) read back as written."""
    state = {"w": torch.zeros(3, 4), "v": torch.arange(6, dtype=torch.float32)[2:]}   # a view at an offset
    torch.save({"state_dict": state, "meta": {"classes": ["x"]}}, tmp_path / "a.pth")
    raw = read_raw(str(tmp_path / "a.pth"))
    assert raw.arrays["v"].tolist() == [2, 3, 4, 5] and raw.meta == {"classes": ["x"]}
    assert raw.integrity == "zip crc32 ok"
    np.savez_compressed(tmp_path / "z.npz", w=np.zeros((1000, 1000), np.float32))
    assert read_raw(str(tmp_path / "z.npz")).arrays["w"].shape == (1000, 1000)


# ------------------------------------------------------------------ integrity (item 3)
MS_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "GLOG_v": "3"}


def _mindspore_save(path, crc: bool) -> None:
    """MindSpore 2.10 itself writes the file (in a child: MindSpore and decord do not share a process)."""
    code = ("import sys, numpy as np, mindspore as ms\n"
            "ms.save_checkpoint({'stem.conv.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 1, 2, 2),"
            " 'head.fc.bias': np.ones(4, np.float32)}, sys.argv[1], crc_check=sys.argv[2] == '1')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), "1" if crc else "0"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **MS_ENV}, timeout=300)
    assert proc.returncode == 0 and os.path.isfile(path), proc.stderr[-2000:]
    os.chmod(path, 0o644)   # MindSpore leaves its checkpoints read-only


def _flip(path, offset: int, out) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x04
    with open(out, "wb") as f:
        f.write(bytes(data))


@pytest.fixture(scope="module")
def ms_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("crc")
    _mindspore_save(root / "crc.ckpt", crc=True)
    _mindspore_save(root / "plain.ckpt", crc=False)
    return root


@pytest.mark.mindspore
def test_mindspore_crc_trailer_is_how_we_read_it(ms_files):
    """The format, learnt from the bytes MindSpore writes: the plain file, then b"crc_num"
    and the CRC-32 of every byte before it, as 10 big-endian bytes."""
    import binascii

    crc, plain = (ms_files / "crc.ckpt").read_bytes(), (ms_files / "plain.ckpt").read_bytes()
    assert crc[:-17] == plain and crc[-17:] == crc_trailer(binascii.crc32(plain))
    assert read_raw(str(ms_files / "crc.ckpt")).integrity == "crc32 ok"
    assert read_raw(str(ms_files / "plain.ckpt")).integrity == NO_CHECKSUM
    arrays = read_raw(str(ms_files / "plain.ckpt")).arrays
    assert serialize_ckpt(arrays, crc=True) == crc          # our writer adds the same trailer


@pytest.mark.mindspore
@pytest.mark.parametrize("where,needle", [(100, "damaged: its CRC-32 is"),           # tensor data
                                          (-3, "damaged: its CRC-32 is"),            # the stored CRC
                                          (-15, "damaged: its CRC trailer reads")])  # the trailer's mark
def test_one_flipped_bit_in_a_crc_file_is_one_line_exit_2(ms_files, tmp_path, cli, where, needle):
    data_len = (ms_files / "crc.ckpt").stat().st_size
    bad = tmp_path / "bad.ckpt"
    _flip(ms_files / "crc.ckpt", where % data_len, bad)
    for argv in (["harness.convert", bad, tmp_path / "out.npz"], ["harness.diff", bad, ms_files / "crc.ckpt"],
                 ["harness.infer", "--framework", "torch", "--checkpoint", bad, ms_files / "crc.ckpt"]):
        proc = cli(*argv)
        lines = _lines(proc.stderr)
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (argv, proc.stderr[-2000:])
    assert not (tmp_path / "out.npz").exists()
    # verify's job is this check: a failed one is its exit 1, said on stdout
    proc = cli("harness.checkpoints", "verify", bad)
    assert proc.returncode == 1 and f"FAILED: integrity: {bad} is damaged: " in proc.stdout, proc.stdout + proc.stderr
    assert needle.replace("damaged: ", "") in proc.stdout


@pytest.mark.mindspore
def test_a_file_without_crc_is_said_to_carry_none(ms_files, tmp_path, cli):
    bad = tmp_path / "flipped.ckpt"
    _flip(ms_files / "plain.ckpt", 100, bad)
    raw = read_raw(str(bad))       # undetectable: it reads, and says it could not check
    assert raw.integrity == NO_CHECKSUM
    for path in (bad, ms_files / "plain.ckpt"):
        proc = cli("harness.checkpoints", "verify", path, "--hash-only")
        assert f"{path}: integrity: none in file (a flipped bit inside tensor data cannot be detected)" \
               in proc.stdout, proc.stdout
    proc = cli("harness.checkpoints", "verify", ms_files / "crc.ckpt", "--hash-only")
    assert f"{ms_files / 'crc.ckpt'}: integrity: crc32 ok" in proc.stdout


def _full_weights(tmp_path, crc: bool):
    cfg = get_preset("i3d_r50").replace(num_classes=3)
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in parameter_specs(cfg).items()}
    from harness.checkpoints.mindspore_ckpt import from_canonical

    path = tmp_path / ("crc.ckpt" if crc else "plain.ckpt")
    write_ckpt(str(path), from_canonical(arrays), crc=crc)
    return path


def test_convert_states_the_integrity_check_it_made(tmp_path, cli):
    plain, crc = _full_weights(tmp_path, crc=False), _full_weights(tmp_path, crc=True)
    proc = cli("harness.convert", plain, tmp_path / "a.npz")
    assert proc.returncode == 0, proc.stderr
    assert "integrity: none in file (a flipped bit inside tensor data cannot be detected)" in proc.stdout
    proc = cli("harness.convert", crc, tmp_path / "b.pth")
    assert proc.returncode == 0 and "integrity: crc32 ok" in proc.stdout, proc.stderr
    proc = cli("harness.convert", tmp_path / "b.pth", tmp_path / "c.ckpt")   # a .pth: its zip's CRC-32s
    assert proc.returncode == 0 and "integrity: zip crc32 ok" in proc.stdout, proc.stderr
    assert (tmp_path / "c.ckpt").read_bytes()[-17:-10] == b"crc_num"      # what we write carries a CRC
    data = (tmp_path / "c.ckpt").read_bytes()
    _flip(tmp_path / "c.ckpt", len(data) // 2, tmp_path / "d.ckpt")
    proc = cli("harness.convert", tmp_path / "d.ckpt", tmp_path / "e.npz")
    assert proc.returncode == 2 and len(_lines(proc.stderr)) == 1 and "damaged: its CRC-32" in proc.stderr


def test_a_flipped_bit_in_a_pth_is_found_by_its_zip_crc(tmp_path, cli):
    torch.save({"state_dict": {"w": torch.arange(1000, dtype=torch.float32)}}, tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    data = (tmp_path / "w.pth").read_bytes()
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    _flip(tmp_path / "w.pth", start + 2000, tmp_path / "bad.pth")
    assert torch.load(tmp_path / "bad.pth")["state_dict"]["w"][500] != 500   # torch reads it, unchecked
    with pytest.raises(CheckpointError, match="damaged: the CRC-32 does not match the content of"):
        read_raw(str(tmp_path / "bad.pth"))
    proc = cli("harness.convert", tmp_path / "bad.pth", tmp_path / "out.npz")
    assert proc.returncode == 2 and len(_lines(proc.stderr)) == 1 and "damaged" in proc.stderr
