"""The ONNX Runtime runner (``RUNNERS["onnx"]``): our network as an exported ONNX graph, run by
onnxruntime on the CPU, and a user's own ``.onnx`` as a parity candidate.

A port that is deployed goes through an exporter, and the exported graph is one more place
the network can change. This runner makes that place comparable like any framework:
``parity --frameworks torch,onnx``, ``evaluate --framework onnx``, ``bench --frameworks onnx``.

**Where the graph comes from.** This process imports onnx and onnxruntime, never torch or
MindSpore (one framework per process: MindSpore caps oneDNN's ISA for its whole process and
aborts if decord came first). At the first forward pass of an input shape the runner asks the
exporting framework's child (:mod:`harness.runners.child`, op ``export``: the torch or MindSpore
runner's ``export_onnx``) to write the graph of the weights it was given, every canonical layer
a graph output. The graph is kept in ``$NLPARITY_CACHE/onnx/`` under a key of the arch hash,
the weights' sha256, the exporter and its framework's version, the opset, the input shape,
the repairs (below) and :data:`EXPORT_VERSION`, beside a JSON record of that key, the file's
sha256 and the export's provenance; a cached file whose sha256 no longer matches its record
is exported again, and no key is exported twice.

**Static shapes: one export per input shape** (N included). torch's exporter could mark N
dynamic, but ``mindspore.export`` cannot (its BatchNorm3d reshapes carry constant shapes), and
one rule for both keeps the two graphs comparable. Every graph passes onnx's checker first.

**Exporters** (option ``exporter``; default ``$NLPARITY_ONNX_EXPORTER``, else ``torch``):

``torch``  ``torch.onnx.export`` on its TorchScript path (``dynamo=False``: the dynamo exporter
           needs onnxscript), opset 17 unless ``opset`` (default ``$NLPARITY_ONNX_OPSET``),
           constants folded as torch does by default: each eval BN folded into its convolution.
``ms``     ``mindspore.export(file_format="ONNX")``: it writes opset 11 and takes no opset. Its
           outputs are renamed to the canonical names (MindSpore numbers them). MindSpore 2.10
           writes two faults into this network's graph, which ``repair`` (default on) mends and
           records (``settings()["graphs"]``, the cache record, the graph's metadata):

           * every Conv3d's ``pads`` in MindSpore's pad_list order (head, tail, top, bottom,
             left, right) where ONNX reads (begins, ends): the stem's 5x7x7 convolution then
             gives T + 1 frames, and onnxruntime refuses the Reshape that MindSpore's
             BatchNorm3d puts after it. Reordered.
           * every ``MaxPool3D(pad_mode="pad", pad_list=...)`` written as ``auto_pad=SAME_UPPER``,
             its padding lost: pool1 (1x3x3, stride 2x2x2, padded 0x1x1) then gets a negative
             padding over time, which onnxruntime refuses, and spatial windows that start one
             pixel late (stride 1 over time, as in the mindvideo preset: no error, other values).
             Given the spec's explicit padding (pool1) or none (pool2 and the non-local
             sub-sampling pools, whose kernel is their stride).

           With ``repair=False`` the graph runs as MindSpore wrote it (onnxruntime refuses it).
           MindSpore 2.10 cannot export the ``i3d_nl_caffe2_r50`` preset ("Exporting AvgPool3D
           operator is not yet supported": Caffe2's head pools 7x7 per frame); every other
           preset exports with both exporters.

**onnxruntime**: CPUExecutionProvider, ``threads`` intra-op threads, one inter-op, sequential,
every graph optimisation (``ORT_ENABLE_ALL``), spinning off (the bench interleaves processes,
and an idle pool that spins takes a core from whichever process's turn it is). Parity and
evaluate run the graph with every layer exposed; the bench times a copy whose only output is
``logits`` (what one deploys). No float64, no isolated layer, no sub-operation trace: parity
explains an onnx failure by running torch or ms as the candidate instead.

**A user's own graph** (``--candidate NAME=model.onnx``, :func:`harness.runners.plugin.parse_spec`):
a layer map ``{canonical layer: tensor name | node name (its first output) | "in:" node name (its
first input)}`` as JSON, beside the graph as ``model.onnx.layers.json`` or named in the spec as
``model.onnx:map.json``. Without one, the graph outputs that carry canonical names are compared
(our own exports need no map). ``logits`` is the map's, else an output named ``logits``, else the
graph's first output. The weights parity hands over are not used: the graph holds its own.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig, arch_hash, check_weights, layer_names
from harness.files import read_json_input
from harness.runners import Runner, RunnerError

EXPORT_VERSION = 1            # bump when an export or its repairs change: every cached graph is then re-made
EXPORTERS = ("torch", "ms")   # the runners that export (each has export_onnx)
EXPORTER_PACKAGES = {"torch": "torch", "ms": "mindspore"}
DEFAULT_OPSET = 17            # torch's; mindspore.export writes its own
ENV_EXPORTER, ENV_OPSET = "NLPARITY_ONNX_EXPORTER", "NLPARITY_ONNX_OPSET"
LAYER_MAP_SUFFIX = ".layers.json"
PROVIDER = "CPUExecutionProvider"
METADATA_PREFIX = "nlparity."


def choose_exporter(exporter: Optional[str]) -> str:
    """``torch`` or ``ms`` (``mindspore`` accepted), from the option or ``$NLPARITY_ONNX_EXPORTER``."""
    chosen = str(exporter or os.environ.get(ENV_EXPORTER) or "torch").lower()
    chosen = {"mindspore": "ms", "pt": "torch", "pytorch": "torch"}.get(chosen, chosen)
    if chosen not in EXPORTERS:
        raise RunnerError(f"unknown ONNX exporter {chosen!r}; use torch or ms")
    return chosen


def choose_opset(opset, exporter: str) -> Optional[int]:
    """The opset asked of the exporter (torch: 17 unless given, or ``$NLPARITY_ONNX_OPSET``;
    ms: none, it writes its own, and one given is refused)."""
    given = opset if opset is not None else (os.environ.get(ENV_OPSET) or None if exporter == "torch" else None)
    if given is None:
        return DEFAULT_OPSET if exporter == "torch" else None
    try:
        value = int(given)
    except (TypeError, ValueError):
        raise RunnerError(f"ONNX opset {given!r} is not an integer") from None
    if exporter == "ms":
        raise RunnerError(f"mindspore.export writes its own ONNX opset (11) and takes none; {value} asked for")
    if not 7 <= value <= 30:
        raise RunnerError(f"ONNX opset {value} is out of range (7-30)")
    return value


def package_version(package: str) -> str:
    """An installed package's version, read without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class OnnxRunner(Runner):
    """Our network exported by torch or MindSpore, run by onnxruntime (CPU); a user's ``.onnx``."""

    name = "onnx"
    aliases = ("onnxruntime", "ort")
    title = "ONNX Runtime"
    evaluates = True
    trains = False
    explains = False
    float64 = False

    @classmethod
    def arguments(cls):
        return ((("--onnx-exporter",), dict(default=None, metavar="|".join(EXPORTERS),
                                            help="ONNX Runtime: the framework whose exporter writes the graph it runs "
                                                 "(default torch, or $NLPARITY_ONNX_EXPORTER)")),
                (("--onnx-opset",), dict(type=int, default=None,
                                         help="ONNX Runtime with the torch exporter: the ONNX opset (default 17, or "
                                              "$NLPARITY_ONNX_OPSET; MindSpore's exporter writes 11)")))

    @classmethod
    def options_from(cls, settings=None) -> dict:
        """The exporter and opset: a command's ``--onnx-exporter`` / ``--onnx-opset`` where it has
        them, else ``$NLPARITY_ONNX_EXPORTER`` / ``$NLPARITY_ONNX_OPSET``, else torch at opset 17."""
        settings = settings or {}
        exporter = choose_exporter(settings.get("onnx_exporter"))
        return {"exporter": exporter, "opset": choose_opset(settings.get("onnx_opset"), exporter)}

    # ------------------------------------------------------------------ its bench configurations (harness.bench)
    @classmethod
    def bench_tokens(cls) -> Dict[str, str]:
        return {}

    @classmethod
    def bench_fast(cls) -> tuple:
        return ()

    @classmethod
    def bench_arguments(cls) -> tuple:
        return ((("--onnx-exporter",), dict(default="torch", metavar="torch[,ms]",
                                            help="ONNX Runtime: the exporters whose graphs are timed, each a "
                                                 "configuration (default torch)")),)

    @classmethod
    def bench_modes(cls, args) -> list:
        """The exporters, each a configuration of its own (the graph each one wrote)."""
        text = str(getattr(args, "onnx_exporter", None) or "torch")
        return list(dict.fromkeys(choose_exporter(e.strip()) for e in text.split(",") if e.strip()))

    @classmethod
    def bench_variants(cls, variants: list) -> list:
        return ["exact"]   # the graph is what the exporter wrote; no rewrite of ours applies

    @classmethod
    def bench_options(cls, tokens: set, dtype: str, mode: str, args) -> dict:
        return {"dtype": dtype, "exporter": mode}

    # ------------------------------------------------------------------ the runner
    def __init__(self, device: str = "cpu", threads: Optional[int] = None, exporter: Optional[str] = None,
                 opset: Optional[int] = None, repair: bool = True, dtype: str = "float32"):
        super().__init__(device, threads)
        if device != "cpu":
            raise RunnerError("the onnx runner runs onnxruntime's CPU provider only (--device cpu)")
        if dtype != "float32":
            raise RunnerError(f"the onnx runner runs the exported float32 graph; no {dtype!r}")
        self.exporter = choose_exporter(exporter)
        self.opset = choose_opset(opset, self.exporter)
        self.repair = bool(repair)
        try:
            import onnx
            import onnxruntime
        except ImportError as exc:
            raise RunnerError(f"the onnx runner needs {exc.name} (pip install '.[onnx]')") from None
        self.onnx, self.ort = onnx, onnxruntime
        onnxruntime.set_default_logger_severity(3)   # its errors reach the caller as one line, not a log
        self._weights: Optional[Dict[str, np.ndarray]] = None
        self._weights_sha: Optional[str] = None
        self._graphs: Dict[Tuple[int, ...], dict] = {}      # input shape -> the graph's record
        self._sessions: Dict[Tuple[Tuple[int, ...], bool], object] = {}   # (shape, logits only) -> session

    def build(self, cfg: I3DNLConfig) -> None:
        self.cfg = cfg
        self._graphs.clear()
        self._sessions.clear()

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        """Keep the weights (checked strictly against the arch) and their digest: the graph is
        exported from them at the first forward pass of each input shape."""
        from harness.checkpoints.io import arrays_sha256

        if self.cfg is None:
            raise RunnerError("build() the network before loading weights")
        check_weights(self.cfg, {k: np.shape(v) for k, v in arrays.items()}, "onnx runner")
        self._weights, self._weights_sha = arrays, arrays_sha256(arrays)
        self._graphs.clear()
        self._sessions.clear()

    # ------------------------------------------------------------------ forward
    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        names = layer_names(self.cfg)
        return dict(zip(names, self._run(clip, names, logits_only=False)))

    def forward(self, clip: np.ndarray) -> np.ndarray:
        return self._run(clip, ["logits"], logits_only=True)[0]

    def _run(self, clip: np.ndarray, outputs: List[str], logits_only: bool) -> list:
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        session = self._session_for(clip.shape, logits_only)
        try:
            return session.run(outputs, {session.get_inputs()[0].name: clip})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base class
            raise RunnerError(f"onnxruntime: {first_line(exc)}") from None

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise RunnerError("the onnx runner runs the exported graph whole: no layer alone (compare torch or ms "
                          "isolated instead)")

    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        raise RunnerError("the onnx runner has no sub-operation trace (torch and ms have)")

    def sync(self) -> None:
        """onnxruntime's ``run`` returns when its outputs are written: nothing is queued."""

    # ------------------------------------------------------------------ sessions
    def _session_for(self, shape, logits_only: bool):
        key = (tuple(int(d) for d in shape), logits_only)
        if key not in self._sessions:
            record = self.graph(key[0])
            if logits_only:
                model = self.onnx.load(record["file"])
                keep_outputs(model.graph, ["logits"])
                self._sessions[key] = self.session(model.SerializeToString(), record["file"])
            else:
                self._sessions[key] = self.session(record["file"], record["file"])
        return self._sessions[key]

    def session(self, model, label: str):
        """An onnxruntime session on the CPU provider, with this runner's threads."""
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(model, options, providers=[PROVIDER])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base class
            raise RunnerError(f"onnxruntime refuses {os.path.basename(label)}: {first_line(exc)}") from None

    # ------------------------------------------------------------------ export and cache
    def graph(self, shape: Tuple[int, ...]) -> dict:
        """The record of this shape's graph (``file``, ``sha256``, provenance), exported if no
        cached one has this key."""
        if self._weights is None:
            raise RunnerError("load() weights before running: the graph is exported from them")
        if shape not in self._graphs:
            key = self.export_key(shape)
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            opset = f"opset{self.opset}" if self.opset else "own-opset"
            path = os.path.join(cache_folder(), f"{self.cfg.name}-{self.exporter}-{opset}-"
                                                f"{'x'.join(map(str, shape))}-{digest}.onnx")
            record = cached_record(path, key)
            self._graphs[shape] = record if record is not None else self._export(shape, path, key)
        return self._graphs[shape]

    def export_key(self, shape: Tuple[int, ...]) -> dict:
        """Everything that changes the exported graph."""
        package = EXPORTER_PACKAGES[self.exporter]
        return {"arch": self.cfg.name, "arch_hash": arch_hash(self.cfg), "weights_sha256": self._weights_sha,
                "exporter": self.exporter, package: package_version(package), "opset": self.opset,
                "input_shape": list(shape), "repair": self.repair and self.exporter == "ms",
                "export_version": EXPORT_VERSION}

    def _export(self, shape: Tuple[int, ...], path: str, key: dict) -> dict:
        """Ask the exporter's child for the graph, finish it here (names, repairs, metadata,
        onnx's checker) and keep it in the cache with its record."""
        from harness.checkpoints.io import sha256_file, write_npz
        from harness.files import atomic_path, atomic_write_json
        from harness.runners import runner_options
        from harness.runners.child import Job, Task, run_job

        tmp = tempfile.mkdtemp(prefix="nlparity-onnx-export-")
        try:
            weights, raw = os.path.join(tmp, "weights.npz"), os.path.join(tmp, "exported.onnx")
            write_npz(weights, self._weights)
            t0 = time.perf_counter()
            job = Job(self.exporter, self.cfg, threads=self.threads, options=runner_options(self.exporter),
                      weights=weights, tasks=[Task("export", out=raw, shape=list(shape), opset=self.opset)])
            done = run_job(job, tmp, f"{self.exporter}-export")
            export_s = time.perf_counter() - t0
            model = self.onnx.load(raw)
            repairs = self.finish(model, key)
            with atomic_path(path, ".onnx") as part:
                self.onnx.save(model, part)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        record = {"key": key, "file": path, "sha256": sha256_file(path), "opset": graph_opset(model),
                  "producer": f"{model.producer_name} {model.producer_version}".strip(), "repairs": repairs,
                  "export": {k: v for k, v in done["tasks"][0].items() if k not in ("op", "out", "outputs")},
                  "exporter_versions": done.get("versions", {}), "export_s": export_s, "cache": "exported"}
        atomic_write_json(path + ".json", record)
        return record

    def finish(self, model, key: dict) -> List[str]:
        """Canonical output names, MindSpore's repairs, provenance in the graph's metadata, and
        onnx's checker; returns the repairs made."""
        names = layer_names(self.cfg)
        graph = model.graph
        if len(graph.output) != len(names):
            raise RunnerError(f"the {self.exporter} export has {len(graph.output)} outputs; "
                              f"{self.cfg.name} has {len(names)} canonical layers")
        rename_outputs(graph, names)
        repairs = repair_mindspore_graph(graph, self.cfg) if key["repair"] else []
        meta = {**{k: str(v) for k, v in key.items()}, "repairs": "; ".join(repairs) or "none"}
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = METADATA_PREFIX + k, v
        try:
            self.onnx.checker.check_model(model)
        except self.onnx.checker.ValidationError as exc:
            raise RunnerError(f"the {self.exporter} export is not a valid ONNX graph: {first_line(exc)}") from None
        return repairs

    # ------------------------------------------------------------------ a user's own graph
    def run_plugin(self, target: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray],
                   clip: np.ndarray) -> Dict[str, np.ndarray]:
        """A user's ``.onnx`` (``target``: ``path`` or ``path:map.json``, from
        :func:`harness.runners.plugin.parse_spec`) on ``clip``: its mapped layers and ``logits``."""
        path, map_path = split_onnx_target(target)
        try:
            model = self.onnx.load(path)
        except Exception as exc:  # noqa: BLE001 - a protobuf decode error, an OSError, a missing external file
            raise RunnerError(f"cannot read the candidate graph {path}: {first_line(exc)}") from None
        layer_map = read_layer_map(map_path) if map_path else default_layer_map(model.graph, cfg)
        tensors = resolve_layer_map(model.graph, layer_map, cfg, path)
        expose(self.onnx, model, list(dict.fromkeys(tensors.values())))
        session = self.session(model.SerializeToString(), path)
        inputs = [i.name for i in session.get_inputs()]
        if len(inputs) != 1:
            raise RunnerError(f"the candidate graph {path} takes {len(inputs)} inputs ({', '.join(inputs)}); "
                              "a clip is one")
        wanted = list(dict.fromkeys(tensors.values()))
        try:
            arrays = session.run(wanted, {inputs[0]: np.ascontiguousarray(clip, dtype=np.float32)})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base class
            raise RunnerError(f"onnxruntime, {os.path.basename(path)}: {first_line(exc)}") from None
        by_tensor = dict(zip(wanted, arrays))
        return {layer: by_tensor[tensor] for layer, tensor in tensors.items()}

    # ------------------------------------------------------------------ timing (harness.bench)
    def timing_step(self, shape, task: str = "infer"):
        """A forward pass of the ``logits``-only graph on a seeded batch (exported now if need be)."""
        if task != "infer":
            raise RunnerError("the onnx runner has no training step (onnxruntime runs the exported inference graph)")
        session = self._session_for(shape, logits_only=True)
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)}
        return lambda: session.run(["logits"], feed)

    def gemm_probe(self) -> Dict[str, float]:
        """GFLOP/s of onnxruntime's own float32 MatMul, 2048^2, with this runner's threads (best of 3)."""
        from onnx import TensorProto, helper

        size = 2048
        spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b", "c")]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm_probe", spec[:2], spec[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
        model.ir_version = 8
        session = self.session(model.SerializeToString(), "gemm_probe")
        rng = np.random.default_rng(0)
        feed = {n: rng.standard_normal((size, size)).astype(np.float32) for n in ("a", "b")}
        session.run(None, feed)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            session.run(None, feed)
            best = min(best, time.perf_counter() - t0)
        return {"gflops": 2 * size ** 3 / best / 1e9, "size": size, "dtype": "float32"}

    # ------------------------------------------------------------------ provenance
    def versions(self) -> Dict[str, str]:
        package = EXPORTER_PACKAGES[self.exporter]
        opsets = sorted({str(r["opset"]) for r in self._graphs.values()})
        return {**super().versions(), "onnxruntime": self.ort.__version__, "onnx": self.onnx.__version__,
                "exporter": self.exporter, "exporter_version": f"{package} {package_version(package)}",
                "opset": ",".join(opsets) or (str(self.opset) if self.opset else "the exporter's own")}

    def hardware(self) -> Dict[str, str]:
        return {**super().hardware(), "provider": PROVIDER}

    def settings(self) -> Dict[str, object]:
        return {"threads": self.threads, "inter_op_threads": 1, "provider": PROVIDER, "graph_optimization": "all",
                "spinning": False, "exporter": self.exporter, "opset": self.opset, "repair": self.repair,
                "graphs": {"x".join(map(str, shape)): {k: r.get(k) for k in ("file", "sha256", "opset", "producer",
                                                                              "repairs", "cache")}
                           for shape, r in self._graphs.items()}}


# ----------------------------------------------------------------------------- the cache
def cache_folder() -> str:
    from harness.checkpoints.registry import cache_dir

    folder = os.path.join(cache_dir(), "onnx")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"cannot keep exported graphs in {folder}: {exc.strerror or exc} (set NLPARITY_CACHE)") \
            from None
    return folder


