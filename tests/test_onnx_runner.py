"""The ONNX Runtime runner (harness/runners/onnx_runner.py): our network exported by torch or
MindSpore and run by onnxruntime passes parity at the default tolerances; a planted change in
an exported graph is named as the first failing layer; a user's own .onnx goes in through
--candidate with a layer map; evaluate and the bench take it like any framework.

Test size 1x3x8x64x64, seeded weights from parity itself, the export cache in a folder of the
test's own (NLPARITY_CACHE). The default suite exports once (torch, the default preset); every
preset with both exporters, evaluate, the bench and the MindSpore pool fault are marked slow."""
from __future__ import annotations

import ast
import glob
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from frameworks.spec.arch import PRESETS, get_preset, layer_names
from harness.runners import RunnerError, able, runner_class
from tests.conftest import ROOT, make_videos, run_cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from harness.runners import onnx_runner  # noqa: E402
from harness.runners.plugin import parse_spec  # noqa: E402

SHAPE = ["--input-shape", "1,3,8,64,64"]
PLANTED_LAYER = "res3.1"   # the change goes into its conv2's weight
# what an exporter cannot write, in its own words (Caffe2's head pools 7x7 per frame: AvgPool3D in MindSpore)
NOT_EXPORTED = {("i3d_nl_caffe2_r50", "ms"): "Exporting AvgPool3D operator is not yet supported"}


def _env(cache, exporter="torch"):
    return {"NLPARITY_CACHE": str(cache), "NLPARITY_ONNX_EXPORTER": exporter}


def _parity(cache, *args, exporter="torch"):
    return run_cli("harness.parity", *SHAPE, *args, env=_env(cache, exporter))


def _graphs(cache, exporter="torch"):
    return sorted(glob.glob(os.path.join(str(cache), "onnx", f"*-{exporter}-*.onnx")))


