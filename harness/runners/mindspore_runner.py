"""The MindSpore runner (``RUNNERS["ms"]``): build, load, forward with named intermediates.

oneDNN trap: MindSpore 2.10's bundled oneDNN picks a *reference* (unvectorised)
convolution on AVX-512 CPUs, about 100x slower than its AVX2 kernels (a 1x3x32x224x224
forward: 96 s against 1.5 s in graph mode). oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when
MindSpore loads it, so :func:`configure_onednn_isa` must run before ``import mindspore``:
the runner calls it itself, caps the ISA at AVX2 on an AVX-512 CPU unless the user set the
variable, and reports what it did in :meth:`MindSporeRunner.versions` and ``hardware``.
The cap is for the MindSpore process only (one framework per process, see
:mod:`harness.runners.child`): in a process that also runs torch, torch's oneDNN is capped too.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names
from harness.runners import Runner, RunnerError

log = logging.getLogger(__name__)

ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
_ISA_STATE: Dict[str, str] = {}
_THREADS_SET: List[int] = []   # threads_num() may be called once per process


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_cpu_isa(flags: Optional[set] = None) -> str:
    """The widest x86 vector ISA the CPU reports, in oneDNN's vocabulary."""
    flags = cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512_CORE"
    if "avx2" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    if "sse4_1" in flags:
        return "SSE41"
    return "unknown"


def configure_onednn_isa() -> Dict[str, str]:
    """Cap oneDNN at AVX2 on AVX-512 CPUs, unless the user chose an ISA; call before
    ``import mindspore``. Returns (and remembers) what was decided and why."""
    if _ISA_STATE:
        return dict(_ISA_STATE)
    cpu_isa = detect_cpu_isa()
    user = os.environ.get(ISA_VARIABLE) or os.environ.get("DNNL_MAX_CPU_ISA")
    if user:
        isa, how = user, "set by the user"
    elif "mindspore" in sys.modules:
        isa, how = "oneDNN default", "mindspore was imported before the runner could set it"
    elif cpu_isa == "AVX512_CORE":
        os.environ[ISA_VARIABLE] = "AVX2"
        isa, how = "AVX2", "set by the runner: MindSpore's oneDNN runs reference convolutions on AVX-512"
    else:
        isa, how = "oneDNN default", f"left to oneDNN on a {cpu_isa} CPU"
    _ISA_STATE.update(cpu_isa=cpu_isa, onednn_max_cpu_isa=isa, onednn_isa_source=how)
    if how.startswith("mindspore was imported"):
        log.warning("%s not set before mindspore was imported: convolutions may be ~100x slower "
                    "on this %s CPU", ISA_VARIABLE, cpu_isa)
    return dict(_ISA_STATE)