def cached_record(path: str, key: dict) -> Optional[dict]:
    """The record of a cached graph with this key whose bytes are still the ones recorded; else None."""
    from harness.checkpoints.io import sha256_file

    try:
        with open(path + ".json") as f:
            record = json.load(f)
        if record.get("key") != key or sha256_file(path) != record.get("sha256"):
            return None
    except (OSError, ValueError):
        return None
    return {**record, "file": path, "cache": "hit"}


# ----------------------------------------------------------------------------- graph surgery (onnx protos)
def first_line(exc: BaseException) -> str:
    """An error's first line, without onnxruntime's ``[ONNXRuntimeError] :`` banner."""
    text = str(exc).strip().split("[ONNXRuntimeError] : ", 1)[-1]
    return (text.splitlines() or [type(exc).__name__])[0]


def graph_opset(model) -> Optional[int]:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def attribute(node, name: str):
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        return None
    value = helper.get_attribute_value(found)
    return value.decode() if isinstance(value, bytes) else value


def set_ints(node, name: str, values) -> None:
    from onnx import helper

    drop_attribute(node, name)
    node.attribute.append(helper.make_attribute(name, [int(v) for v in values]))


def drop_attribute(node, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def _replace_names(names, renames: Dict[str, str]) -> list:
    return [renames.get(n, n) for n in names]


def rename_outputs(graph, names: List[str]) -> None:
    """Give the graph's outputs ``names``, in order: each output tensor renamed wherever it is
    written or read; a tensor that is two outputs, or the graph's input, gets an Identity."""
    from onnx import helper

    taken = {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.input}
    inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    renames: Dict[str, str] = {}
    for out, new in zip(graph.output, names):
        old = out.name
        if old == new:
            continue
        if new in taken and new not in renames.values():
            raise RunnerError(f"cannot name an output {new!r}: the graph already has a tensor of that name")
        if old in renames or old in inputs:
            graph.node.append(helper.make_node("Identity", [renames.get(old, old)], [new], name=f"output/{new}"))
        else:
            renames[old] = new
        out.name = new
    for node in graph.node:
        for field in (node.input, node.output):
            renamed = _replace_names(field, renames)
            del field[:]
            field.extend(renamed)
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


def keep_outputs(graph, names: List[str]) -> None:
    """Only these graph outputs (onnxruntime then computes only what they need)."""
    kept = [o for o in graph.output if o.name in names]
    del graph.output[:]
    graph.output.extend(kept)


def repair_mindspore_graph(graph, cfg: I3DNLConfig) -> List[str]:
    """Mend what MindSpore 2.10's ONNX exporter writes wrong in this network (see the module
    docstring): Conv3d pads reordered from its pad_list order, MaxPool3D padding from the spec.
    A graph already right is left as it is. Returns what was done, in words."""
    convs = 0
    for node in graph.node:
        pads = list(attribute(node, "pads") or []) if node.op_type == "Conv" else []
        # symmetric padding in pad_list order is pairs of equals; in ONNX's order it is that only when
        # every axis pads alike (then both orders agree): so a graph already right is left alone
        if len(pads) == 6 and pads[0::2] == pads[1::2]:
            onnx_order = pads[0::2] * 2
            if onnx_order != pads:
                set_ints(node, "pads", onnx_order)
                convs += 1
    pools = sum(_repair_pool(node, cfg) for node in graph.node if node.op_type == "MaxPool")
    done = []
    if convs:
        done.append(f"Conv3d pads reordered from MindSpore's (head, tail, top, bottom, left, right) to ONNX's "
                    f"(begins, ends): {convs} Conv nodes")
    if pools:
        done.append(f"MaxPool3D written as auto_pad=SAME_UPPER given the spec's explicit padding: "
                    f"{pools} MaxPool nodes")
    return done


def _repair_pool(node, cfg: I3DNLConfig) -> int:
    """One MaxPool written with ``auto_pad``: the spec's padding instead (1 if repaired)."""
    if attribute(node, "auto_pad") in (None, "NOTSET"):
        return 0
    kernel, strides = list(attribute(node, "kernel_shape")), list(attribute(node, "strides") or [1, 1, 1])
    if "pool1" in node.output:
        window = (list(cfg.pool1_kernel), list(cfg.pool1_stride), list(cfg.pool1_padding), cfg.pool1_ceil_mode)
    else:   # pool2 and the non-local sub-sampling pools: kernel = stride, no padding
        window = (kernel, kernel, [0, 0, 0], False)
    if (kernel, strides) != (window[0], window[1]):
        raise RunnerError(f"cannot repair MaxPool {node.name or node.output[0]}: kernel {kernel} stride {strides} "
                          "is no pool of the spec")
    drop_attribute(node, "auto_pad")
    set_ints(node, "pads", window[2] + window[2])
    if window[3]:
        _set_int(node, "ceil_mode", 1)
    return 1


def _set_int(node, name: str, value: int) -> None:
    from onnx import helper

    drop_attribute(node, name)
    node.attribute.append(helper.make_attribute(name, int(value)))


def expose(onnx, model, tensors: List[str]) -> None:
    """Make these tensors graph outputs (their element types from onnx's shape inference)."""
    from onnx import TensorProto, helper

    present = {o.name for o in model.graph.output}
    missing = [t for t in tensors if t not in present]
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:  # noqa: BLE001 - a graph onnx cannot infer: float32, the network's type
        types = {}
    for name in missing:
        model.graph.output.append(helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None))