# ----------------------------------------------------------------------------- the runner's class
def test_the_runner_is_registered_and_reading_it_imports_no_framework():
    code = ("import sys; from harness.runners import runner_class; cls = runner_class('ort'); "
            "print(cls.name, cls.title, cls.evaluates, cls.trains, cls.explains, cls.float64, "
            "sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'mindspore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, check=True).stdout
    assert out.split() == ["onnx", "ONNX", "Runtime", "True", "False", "False", "False", "[]"]
    assert "onnx" in able("evaluates") and "onnx" not in able("trains") + able("explains")
    assert runner_class("onnxruntime") is runner_class("onnx")


def test_only_the_onnx_runner_imports_onnx_and_it_imports_no_other_framework():
    found = {}
    for path in sorted((pathlib.Path(ROOT) / "harness").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for top in {n.split(".")[0] for n in names} & {"onnx", "onnxruntime", "torch", "mindspore"}:
                found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    assert found["onnx"] | found["onnxruntime"] == {"harness/runners/onnx_runner.py"}
    assert "harness/runners/onnx_runner.py" not in found.get("torch", set()) | found.get("mindspore", set())


def test_options_come_from_the_command_or_the_environment(monkeypatch):
    cls = runner_class("onnx")
    monkeypatch.delenv(onnx_runner.ENV_EXPORTER, raising=False)
    monkeypatch.delenv(onnx_runner.ENV_OPSET, raising=False)
    assert cls.options_from() == {"exporter": "torch", "opset": 17}
    assert cls.options_from({"onnx_exporter": "mindspore"}) == {"exporter": "ms", "opset": None}
    assert cls.options_from({"onnx_opset": 18}) == {"exporter": "torch", "opset": 18}
    monkeypatch.setenv(onnx_runner.ENV_EXPORTER, "ms")
    monkeypatch.setenv(onnx_runner.ENV_OPSET, "18")   # torch's: MindSpore's export takes none
    assert cls.options_from() == {"exporter": "ms", "opset": None}
    assert cls.options_from({"onnx_exporter": "torch"}) == {"exporter": "torch", "opset": 18}
    with pytest.raises(RunnerError, match="takes none"):
        cls.options_from({"onnx_opset": 13})
    with pytest.raises(RunnerError, match="use torch or ms"):
        cls.options_from({"onnx_exporter": "tf"})
    with pytest.raises(RunnerError, match="CPU provider"):
        cls(device="gpu")
    with pytest.raises(RunnerError, match="float32"):
        cls(dtype="bfloat16")


def test_a_dot_onnx_candidate_goes_to_the_onnx_runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "map.json").write_text("{}")
    assert parse_spec("model.onnx") == ("onnx", str(tmp_path / "model.onnx"))
    assert parse_spec("model.onnx:map.json") == ("onnx", f"{tmp_path / 'model.onnx'}:{tmp_path / 'map.json'}")
    assert parse_spec("mypkg.onnx:build") == ("torch", "mypkg.onnx:build")   # a module's function
    assert parse_spec("ms:mypkg.port:build") == ("ms", "mypkg.port:build")
    with pytest.raises(RunnerError, match="no such file"):
        parse_spec("other.onnx")
    with pytest.raises(RunnerError, match="layer map .*no such file"):
        parse_spec("model.onnx:missing.json")
    assert onnx_runner.split_onnx_target(str(tmp_path / "model.onnx")) == (str(tmp_path / "model.onnx"), None)
    (tmp_path / "model.onnx.layers.json").write_text("{}")
    assert onnx_runner.split_onnx_target(str(tmp_path / "model.onnx"))[1] == str(tmp_path / "model.onnx.layers.json")


# ----------------------------------------------------------------------------- graph surgery, on small graphs
def _node(op, inputs, outputs, name="", **attrs):
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


def _mindspore_like_graph():
    """What mindspore.export writes for a stem and pool1: numbered tensors, pad_list order, SAME_UPPER."""
    w = numpy_helper.from_array(np.ones((2, 1, 5, 7, 7), np.float32), "stem.conv.weight")
    nodes = [_node("Conv", ["x", "stem.conv.weight"], ["7"], "1Conv", kernel_shape=[5, 7, 7], strides=[2, 2, 2],
                   pads=[2, 2, 3, 3, 3, 3]),
             _node("MaxPool", ["7"], ["8"], "8MaxPool", kernel_shape=[1, 3, 3], strides=[2, 2, 2],
                   auto_pad="SAME_UPPER"),
             _node("MaxPool", ["8"], ["9"], "9MaxPool", kernel_shape=[2, 1, 1], strides=[2, 1, 1],
                   auto_pad="SAME_UPPER")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "7", "8", "9")]
    return helper.make_graph(nodes, "g", io[:1], io[1:], [w])


def test_mindspores_conv_pads_and_lost_pool_padding_are_repaired_from_the_spec():
    graph = _mindspore_like_graph()
    onnx_runner.rename_outputs(graph, ["stem", "pool1", "pool2"])
    assert [o.name for o in graph.output] == ["stem", "pool1", "pool2"]
    assert [list(n.output) for n in graph.node] == [["stem"], ["pool1"], ["pool2"]]
    assert list(graph.node[1].input) == ["stem"]
    done = onnx_runner.repair_mindspore_graph(graph, get_preset("i3d_nl_dot_product_r50"))
    assert len(done) == 2 and "1 Conv nodes" in done[0] and "2 MaxPool nodes" in done[1]
    conv, pool1, pool2 = graph.node
    assert onnx_runner.attribute(conv, "pads") == [2, 3, 3, 2, 3, 3]
    assert onnx_runner.attribute(pool1, "auto_pad") is None and onnx_runner.attribute(pool1, "pads") == [0, 1, 1] * 2
    assert onnx_runner.attribute(pool2, "pads") == [0] * 6
    # a graph already right is left alone (so is one from a MindSpore that writes these right)
    assert onnx_runner.repair_mindspore_graph(graph, get_preset("i3d_nl_dot_product_r50")) == []


def test_a_pool_the_spec_does_not_have_is_refused_not_guessed():
    graph = _mindspore_like_graph()
    onnx_runner.rename_outputs(graph, ["stem", "pool1", "pool2"])
    with pytest.raises(RunnerError, match="no pool of the spec"):
        onnx_runner.repair_mindspore_graph(graph, get_preset("i3d_nl_caffe2_r50"))   # pool1 2x3x3 there


