"""Safety and fidelity of checkpoint reading (issue 9, items 1 and 2).

1. A checkpoint never runs code: hostile ``.pth`` / ``.pkl`` / ``.npz`` files, whose payload
   is first shown to run under plain unpickling, are refused by every command that reads
   weights (exit 2, one line, no marker file), while real mmengine / mmaction2 0.x files,
   which pickle classes of their own, load without importing or calling anything; only
   ``--trust-checkpoint`` unpickles fully.
2. MindSpore training checkpoints import: the optimiser state every MindSpore optimiser
   writes (names learnt by having MindSpore write them) is ignored and counted.
"""
from __future__ import annotations

import builtins
import hashlib
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

from frameworks.spec.arch import WeightMismatchError, get_preset, parameter_specs
from harness.checkpoints import load_weights, mindspore_ckpt, mindvideo, mmaction2
from harness.checkpoints.io import CheckpointError
from harness.checkpoints.formats import read_raw
from harness.checkpoints.mindspore_ckpt import training_family, write_ckpt
from harness.checkpoints.safe_pickle import Placeholder, RefusedGlobal, SafeUnpickler
from tests.conftest import ROOT
from tests.safety_payloads import Call, TrustedNote

ARCH = "i3d_r50"          # the smallest mmaction2 preset (28M parameters)


def _lines(text: str):
    return [ln for ln in text.splitlines() if ln.strip()]


def _mmaction2_state(arch: str = ARCH, seed: int = 0):
    cfg = get_preset(arch)
    rng = np.random.default_rng(seed)
    canonical = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in parameter_specs(cfg).items()}
    state = OrderedDict((k, torch.from_numpy(v)) for k, v in mmaction2.from_canonical(canonical, cfg).items())
    return canonical, state


@pytest.fixture(scope="module")
def mm_weights():
    """Full-size mmaction2 ``i3d_r50`` weights: (canonical arrays, torch state dict)."""
    return _mmaction2_state()


# ------------------------------------------------------------------ the unpickler itself
def _safe_loads(data: bytes):
    return SafeUnpickler(io.BytesIO(data)).load()


@pytest.mark.parametrize("func,name", [(os.system, "posix.system"), (builtins.exec, "builtins.exec"),
                                       (builtins.eval, "builtins.eval"), (subprocess.Popen, "subprocess.Popen"),
                                       (builtins.__import__, "builtins.__import__"), (os.popen, "os.popen")])
def test_code_running_globals_are_refused_not_imported(func, name, tmp_path):
    marker = tmp_path / "MARKER"
    arg = f"touch {marker}" if func in (os.system, os.popen) else "0"
    for protocol in (0, 2, 4):
        data = pickle.dumps({"meta": Call(func, arg)}, protocol=protocol)
        with pytest.raises(RefusedGlobal) as info:
            _safe_loads(data)
        assert f"{info.value.module}.{info.value.name}" == name
    assert not marker.exists()


def test_unknown_globals_become_inert_placeholders(tmp_path):
    """An unknown function is neither imported nor called: REDUCE of its placeholder gives
    another placeholder; mmengine's getattr(cls, name) idiom stays inert too."""
    marker = tmp_path / "MARKER"
    data = pickle.dumps({"note": TrustedNote(str(marker)), "method": Call(getattr, TrustedNote, "__reduce__")},
                        protocol=2)
    data = data.replace(b"tests.safety_payloads", b"nlparity_no_such_mod")  # cannot even be imported
    obj = _safe_loads(data)
    assert not marker.exists()
    assert isinstance(obj["note"], Placeholder) and "nlparity_no_such_mod.write_marker" in repr(obj["note"])
    assert isinstance(obj["method"], Placeholder) and "builtins.getattr" in repr(obj["method"])
    assert isinstance(obj["note"](1, 2), Placeholder)                          # calling it does nothing
    assert "nlparity_no_such_mod" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):                           # numpy-only Caffe2 reader stays strict
        from harness.checkpoints.caffe2 import _NumpyOnlyUnpickler
        _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _build_onto_global(module: str, name: str, attribute: str, value_ops: bytes) -> bytes:
    """A protocol-2 stream that fetches a global and BUILDs ``attribute = value`` onto it."""
    key = attribute.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"N}X" + len(key).to_bytes(4, "little") + key
            + value_ops + b"s\x86b.")