# ----------------------------------------------------------------------------- a user's layer map
def split_onnx_target(target: str) -> Tuple[str, Optional[str]]:
    """``path`` or ``path:map.json`` -> (path, the map's path or the sidecar beside the graph, if any)."""
    path, sep, map_path = target.rpartition(":")
    if not (sep and path.lower().endswith(".onnx") and map_path.lower().endswith(".json")):
        path, map_path = target, None
    if map_path is None and os.path.isfile(path + LAYER_MAP_SUFFIX):
        map_path = path + LAYER_MAP_SUFFIX
    return path, map_path


def read_layer_map(path: str) -> Dict[str, str]:
    layer_map = read_json_input(path, "a layer map", RunnerError)
    if not isinstance(layer_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in layer_map.items()):
        raise RunnerError(f"the layer map {path} must be one JSON object of canonical layer -> tensor or node name")
    return layer_map


def default_layer_map(graph, cfg: I3DNLConfig) -> Dict[str, str]:
    """The graph outputs that carry canonical layer names; ``logits`` an output of that name or the first."""
    outputs = [o.name for o in graph.output]
    layer_map = {name: name for name in layer_names(cfg) if name in outputs}
    if "logits" not in layer_map and outputs:
        layer_map["logits"] = outputs[0]
    return layer_map


def resolve_layer_map(graph, layer_map: Dict[str, str], cfg: I3DNLConfig, path: str) -> Dict[str, str]:
    """canonical layer -> the tensor the graph computes for it; anything the graph lacks, or a
    name the arch lacks, is an error that names it."""
    known = layer_names(cfg)
    unknown = [k for k in layer_map if k not in known]
    if unknown:
        raise RunnerError(f"the layer map names {', '.join(unknown[:4])}, which arch {cfg.name} does not have")
    tensors = {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    nodes = {n.name: n for n in graph.node if n.name}
    if "logits" not in layer_map:
        layer_map = {**layer_map, "logits": default_layer_map(graph, cfg)["logits"]}
    resolved = {}
    for layer, ref in layer_map.items():
        if ref.startswith("in:") and ref[3:] in nodes:
            resolved[layer] = nodes[ref[3:]].input[0]
        elif ref in tensors:
            resolved[layer] = ref
        elif ref in nodes:
            resolved[layer] = nodes[ref].output[0]
        else:
            raise RunnerError(f"the layer map sends {layer!r} to {ref!r}, which {os.path.basename(path)} has "
                              "neither as a tensor nor as a node")
    return resolved