def test_one_tensor_that_is_two_outputs_gets_an_identity():
    nodes = [_node("Relu", ["x"], ["1"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "1", "1")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:])
    onnx_runner.rename_outputs(graph, ["a", "b"])
    assert [o.name for o in graph.output] == ["a", "b"]
    assert [(n.op_type, list(n.input), list(n.output)) for n in graph.node] == [("Relu", ["x"], ["a"]),
                                                                             ("Identity", ["a"], ["b"])]


def test_a_layer_map_names_tensors_nodes_or_a_nodes_input():
    cfg = get_preset("i3d_nl_dot_product_r50")
    nodes = [_node("Relu", ["x"], ["t1"], "stem_relu"), _node("Neg", ["t1"], ["t2"], "pool_neg"),
             _node("Abs", ["t2"], ["out"], "fc")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "out")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:])
    resolved = onnx_runner.resolve_layer_map(graph, {"stem": "t1", "pool1": "pool_neg", "res2.0": "in:fc"}, cfg, "m")
    assert resolved == {"stem": "t1", "pool1": "t2", "res2.0": "t2", "logits": "out"}
    with pytest.raises(RunnerError, match="neither as a tensor nor as a node"):
        onnx_runner.resolve_layer_map(graph, {"stem": "nowhere"}, cfg, "m")
    with pytest.raises(RunnerError, match="does not have"):
        onnx_runner.resolve_layer_map(graph, {"res9.9": "t1"}, cfg, "m")


# ----------------------------------------------------------------------------- through parity (one export)
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """parity torch vs onnx (torch's exporter, the default preset), its weights and cache kept."""
    root = tmp_path_factory.mktemp("onnx")
    cache = root / "cache"
    proc = _parity(cache, "--frameworks", "torch,onnx", "--save-weights", root / "seeded.npz",
                   "--json", root / "parity.json")
    return root, cache, proc


def test_torch_and_its_onnx_export_agree_at_the_default_tolerances(exported):
    root, cache, proc = exported
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((root / "parity.json").read_text())
    assert doc["passed"] and doc["candidate"] == "onnx"
    assert [layer["name"] for layer in doc["layers"]] == layer_names(get_preset("i3d_nl_dot_product_r50"))
    versions = doc["runs"]["onnx"]["versions"]
    assert versions["exporter"] == "torch" and versions["opset"] == "17" and versions["onnxruntime"]
    (graph,) = _graphs(cache)
    record = json.loads(pathlib.Path(graph + ".json").read_text())
    assert record["opset"] == 17 and record["repairs"] == [] and record["key"]["input_shape"] == [1, 3, 8, 64, 64]
    meta = {p.key: p.value for p in onnx.load(graph, load_external_data=False).metadata_props}
    assert meta["nlparity.exporter"] == "torch" and meta["nlparity.weights_sha256"] == record["key"]["weights_sha256"]


def test_the_same_key_is_read_from_the_cache_and_a_changed_file_is_exported_again(exported, monkeypatch):
    root, cache, _ = exported
    monkeypatch.setenv("NLPARITY_CACHE", str(cache))
    with np.load(root / "seeded.npz") as z:
        weights = {k: z[k] for k in z.files}
    clip = np.random.default_rng(0).standard_normal((1, 3, 8, 64, 64)).astype(np.float32)
    runner = runner_class("onnx")(threads=1, exporter="torch")
    runner.build(get_preset("i3d_nl_dot_product_r50"))
    runner.load(weights)
    logits = runner.forward(clip)
    assert logits.shape == (1, 400) and runner.settings()["graphs"]["1x3x8x64x64"]["cache"] == "hit"
    record_path = _graphs(cache)[0] + ".json"
    record = json.loads(pathlib.Path(record_path).read_text())
    assert onnx_runner.cached_record(record["file"], record["key"]) is not None
    assert onnx_runner.cached_record(record["file"], {**record["key"], "opset": 18}) is None
    pathlib.Path(record_path).write_text(json.dumps({**record, "sha256": "0" * 64}))   # as if the file had changed
    assert onnx_runner.cached_record(record["file"], record["key"]) is None
    pathlib.Path(record_path).write_text(json.dumps(record))