def test_the_stream_cannot_set_attributes_on_shared_allowlisted_objects():
    import collections

    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    _safe_loads(_build_onto_global("collections", "Counter", "most_common", b"K\x01"))
    _safe_loads(_build_onto_global("torch._utils", "_rebuild_tensor_v2", "__defaults__", b"K\x07\x85"))
    assert callable(collections.Counter.most_common)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


# ------------------------------------------------------------------ hostile files
def _tiny_mm_state():
    return OrderedDict([("backbone.conv1.conv.weight", torch.ones(2, 3, 1, 1, 1)),
                        ("cls_head.fc_cls.bias", torch.zeros(4))])


def _write_hostile(kind: str, path, marker) -> str:
    """Write one hostile file; returns the global it uses (as the refusal names it)."""
    touch = f"touch {marker}"
    if kind == "pth_tensor":            # a tensor slot of the state dict
        state = _tiny_mm_state()
        state["cls_head.fc_cls.weight"] = Call(os.system, touch)
        torch.save({"meta": {}, "state_dict": state}, path)
        return "posix.system"
    if kind == "pth_meta":              # nested under meta, beside a valid state dict
        payload = Call(builtins.exec, f"open({str(marker)!r}, 'w').close()")
        torch.save({"meta": {"config": "x", "extra": [{"note": payload}]}, "state_dict": _tiny_mm_state()}, path)
        return "builtins.exec"
    if kind == "pth_optimizer":         # an optimizer entry
        payload = Call(subprocess.check_call, ["touch", str(marker)])
        torch.save({"meta": {}, "state_dict": _tiny_mm_state(),
                    "optimizer": {"state": {0: {"momentum_buffer": payload}},
                                  "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
        return "subprocess.check_call"
    if kind == "pth_message_hub":       # mmengine's message hub
        payload = Call(builtins.eval, f"__import__('os').system({touch!r})")
        torch.save({"meta": {}, "state_dict": _tiny_mm_state(),
                    "message_hub": {"log_scalars": {"train/loss": payload}, "runtime_info": {}, "resumed_keys": {}}},
                   path)
        return "builtins.eval"
    if kind == "pkl":                   # a Caffe2-style blob pickle
        blobs = {"conv1_w": np.ones((2, 3, 1, 1, 1), np.float32), "pred_w": np.ones((4, 2), np.float32),
                 "lr": Call(os.system, touch)}
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
        return "posix.system"
    if kind == "npz":                   # an object array
        payload = np.empty(1, dtype=object)
        payload[0] = Call(os.system, touch)
        np.savez(path, **{"stem.conv.weight": np.ones(3, np.float32), "evil": payload})
        return "the object array 'evil'"
    raise ValueError(kind)


def _unpickle_fully(kind: str, path) -> None:
    """What a careless reader does: must run the payload (proof the hostile file is real)."""
    if kind.startswith("pth"):
        torch.load(path, weights_only=False)
    elif kind == "pkl":
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")
    else:
        with np.load(path, allow_pickle=True) as z:
            z["evil"]


HOSTILE = ["pth_tensor", "pth_meta", "pth_optimizer", "pth_message_hub", "pkl", "npz"]
SUFFIX = {"pkl": ".pkl", "npz": ".npz"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """{kind: (path, marker, refused global)}, each payload proven to run under plain unpickling;
    plus a registry listing every file by name and digest (so that verify loads them)."""
    root = tmp_path_factory.mktemp("hostile")
    files, entries = {}, []
    for kind in HOSTILE:
        path = root / f"{kind}{SUFFIX.get(kind, '.pth')}"
        marker = root / f"MARKER_{kind}"
        what = _write_hostile(kind, path, marker)
        _unpickle_fully(kind, path)
        assert marker.exists(), f"the {kind} payload does not run under plain unpickling: the test would prove nothing"
        marker.unlink()
        files[kind] = (path, marker, what)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append(f'[hostile_{kind}]\norigin = "a test"\nurl = "{path.as_uri()}"\nfilename = "{path.name}"\n'
                       f'sha256 = "{digest}"\nformat = "mmaction2"\nframework_row = "pytorch"\narch = "{ARCH}"\n'
                       f'data_preset = "mmaction2_val"\n')
    registry = root / "registry.toml"
    registry.write_text("\n".join(entries))
    data = root / "data"
    (data / "val").mkdir(parents=True)   # one listed video (never decoded): evaluate refuses an empty index first
    (data / "kinetics-400_val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                               "abseiling,aaaaaaaaaaa,0,10,val\n")
    (data / "val" / "aaaaaaaaaaa_000000_000010.mp4").write_bytes(b"\0" * 64)
    return files, registry, data


def _command(command: str, path, tmp_path, data_root):
    if command == "convert":
        return ["harness.convert", path, tmp_path / "out.npz"]
    if command == "parity":
        return ["harness.parity", "--arch", ARCH, "--frameworks", "torch", "--reference", "mmaction2",
                "--checkpoint", path, "--input-shape", "1,3,8,64,64"]
    if command == "evaluate":
        return ["harness.evaluate", "--framework", "torch", "--arch", ARCH, "--data-root", data_root,
                "--checkpoint", path, "--out", tmp_path / "eval.json", "--workers", "0"]
    return ["harness.checkpoints", "verify", path]


@pytest.mark.parametrize("command", ["convert", "parity", "evaluate", "verify"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_checkpoint_is_refused_by_every_command(kind, command, hostile, cli, tmp_path):
    files, registry, data_root = hostile
    path, marker, what = files[kind]
    proc = cli(*_command(command, path, tmp_path, data_root), env={"NLPARITY_REGISTRY": str(registry)},
               timeout=300)
    assert not marker.exists(), f"{command} ran the payload of {kind}"
    lines = _lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"refusing to unpickle {what} from {path}" in lines[0], lines[0]
    assert "--trust-checkpoint" in lines[0]
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("module,argv", [("harness.convert", []), ("harness.parity", []), ("harness.evaluate", []),
                                         ("harness.checkpoints", ["verify"])])
def test_every_command_offers_trust_and_states_the_risk(module, argv, cli):
    proc = cli(module, *argv, "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "--trust-checkpoint" in text
    assert "can run arbitrary code" in text and "only for files you trust" in text


def test_trust_checkpoint_unpickles_fully_and_the_default_does_not(mm_weights, cli, tmp_path):
    """A file whose meta holds an object of an unknown class: by default it loads (the object
    is an inert placeholder, its reconstructor never called); with --trust-checkpoint it is
    really unpickled (the harmless payload writes its marker)."""
    canonical, state = mm_weights
    marker = tmp_path / "TRUSTED"
    path = tmp_path / "with_note.pth"
    torch.save({"meta": {"note": TrustedNote(str(marker))}, "state_dict": state}, path)
    default = cli("harness.convert", path, tmp_path / "a.npz")
    assert default.returncode == 0, default.stderr
    assert not marker.exists()
    trusted = cli("harness.convert", path, tmp_path / "b.npz", "--trust-checkpoint")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "unpickled\n"
    for name in ("a.npz", "b.npz"):
        back = read_raw(str(tmp_path / name)).arrays
        assert sorted(back) == sorted(canonical)
        np.testing.assert_array_equal(back["res5.2.conv3.weight"], canonical["res5.2.conv3.weight"])


def test_trust_is_the_library_default_off(tmp_path):
    marker = tmp_path / "M"
    path = tmp_path / "x.pth"
    torch.save({"meta": {"note": TrustedNote(str(marker))}, "state_dict": _tiny_mm_state()}, path)
    raw = read_raw(str(path))
    assert not marker.exists() and raw.meta["note"].startswith("<unpickled tests.safety_payloads.write_marker")
    read_raw(str(path), trust=True)
    assert marker.exists()


def test_state_dict_slot_holding_an_unknown_object_is_an_error(tmp_path):
    state = _tiny_mm_state()
    state["cls_head.fc_cls.weight"] = TrustedNote(str(tmp_path / "M"))
    torch.save({"state_dict": state}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="entries that are not tensors: cls_head.fc_cls.weight"):
        read_raw(str(tmp_path / "x.pth"))
    assert not (tmp_path / "M").exists()


def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pth"))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        read_raw(str(tmp_path / "ts.pth"))


def test_ckpt_and_safetensors_hold_no_code(tmp_path):
    """The .ckpt reader is a protobuf parser that builds numpy arrays only: a pickle hidden
    in a tensor's bytes stays bytes, and an unknown tensor type is a one-line refusal."""
    marker = tmp_path / "M"
    payload = pickle.dumps(Call(os.system, f"touch {marker}"))
    write_ckpt(str(tmp_path / "a.ckpt"), {"x": np.frombuffer(payload, np.uint8)}, crc=False)
    raw = read_raw(str(tmp_path / "a.ckpt"))
    assert raw.arrays["x"].tobytes() == payload and not marker.exists()
    data = (tmp_path / "a.ckpt").read_bytes().replace(b"UInt8", b"Objct")
    (tmp_path / "b.ckpt").write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        read_raw(str(tmp_path / "b.ckpt"))
    assert "Objct" in str(info.value) and "\n" not in str(info.value)
    write_ckpt(str(tmp_path / "a.ckpt"), {"x": np.frombuffer(payload, np.uint8)})   # with its CRC (the default)
    (tmp_path / "b.ckpt").write_bytes((tmp_path / "a.ckpt").read_bytes().replace(b"UInt8", b"Objct"))
    with pytest.raises(CheckpointError, match="damaged: its CRC-32"):
        read_raw(str(tmp_path / "b.ckpt"))
    from safetensors.numpy import save_file
    save_file({"x": np.ones(2, np.float32)}, str(tmp_path / "c.safetensors"), metadata={"p": payload.hex()})
    assert read_raw(str(tmp_path / "c.safetensors")).arrays["x"].tolist() == [1.0, 1.0] and not marker.exists()


# ------------------------------------------------------------------ real checkpoints load by default
def _mmengine_extras():
    """The entries mmengine's Runner.save_checkpoint writes beside the weights, from mmengine's
    own objects: message_hub (HistoryBuffer, numpy scalars), optimizer, param_schedulers."""
    import mmengine
    from mmengine.logging import MessageHub
    from mmengine.optim.scheduler import MultiStepLR

    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = MultiStepLR(optimizer, milestones=[1, 2], gamma=0.1)
    net(torch.randn(2, 3, 2, 2, 2)).sum().backward()
    optimizer.step()
    scheduler.step()
    hub = MessageHub.get_instance("nlparity_safety_test")
    hub.update_scalar("train/loss", 1.0)
    hub.update_scalar("train/lr", np.float64(0.1))
    hub.update_scalar("train/top1", np.float32(0.5), count=4)
    hub.update_info("epoch", 3)
    hub.update_info("iter", np.int64(7))
    meta = {"epoch": 3, "iter": 7, "cfg": "model = dict(type='Recognizer3D')\n", "seed": 0,
            "experiment_name": "i3d", "time": "20240101_000000", "mmengine_version": mmengine.__version__,
            "dataset_meta": {"classes": ("abseiling", "zumba")}}
    return meta, {"message_hub": hub.state_dict(), "optimizer": optimizer.state_dict(),
                  "param_schedulers": [scheduler.state_dict()]}


def _globals_in(path) -> set:
    import pickletools

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(data))
    found = {arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}
    found |= {f"{ops[i - 2][1]}.{ops[i - 1][1]}" for i, (op, _, _) in enumerate(ops) if op.name == "STACK_GLOBAL"}
    return found


@pytest.mark.reference
def test_mmengine_runner_checkpoint_loads_by_default_without_importing_anything(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    meta, extras = _mmengine_extras()
    state = weights_to_cpu(get_state_dict(net))
    path = tmp_path / "epoch_3.pth"
    save_checkpoint({"meta": meta, "state_dict": state, **extras}, str(path))
    used = _globals_in(path)
    # the file really pickles mmengine's classes and getattr, which weights_only=True refuses
    assert {"mmengine.logging.history_buffer.HistoryBuffer", "__builtin__.getattr"} <= used, used
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    # read in a fresh process: nothing from the file may be imported there
    code = ("import sys, json; from harness.checkpoints.formats import read_raw; "
            f"raw = read_raw({str(path)!r}); "
            "bad = [m for m in ('mmengine', 'mmcv', 'mmaction') if m in sys.modules]; "
            "assert not bad, bad; "
            "print(json.dumps({'meta': raw.meta, 'keys': sorted(raw.arrays)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["keys"] == sorted(state)
    assert got["meta"]["cfg"] == meta["cfg"] and got["meta"]["mmengine_version"] == meta["mmengine_version"]
    raw = read_raw(str(path))
    for k, v in state.items():
        np.testing.assert_array_equal(raw.arrays[k], v.numpy())


@pytest.mark.reference
def test_mmengine_checkpoint_of_real_weights_loads_onto_the_arch(mm_weights, tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.runner.checkpoint import save_checkpoint

    canonical, state = mm_weights
    meta, extras = _mmengine_extras()
    path = tmp_path / "i3d_r50_mmengine.pth"
    save_checkpoint({"meta": meta, "state_dict": state, **extras}, str(path))
    loaded = load_weights(str(path), get_preset(ARCH))
    assert loaded.scheme == "mmaction2" and loaded.container == "torch"
    assert sorted(loaded.arrays) == sorted(canonical)
    for k, v in canonical.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)


def test_mmaction2_0x_checkpoint_loads_by_default(mm_weights, tmp_path):
    """As mmcv 1.x's save_checkpoint wrote mmaction2 0.x files: meta with the config text."""
    canonical, state = mm_weights
    state = OrderedDict(state)
    for key in [k for k in state if k.endswith(".bn.running_var")]:
        state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
    meta = {"mmcv_version": "1.2.0", "mmaction_version": "0.6.0", "time": "Sat Aug  1 00:00:00 2020",
            "config": "model = dict(\n    type='Recognizer3D',\n    backbone=dict(type='ResNet3d'))\n",
            "epoch": 100, "iter": 119000}
    path = tmp_path / "i3d_nl_r50_0x.pth"
    torch.save({"meta": meta, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}},
               path)
    loaded = load_weights(str(path), get_preset(ARCH))
    assert loaded.scheme == "mmaction2" and loaded.meta == meta
    for k, v in canonical.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)


def test_npz_pickles_only_with_trust(tmp_path):
    arrays = {"a": np.ones(2, np.float32), "o": np.array([{"x": 1}], dtype=object)}
    np.savez(tmp_path / "o.npz", **arrays)
    with pytest.raises(CheckpointError, match="refusing to unpickle the object array 'o'"):
        read_raw(str(tmp_path / "o.npz"))
    assert read_raw(str(tmp_path / "o.npz"), trust=True).arrays["o"][0] == {"x": 1}


# ------------------------------------------------------------------ MindSpore optimiser state
# What MindSpore 2.10 writes beside a tiny Cell's weights with each optimiser (recorded from
# the script below; test_mindspore_writes_these_families checks it against MindSpore itself):
# optimiser -> (prefixes joined to every trainable parameter's name, single entries)
MINDSPORE_WROTE = {
    "SGD(momentum=0.9)": (["accum.", "stat."], ["global_step", "learning_rate", "momentum"]),
    "Momentum": (["moments."], ["global_step", "learning_rate", "momentum"]),
    "Adam": (["moment1.", "moment2."], ["beta1_power", "beta2_power", "global_step", "learning_rate"]),
    "Adam(use_amsgrad=True)": (["moment1.", "moment2.", "vhat."],
                               ["beta1_power", "beta2_power", "global_step", "learning_rate"]),
    "AdamWeightDecay": (["adam_m.", "adam_v."], ["global_step", "learning_rate"]),
    "Lamb": (["lamb_m.", "lamb_v."], ["global_step", "learning_rate"]),
    "RMSProp": (["mean_square.", "moment."], ["global_step", "learning_rate"]),
    "RMSProp(centered=True)": (["mean_grad.", "mean_square.", "moment."], ["global_step", "learning_rate"]),
    "LARS(Momentum)": (["moments."], ["fake_lr", "fake_param", "global_step", "learning_rate", "momentum"]),
    "Adagrad": (["accum."], ["global_step", "learning_rate"]),
    "ProximalAdagrad": (["accum."], ["global_step", "learning_rate"]),
    "Adadelta": (["accum.", "accum_update."], ["global_step", "learning_rate"]),
    "AdaMax": (["moment1.", "moment2."], ["beta1_power", "global_step", "learning_rate"]),
    "LazyAdam": (["moment1.", "moment2."], ["beta1_power", "beta2_power", "global_step", "learning_rate"]),
    "FTRL": (["linear.", "moments."], ["global_step", "learning_rate"]),
    "Rprop": (["prev.", "step_size."], ["global_step", "learning_rate"]),
    "ASGD": (["ax_.", "eta_", "mu_"], ["global_step", "learning_rate"]),
    "SGD+DynamicLossScaleUpdateCell": (["accum.", "stat."], ["current_iterator_step", "global_step",
                                                            "last_overflow_iterator_step", "learning_rate",
                                                            "momentum", "scale_sense"]),
    "Model+ModelCheckpoint(SGD)": (["accum.", "stat."], ["epoch_num", "global_step", "learning_rate", "momentum",
                                                         "step_num"]),
}

MINDSPORE_SCRIPT = r'''
import json, os, sys, tempfile
import numpy as np
import mindspore as ms
from mindspore import nn
ms.set_context(mode=ms.PYNATIVE_MODE)

class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1, has_bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.dense = nn.Dense(3, 2)
    def construct(self, x):
        return self.dense(self.bn(self.conv(x)).mean(axis=(2, 3)))

OPTIMISERS = {
    "SGD(momentum=0.9)": lambda p: nn.SGD(p, 0.1, momentum=0.9),
    "Momentum": lambda p: nn.Momentum(p, 0.1, 0.9),
    "Adam": lambda p: nn.Adam(p, 0.1),
    "Adam(use_amsgrad=True)": lambda p: nn.Adam(p, 0.1, use_amsgrad=True),
    "AdamWeightDecay": lambda p: nn.AdamWeightDecay(p, 0.1),
    "Lamb": lambda p: nn.Lamb(p, 0.1),
    "RMSProp": lambda p: nn.RMSProp(p, 0.1),
    "RMSProp(centered=True)": lambda p: nn.RMSProp(p, 0.1, centered=True),
    "LARS(Momentum)": lambda p: nn.LARS(nn.Momentum(p, 0.1, 0.9)),
    "Adagrad": lambda p: nn.Adagrad(p, learning_rate=0.1),
    "ProximalAdagrad": lambda p: nn.ProximalAdagrad(p),
    "Adadelta": lambda p: nn.Adadelta(p, 0.1),
    "AdaMax": lambda p: nn.AdaMax(p, 0.1),
    "LazyAdam": lambda p: nn.LazyAdam(p, 0.1),
    "FTRL": lambda p: nn.FTRL(p),
    "Rprop": lambda p: nn.Rprop(p, 0.1),
    "ASGD": lambda p: nn.ASGD(p, 0.1),
}
x = ms.Tensor(np.random.default_rng(0).random((4, 2, 3, 3), dtype=np.float32))
y = ms.Tensor(np.array([0, 1, 0, 1], np.int32))
loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

def names(path):
    return sorted(ms.load_checkpoint(path))

def families(keys, weights, trainable):
    prefixes, scalars = set(), set()
    for key in keys:
        if key in weights:
            continue
        owner = [w for w in trainable if key.endswith(w) and key != w]
        if owner:
            prefixes.add(key[: -len(owner[0])])
        else:
            scalars.add(key)
    return [sorted(prefixes), sorted(scalars)]

out = {}
for name, make in OPTIMISERS.items():
    net = Net()
    weights = [p.name for p in net.get_parameters()]
    trainable = [p.name for p in net.trainable_params()]
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss), make(net.trainable_params()))
    cell.set_train()
    try:
        cell(x, y)
        stepped = True
    except RuntimeError:       # some optimisers have no CPU kernel; their Parameters exist anyway
        stepped = False
    path = os.path.join(tempfile.mkdtemp(), "c.ckpt")
    ms.save_checkpoint(cell, path)
    out[name] = families(names(path), weights, trainable) + [stepped]

# loss scaling (no CPU kernel for the overflow check: its state is saved unstepped)
net = Net()
weights, trainable = [p.name for p in net.get_parameters()], [p.name for p in net.trainable_params()]
update = nn.DynamicLossScaleUpdateCell(loss_scale_value=2 ** 12, scale_factor=2, scale_window=1000)
cell = nn.TrainOneStepWithLossScaleCell(nn.WithLossCell(net, loss), nn.SGD(net.trainable_params(), 0.1, momentum=0.9),
                                        scale_sense=update)
path = os.path.join(tempfile.mkdtemp(), "c.ckpt")
ms.save_checkpoint(cell, path)
out["SGD+DynamicLossScaleUpdateCell"] = families(names(path), weights, trainable) + [False]

# the seed's way: Model(net, loss, SGD) trained with ModelCheckpoint(append_info=[epoch_num, step_num])
import mindspore.dataset as ds
from mindspore.train import Model
from mindspore.train.callback import CheckpointConfig, ModelCheckpoint
net = Net()
weights, trainable = [p.name for p in net.get_parameters()], [p.name for p in net.trainable_params()]
def data():
    for i in range(2):
        yield np.random.default_rng(i).random((2, 3, 3), dtype=np.float32), np.int32(i % 2)
folder = tempfile.mkdtemp()
callback = ModelCheckpoint(prefix="i3d", directory=folder,
                           config=CheckpointConfig(save_checkpoint_steps=1, append_info=["epoch_num", "step_num"]))
Model(net, loss, nn.SGD(net.trainable_params(), 0.1, momentum=0.9)).train(
    1, ds.GeneratorDataset(data, ["x", "y"]).batch(2), callbacks=[callback], dataset_sink_mode=False)
last = sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))[-1]
out["Model+ModelCheckpoint(SGD)"] = families(names(os.path.join(folder, last)), weights, trainable) + [True]
print("FAMILIES " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def mindvideo_weights():
    cfg = get_preset("i3d_nl_mindvideo_r50")
    rng = np.random.default_rng(1)
    canonical = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in parameter_specs(cfg).items()}
    return cfg, canonical, mindvideo.from_canonical(canonical, cfg)


def _with_training_state(weights, prefixes, scalars):
    """``weights`` plus the entries MindSpore writes for them: each prefix joined to every
    trainable parameter (BN moving statistics are not trainable), and the single entries.
    The state arrays share the weights' memory (their values do not matter, their names do)."""
    out = dict(weights)
    trainable = [k for k in weights if not k.endswith(("moving_mean", "moving_variance"))]
    for prefix in prefixes:
        out.update({prefix + k: weights[k] for k in trainable})
    for name in scalars:
        out[name] = np.array([7], np.int32) if "step" in name or name.endswith("_num") else np.array(0.1, np.float32)
    return out


def _check_imports(weights, canonical, cfg, families, importer, scheme):
    for optimiser, (prefixes, scalars) in families.items():
        arrays = _with_training_state(weights, prefixes, scalars)
        got = importer(arrays, cfg)
        assert sorted(got) == sorted(canonical), optimiser
        for k in ("stem.conv.weight", "res5.2.conv3.weight", "head.fc.weight"):
            np.testing.assert_array_equal(got[k], canonical[k])
        n_trainable = sum(not k.endswith(("moving_mean", "moving_variance")) for k in weights)
        counts = mindspore_ckpt.ignored_training_entries(arrays)
        assert sum(counts.values()) == len(prefixes) * n_trainable + len(scalars), (optimiser, counts)
        # a model key the graph does not have still fails, and is named
        bad_key = "backbone.layer9.0.weight" if scheme == "mindvideo" else "res9.0.conv1.weight"
        with pytest.raises(WeightMismatchError, match=bad_key.replace(".", r"\.")):
            importer({**arrays, bad_key: np.zeros(1, np.float32)}, cfg)


def test_every_mindspore_optimisers_state_is_ignored_by_the_mindvideo_importer(mindvideo_weights):
    cfg, canonical, weights = mindvideo_weights
    _check_imports(weights, canonical, cfg, MINDSPORE_WROTE, mindvideo.to_canonical, "mindvideo")


def test_every_mindspore_optimisers_state_is_ignored_by_our_mindspore_scheme():
    cfg = get_preset("i3d_nl_dot_product_r50")
    rng = np.random.default_rng(2)
    canonical = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in parameter_specs(cfg).items()}
    weights = mindspore_ckpt.from_canonical(canonical, cfg)
    assert mindspore_ckpt.looks_like_mindspore(_with_training_state(weights, ["accum.", "stat."], ["global_step"]))
    _check_imports(weights, canonical, cfg, MINDSPORE_WROTE, mindspore_ckpt.to_canonical, "mindspore")


def test_seed_sgd_training_checkpoint_file_imports_and_says_what_it_ignored(mindvideo_weights, tmp_path):
    """The seed's case, as a file: Model(net, loss, nn.SGD(momentum)) + ModelCheckpoint writes
    accum.* and stat.* for each of the 206 trainable parameters (once 206 unexpected keys)."""
    cfg, canonical, weights = mindvideo_weights
    prefixes, scalars = MINDSPORE_WROTE["Model+ModelCheckpoint(SGD)"]
    path = tmp_path / "nonlocal-1_4975.ckpt"
    write_ckpt(str(path), _with_training_state(weights, prefixes, scalars))
    loaded = load_weights(str(path), cfg)
    assert loaded.scheme == "mindvideo"
    assert loaded.ignored == {"accum.*": 206, "stat.*": 206, "epoch_num": 1, "global_step": 1,
                              "learning_rate": 1, "momentum": 1, "step_num": 1}
    text = loaded.describe()
    assert "ignored 417 optimiser-state entries: accum.* 206, stat.* 206" in text, text
    for k, v in canonical.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)


def test_training_families_never_swallow_a_model_parameter():
    for preset, names in (("i3d_nl_mindvideo_r50", lambda c: mindvideo.from_canonical(parameter_specs(c), c)),
                          ("i3d_nl_dot_product_r50", lambda c: mindspore_ckpt.from_canonical(parameter_specs(c), c))):
        cfg = get_preset(preset)
        assert [k for k in names(cfg) if training_family(k)] == []


@pytest.mark.mindspore
def test_mindspore_writes_these_families(mindvideo_weights, tmp_path):
    """MindSpore itself, in a process of its own (oneDNN capped at AVX2, no decord), writes a
    checkpoint of a tiny Cell's TrainOneStepCell for every optimiser; every non-weight name
    it writes belongs to a family the importers ignore, and they import."""
    pytest.importorskip("mindspore")
    proc = subprocess.run([sys.executable, "-c", MINDSPORE_SCRIPT], cwd=ROOT, text=True, capture_output=True,
                          timeout=600, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2",
                                                                   "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FAMILIES "))
    written = {k: (v[0], v[1]) for k, v in json.loads(line[len("FAMILIES "):]).items()}
    assert written["SGD(momentum=0.9)"] == (["accum.", "stat."], ["global_step", "learning_rate", "momentum"])
    for optimiser, (prefixes, scalars) in written.items():
        for prefix in prefixes:
            assert training_family(prefix + "conv.weight"), (optimiser, prefix)
        for name in scalars:
            assert training_family(name) == name, (optimiser, name)
    assert written == {k: (v[0], v[1]) for k, v in MINDSPORE_WROTE.items()}, "MindSpore writes other names now"
    cfg, canonical, weights = mindvideo_weights
    _check_imports(weights, canonical, cfg, written, mindvideo.to_canonical, "mindvideo")