class MindSporeRunner(Runner):
    """Our MindSpore I3D-NL in ``graph`` (GRAPH_MODE) or ``pynative`` mode, on cpu or gpu."""

    name = "ms"
    aliases = ("mindspore",)
    title = "MindSpore"
    trains = True
    explains = True
    checkpoint_suffix = ".ckpt"
    decodes_beside = False   # MindSpore 2.10 aborts ("random_device could not be read") if decord came first
    MODES = ("graph", "pynative")

    @classmethod
    def prepare_process(cls) -> Dict[str, str]:
        return configure_onednn_isa()

    @classmethod
    def arguments(cls):
        return ((("--ms-mode",), dict(choices=list(cls.MODES), default="graph",
                                      help="MindSpore's execution mode: graph (compiled) or pynative (eager); "
                                           "ignored by the other frameworks (default graph)")),)

    @classmethod
    def options_from(cls, settings=None) -> dict:
        return {"mode": (settings or {}).get("ms_mode") or "graph"}

    @classmethod
    def world_from_env(cls, env):
        """msrun sets ``RANK_ID`` / ``RANK_SIZE`` (and ``MS_WORKER_NUM``) in each worker it spawns."""
        from harness.runners import World, env_int

        if "MS_WORKER_NUM" not in env and "RANK_SIZE" not in env:
            return None
        size = env_int(env, "MS_WORKER_NUM") if "MS_WORKER_NUM" in env else env_int(env, "RANK_SIZE")
        return World(env_int(env, "RANK_ID") if "RANK_ID" in env else 0, size, "msrun")

    DTYPES = ("float32", "float16", "bfloat16")
    JIT_LEVELS = ("O0", "O1", "O2")

    # ------------------------------------------------------------------ its bench variants (harness.bench)
    BENCH_REWRITES = {"reassociate": "dot-product non-local as (g phi^T / L') theta (exact rewrite)",
                      "fold_bn": "batch norm folded into the convolution before it (inference)"}
    BENCH_COMPILE = {"jit_O0": "graph mode jit_level O0", "jit_O1": "graph mode jit_level O1",
                     "jit_O2": "graph mode jit_level O2", "graph_kernel": "graph kernel fusion"}

    @classmethod
    def bench_tokens(cls) -> Dict[str, str]:
        """The ``bench forward`` variant tokens it takes, and what each does."""
        return {**cls.BENCH_REWRITES, **cls.BENCH_COMPILE}

    @classmethod
    def bench_fast(cls) -> tuple:
        """The tokens the ``fast`` variant stands for."""
        return tuple(cls.BENCH_REWRITES)

    @classmethod
    def bench_arguments(cls) -> tuple:
        """Its own ``bench forward`` options, as ``(flags, add_argument keywords)``."""
        return ((("--ms-mode",), dict(default="graph", metavar="graph[,pynative]",
                                      help="MindSpore: execution modes, each a configuration (default graph)")),)

    @classmethod
    def bench_modes(cls, args) -> list:
        """``--ms-mode``: graph, PyNative or both, each a configuration of its own."""
        modes = list(dict.fromkeys(m.strip() for m in str(getattr(args, "ms_mode", "graph")).split(",") if m.strip()))
        bad = [m for m in modes if m not in cls.MODES]
        if bad or not modes:
            raise RunnerError(f"unknown MindSpore mode {', '.join(bad) or repr(args.ms_mode)}; use graph, pynative "
                              "or graph,pynative")
        return modes

    @classmethod
    def bench_variants(cls, variants: list) -> list:
        return list(variants)

    @classmethod
    def bench_options(cls, tokens: set, dtype: str, mode: str, args) -> dict:
        """Its runner's keyword arguments for a configuration (``tokens``: the variant's, ``fast`` expanded)."""
        levels = sorted(t[4:] for t in tokens if t.startswith("jit_"))
        if len(levels) > 1:
            raise RunnerError("one jit level at a time")
        return {"dtype": dtype, "mode": mode, "execution": {"reassociate_nonlocal": "reassociate" in tokens},
                "fold_bn": "fold_bn" in tokens, "graph_kernel": "graph_kernel" in tokens,
                "jit_level": levels[0] if levels else None}

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, mode: str = "graph",
                 dtype: str = "float32", jit_level: Optional[str] = None, graph_kernel: bool = False,
                 execution: Optional[Dict[str, bool]] = None, fold_bn: bool = False):
        super().__init__(device, threads)
        if mode not in self.MODES:
            raise RunnerError(f"unknown MindSpore mode {mode!r}; use graph or pynative")
        if dtype not in self.DTYPES:
            raise RunnerError(f"MindSpore has no {dtype!r} mode here; one of {', '.join(self.DTYPES)}"
                              + (" (TF32 is a torch/CUDA switch)" if dtype == "tf32" else ""))
        if jit_level is not None and jit_level not in self.JIT_LEVELS:
            raise RunnerError(f"unknown jit_level {jit_level!r}; one of {', '.join(self.JIT_LEVELS)}")
        self.mode = mode
        # timing options (graph compilation, precision) and exact reformulations; default: the exact path
        self.dtype, self.jit_level, self.graph_kernel = dtype, jit_level, graph_kernel
        self.execution, self.fold_bn = dict(execution or {}), fold_bn
        self._weights: Optional[Dict[str, np.ndarray]] = None
        self._trainer = None
        self.isa = configure_onednn_isa()
        try:
            import mindspore as ms
        except ImportError as exc:
            raise RunnerError(f"MindSpore is not installed ({exc})") from None
        self.ms = ms
        self._set_device()
        self._activate()
        if device == "cpu":
            self._set_threads(self.threads)
        if graph_kernel:
            ms.set_context(enable_graph_kernel=True)
        self.net = self._intermediates = self._isolated = None

    # ------------------------------------------------------------------ context
    def _set_device(self) -> None:
        """Choose the device once: MindSpore refuses a change after its first kernel ran."""
        ms = self.ms
        target = "GPU" if self.device == "gpu" else "CPU"
        if ms.get_context("device_target") != target:
            try:
                ms.set_device(target)
            except (RuntimeError, ValueError) as exc:
                raise RunnerError(f"MindSpore cannot use {target} here ({str(exc).splitlines()[0]})") from None
        if ms.get_context("device_target") != target:
            raise RunnerError(f"--device {self.device} asked for, but MindSpore runs on "
                               f"{ms.get_context('device_target')} in this process")

    def _activate(self) -> None:
        """Make this runner's mode current (several runners may share a process)."""
        ms = self.ms
        ms.set_context(mode=ms.GRAPH_MODE if self.mode == "graph" else ms.PYNATIVE_MODE)

    def _set_threads(self, n: int) -> None:
        if _THREADS_SET:
            if _THREADS_SET[0] != n:
                log.warning("MindSpore CPU threads already set to %d in this process; %d ignored", _THREADS_SET[0], n)
            self.threads = _THREADS_SET[0]
            return
        try:
            self.ms.device_context.cpu.op_tuning.threads_num(n)
        except (RuntimeError, AttributeError) as exc:  # set elsewhere in this process, or an older API
            log.warning("could not set MindSpore CPU threads to %d (%s)", n, exc)
            return
        _THREADS_SET.append(n)

    def _tensor(self, x: np.ndarray):
        return self.ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))

    # ------------------------------------------------------------------ Runner API
    def build(self, cfg: I3DNLConfig) -> None:
        from frameworks.mindspore.model import build_model

        self._activate()
        self.cfg = cfg
        self.net = build_model(cfg)
        self._wrap(self.net)

    def _wrap(self, net) -> None:
        """The entry points over ``net``, with the execution options and compilation settings."""
        from frameworks.mindspore.model import IntermediatesNet, IsolatedStagesNet

        try:
            net.set_execution(**self.execution)
        except ValueError as exc:
            raise RunnerError(str(exc)) from None
        if self.dtype != "float32":
            from mindspore import amp

            amp.auto_mixed_precision(net, amp_level="O2", dtype=getattr(self.ms, self.dtype))
        self._intermediates = IntermediatesNet(net)
        self._isolated = IsolatedStagesNet(net)
        if self.jit_level:
            for cell in (net, self._intermediates, self._isolated):
                cell.set_jit_config(self.ms.JitConfig(jit_level=self.jit_level))

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from frameworks.mindspore.weights import load_canonical

        if self.net is None:
            raise RunnerError("build() the network before loading weights")
        load_canonical(self.net, arrays, self.cfg)
        self._weights = arrays
        if self.fold_bn:  # a separate inference network; the canonical one is what training builds on
            from frameworks.mindspore.model import build_folded

            self.net = build_folded(self.cfg, arrays)
            self._wrap(self.net)

    # ------------------------------------------------------------------ timing (harness.bench)
    def timing_step(self, shape, task: str = "infer"):
        """One inference or training step on a seeded batch made before the clock starts;
        ``asnumpy`` of the (small) output ends each step, so it has finished."""
        self._activate()
        rng = np.random.default_rng(0)
        x = self._tensor(rng.standard_normal(tuple(shape)).astype(np.float32))
        if self.device == "gpu" and hasattr(x, "move_to"):   # on the device before any clock starts
            x = x.move_to("GPU")
        if task == "infer":
            net = self.net
            return lambda: net(x).asnumpy()
        trainer = self._training()
        y = self.ms.Tensor(rng.integers(0, self.cfg.num_classes, shape[0]).astype(np.int32))
        step = trainer.train_step
        return lambda: step(x, y).asnumpy()

    def _training(self):
        """The training engineer's step (:class:`frameworks.mindspore.train.MindSporeTrainer`):
        its network, recipe and SGD groups as one compiled Cell, at a constant learning rate."""
        if self._trainer is None:
            from frameworks.spec.train import get_recipe

            recipe = get_recipe().replace(lr_schedule="constant")
            trainer = self.trainer(self.cfg, recipe, self._weights, steps_per_epoch=1, total_steps=10_000)
            trainer.net.set_execution(**self.execution)
            if self.jit_level:
                trainer.train_step.set_jit_config(self.ms.JitConfig(jit_level=self.jit_level))
            self._trainer = trainer
        return self._trainer

    def trainer(self, cfg: I3DNLConfig, recipe, weights: Dict[str, np.ndarray], *, steps_per_epoch: int,
                total_steps: Optional[int] = None, float64: bool = False, return_grads: bool = False,
                world=None, seed: int = 0, sync_bn: bool = False):
        if float64:
            raise RunnerError("float64 training runs in torch only (it is the float32 noise floor)")
        if sync_bn:
            raise RunnerError("--sync-bn: MindSpore's SyncBatchNorm runs on Ascend only")
        try:
            from frameworks.mindspore.train import MindSporeTrainer, join_cluster
        except ImportError as exc:
            raise RunnerError(f"no training step here ({exc})") from None
        self._activate()
        if world is not None and world.distributed:
            from harness.runners import World

            world = World(*join_cluster(), "msrun")
        trainer = MindSporeTrainer(cfg, recipe, weights, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                   return_grads=return_grads, seed=seed)
        trainer.world = world
        return trainer

    def run_plugin(self, target: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray],
                   clip: np.ndarray) -> Dict[str, np.ndarray]:
        from harness.runners import plugin

        return plugin.run_mindspore(target, cfg, weights, clip)

    def gemm_probe(self) -> Dict[str, float]:
        """GFLOP/s of MindSpore's own square matrix product in the timing dtype (best of 3)."""
        import time

        ms = self.ms
        size = 8192 if self.device == "gpu" else 2048
        rng = np.random.default_rng(0)
        dtype = getattr(ms, self.dtype)
        a = ms.Tensor(rng.standard_normal((size, size)).astype(np.float32)).astype(dtype)
        b = ms.Tensor(rng.standard_normal((size, size)).astype(np.float32)).astype(dtype)
        matmul = ms.ops.matmul
        matmul(a, b).asnumpy()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = matmul(a, b)
            self.sync()
            out.asnumpy()
            best = min(best, time.perf_counter() - t0)
        return {"gflops": 2 * size ** 3 / best / 1e9, "size": size, "dtype": self.dtype}

    def memory(self) -> Dict[str, float]:
        if self.device != "gpu":
            return {}
        peak = getattr(getattr(self.ms, "runtime", None), "max_memory_allocated", None)
        return {"device_mem_peak_mib": peak() / 2 ** 20} if peak is not None else {}

    def settings(self) -> Dict[str, object]:
        return {"dtype": self.dtype, "ms_mode": self.mode, "jit_level": self.jit_level,
                "graph_kernel": self.graph_kernel, "execution": self.net.execution() if self.net else self.execution,
                "fold_bn": self.fold_bn, "threads": _THREADS_SET[0] if _THREADS_SET else self.threads}

    def weights(self) -> Dict[str, np.ndarray]:
        """The network's weights as canonical arrays."""
        from frameworks.mindspore.weights import to_canonical

        return to_canonical(self.net, self.cfg)

    def forward(self, clip: np.ndarray) -> np.ndarray:
        self._activate()
        return self.net(self._tensor(clip)).asnumpy()

    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        """In PyNative, one step at a time (each step is a kernel of its own either way)."""
        from frameworks.mindspore.subops import trace

        ms = self.ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
        try:
            return {k: v.asnumpy() for k, v in trace(self.net, name, self._tensor(x)).items()}
        finally:
            self._activate()

    def sync(self) -> None:
        # asnumpy() already waits for its result; this covers a caller that keeps Tensors
        synchronize = getattr(getattr(self.ms, "runtime", None), "synchronize", None)
        if synchronize is not None:
            synchronize()

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        self._activate()
        outputs = self._intermediates(self._tensor(clip))
        return {name: out.asnumpy() for name, out in zip(layer_names(self.cfg), outputs)}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = layer_names(self.cfg)
        missing = [n for n in names[:-1] if n not in reference]
        if missing:
            raise RunnerError(f"isolated mode needs the reference's outputs; missing {', '.join(missing[:4])}")
        self._activate()
        inputs = [self._tensor(clip)] + [self._tensor(reference[n]) for n in names[:-1]]
        outputs = self._isolated(*inputs)
        return {name: out.asnumpy() for name, out in zip(names, outputs)}

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), "mindspore": self.ms.__version__, "ms_mode": self.mode,
                "onednn_max_cpu_isa": self.isa["onednn_max_cpu_isa"]}

    def hardware(self) -> Dict[str, str]:
        hw = super().hardware()
        hw.update(self.isa)
        return hw

    # ------------------------------------------------------------------ ONNX export (harness.runners.onnx_runner)
    def export_onnx(self, path: str, shape, opset: Optional[int] = None) -> Dict[str, object]:
        """Write the exact network (canonical weights, eval, float32; this runner's execution
        options and BN folding left out) to ``path`` with ``mindspore.export(file_format="ONNX")``
        for input ``shape``: the outputs of :class:`IntermediatesNet`, every canonical layer in
        :func:`layer_names` order, ``logits`` last, under MindSpore's own tensor names (the ONNX
        runner renames them). ``mindspore.export`` takes no opset: it writes its own (11 in 2.10),
        so any other is refused. Shapes are static."""
        from frameworks.mindspore.model import IntermediatesNet, build_model
        from frameworks.mindspore.weights import load_canonical

        if opset is not None:
            raise RunnerError(f"mindspore.export writes its own ONNX opset and takes none; {opset} asked for")
        ms = self.ms
        ms.set_context(mode=ms.GRAPH_MODE)
        try:
            net = build_model(self.cfg)
            load_canonical(net, self._weights, self.cfg)
            net.set_train(False)
            cell = IntermediatesNet(net)
            cell.set_train(False)
            stem = path[:-len(".onnx")] if path.endswith(".onnx") else path
            ms.export(cell, self._tensor(np.zeros(tuple(shape), np.float32)), file_name=stem, file_format="ONNX")
        finally:
            self._activate()
        if stem + ".onnx" != path:
            os.replace(stem + ".onnx", path)
        return {"exporter": "mindspore.export (file_format=ONNX)", "outputs": layer_names(self.cfg),
                "mindspore": ms.__version__}