def _plant(graph_path: str, out: pathlib.Path, factor: float = 1.01) -> str:
    """The exported graph with res3.1's conv2 weight scaled by ``factor``, saved as a user's model."""
    model = onnx.load(graph_path)
    graph = model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv" and (f"/{PLANTED_LAYER}/conv2/" in n.name or
                                                                  n.input[1] == f"{PLANTED_LAYER}.conv2.weight"))
    init = next(i for i in graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(out))
    return conv.input[1]


def _logits_only_with_a_layer_map(graph_path: str, out: pathlib.Path) -> dict:
    """The exported graph with ``logits`` its only output, as a port might ship it, and a layer map
    beside it naming two tensors and one node (the one that writes res3.1)."""
    model = onnx.load(graph_path)
    onnx_runner.keep_outputs(model.graph, ["logits"])
    producer = next(n for n in model.graph.node if PLANTED_LAYER in n.output)
    onnx.save(model, str(out))
    layer_map = {"stem": "stem", PLANTED_LAYER: producer.name, "res3.1.non_local": "res3.1.non_local"}
    pathlib.Path(str(out) + onnx_runner.LAYER_MAP_SUFFIX).write_text(json.dumps(layer_map))
    return layer_map


@pytest.fixture(scope="module")
def candidates(exported):
    """One parity run, torch against two users' graphs: ``mine`` (a weight scaled by 1.01) and
    ``port`` (logits only, read through its layer map)."""
    root, cache, proc = exported
    assert proc.returncode == 0, proc.stdout + proc.stderr
    graph = _graphs(cache)[0]
    _plant(graph, root / "mine.onnx")
    _logits_only_with_a_layer_map(graph, root / "port.onnx")
    out = _parity(cache, "--frameworks", "torch", "--candidate", f"mine={root / 'mine.onnx'}",
                  "--candidate", f"port={root / 'port.onnx'}", "--json", root / "candidates.json")
    doc = json.loads((root / "candidates.json").read_text())
    return out, doc["passed"], {c["candidate"]: c for c in doc["comparisons"]}, doc


def test_a_planted_change_in_an_exported_graph_is_the_first_failing_layer(candidates):
    out, passed, reports, doc = candidates
    assert out.returncode == 1 and not passed, out.stdout + out.stderr
    assert reports["mine"]["first_failure"] == PLANTED_LAYER
    assert f"first failing layer: {PLANTED_LAYER}" in out.stdout
    assert doc["runs"]["mine"]["framework"] == "onnx"


def test_a_users_graph_with_logits_only_is_read_through_its_layer_map(candidates):
    out, _, reports, doc = candidates
    assert reports["port"]["passed"], out.stdout
    assert [layer["name"] for layer in reports["port"]["layers"]] == ["stem", "res3.1", "res3.1.non_local", "logits"]
    assert "res2.0" in doc["not_provided"]["port"]


# ----------------------------------------------------------------------------- slow: every preset, both exporters
@pytest.mark.slow
@pytest.mark.mindspore
@pytest.mark.parametrize("exporter", ["torch", "ms"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_exports_and_passes_parity_with_both_exporters(preset, exporter, tmp_path):
    pytest.importorskip("mindspore" if exporter == "ms" else "torch")
    proc = _parity(tmp_path / "cache", "--frameworks", "torch,onnx", "--arch", preset, "--json",
                   tmp_path / "p.json", exporter=exporter)
    if (preset, exporter) in NOT_EXPORTED:
        assert proc.returncode == 2 and NOT_EXPORTED[preset, exporter] in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    record = json.loads(pathlib.Path(_graphs(tmp_path / "cache", exporter)[0] + ".json").read_text())
    assert record["opset"] == (17 if exporter == "torch" else 11)
    assert bool(record["repairs"]) == (exporter == "ms")


@pytest.mark.slow
@pytest.mark.mindspore
def test_mindspores_unrepaired_pool_padding_is_named_at_pool1(tmp_path):
    """The mindvideo stem keeps time (pool1 stride 1x2x2): MindSpore's SAME_UPPER pool1 then runs
    without error and gives other values, which parity names."""
    pytest.importorskip("mindspore")
    cache = tmp_path / "cache"
    proc = _parity(cache, "--frameworks", "torch,onnx", "--arch", "i3d_nl_mindvideo_r50", exporter="ms")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    model = onnx.load(_graphs(cache, "ms")[0])
    pool1 = next(n for n in model.graph.node if "pool1" in n.output)
    onnx_runner.drop_attribute(pool1, "pads")
    pool1.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))   # as MindSpore wrote it
    onnx.save(model, str(tmp_path / "raw_pool.onnx"))
    out = _parity(cache, "--frameworks", "torch", "--arch", "i3d_nl_mindvideo_r50", "--candidate",
                  f"raw={tmp_path / 'raw_pool.onnx'}", "--json", tmp_path / "p.json")
    assert out.returncode == 1, out.stdout + out.stderr
    assert json.loads((tmp_path / "p.json").read_text())["first_failure"] == "pool1"


@pytest.mark.slow
@pytest.mark.mindspore
def test_mindspores_graph_unrepaired_is_refused_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mindspore")
    from harness.runners.torch_runner import seeded_weights

    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path))
    cfg = get_preset("i3d_nl_dot_product_r50")
    clip = np.random.default_rng(0).standard_normal((1, 3, 8, 64, 64)).astype(np.float32)
    runner = runner_class("onnx")(threads=1, exporter="ms", repair=False)
    runner.build(cfg)
    runner.load(seeded_weights(cfg, clip, 0))
    with pytest.raises(RunnerError, match="Reshape.*1,64,5,32,32"):
        runner.forward(clip)


# ----------------------------------------------------------------------------- slow: evaluate and the bench
@pytest.mark.slow
def test_evaluate_on_onnx_gives_torchs_top1_on_every_video(tmp_path):
    data = tmp_path / "k400"
    make_videos(data, 2, 1, 4)
    small = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]
    summaries = {}
    for fw in ("torch", "onnx"):
        out = tmp_path / f"{fw}.json"
        proc = run_cli("harness.evaluate", "--framework", fw, "--data-root", data, *small, "--out", out,
                       "--threads", "1", "-q", env=_env(tmp_path / "cache"))
        assert proc.returncode == 0, proc.stderr
        summaries[fw] = json.loads(out.read_text())
    assert summaries["onnx"]["framework"] == "onnx" and summaries["onnx"]["n_videos"] == 8
    assert summaries["onnx"]["top1"] == summaries["torch"]["top1"]
    from harness.evaluate import read_scores

    a, b = (read_scores(str(tmp_path / f"{fw}.scores")) for fw in ("torch", "onnx"))
    assert list(a["video_ids"]) == list(b["video_ids"])
    assert (a["scores"].argmax(1) == b["scores"].argmax(1)).all()
    assert np.abs(a["scores"] - b["scores"]).max() < 1e-5


@pytest.mark.slow
def test_the_bench_step_and_gemm_probe_answer_through_a_warm_child(tmp_path, monkeypatch):
    from harness.checkpoints.io import write_npz
    from harness.runners.child import Job, WarmChild
    from harness.runners.torch_runner import seeded_weights

    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path / "cache"))
    cfg = get_preset("i3d_nl_dot_product_r50")
    clip = np.random.default_rng(0).standard_normal((1, 3, 8, 64, 64)).astype(np.float32)
    write_npz(str(tmp_path / "w.npz"), seeded_weights(cfg, clip, 0))
    job = Job("onnx", cfg, threads=1, options={"dtype": "float32"}, weights=str(tmp_path / "w.npz"))
    with WarmChild(job, str(tmp_path / "work"), "onnx") as child:
        assert child.ready["settings"]["provider"] == "CPUExecutionProvider"
        assert child.request(op="probe")["gflops"] > 0
        shape = [1, 3, 8, 64, 64]
        assert child.request(op="prepare", task="infer", shape=shape)["first_s"] > 0
        assert len(child.request(op="time", task="infer", shape=shape, iters=2)["step_s"]) == 2
        with pytest.raises(RunnerError, match="no training step"):
            child.request(op="prepare", task="train", shape=shape)
