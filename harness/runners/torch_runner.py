"""The PyTorch runner (``RUNNERS["torch"]``), and the torch plumbing it shares with the
mmaction2 runner (:class:`TorchDevice`)."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names
from harness.runners import Runner, RunnerError

DETERMINISTIC = "NLPARITY_TORCH_DETERMINISTIC"


class TorchDevice:
    """torch on one device: threads, numerics policy, tensors in and out, sync, versions.

    Correctness first: TF32 is off on GPU (a 1e-3 error would hide real bugs) and cuDNN's
    autotuner is off, so that GPU results are repeatable; ``benchmark=True`` turns the
    autotuner on for timing runs.
    """

    def __init__(self, device: str, threads: int, benchmark: bool = False, dtype: str = "float32",
                 channels_last: bool = False, compile: Optional[str] = None, cuda_graphs: bool = False):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        if os.environ.get(DETERMINISTIC) == "1":   # TorchRunner.deterministic_env: repeatable kernels
            torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = benchmark
        if device == "gpu" and not torch.cuda.is_available():
            raise RunnerError("--device gpu asked for, but torch sees no CUDA device")
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        # how timing runs it (frameworks.torch.fast); parity runs float32, TF32 off, whatever these say
        from frameworks.torch import fast

        try:
            fast.set_numerics(dtype, self.dev, benchmark)
        except ValueError as exc:
            raise RunnerError(str(exc)) from None
        if cuda_graphs and self.dev.type != "cuda":
            raise RunnerError("CUDA graphs need --device gpu")
        self.dtype, self.channels_last, self.compile, self.cuda_graphs = dtype, channels_last, compile, cuda_graphs

    def tensor(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)

    @staticmethod
    def numpy(t) -> np.ndarray:
        t = t.detach()
        if t.is_floating_point() and t.element_size() == 2:  # autocast's bfloat16 / float16: numpy has no bfloat16
            t = t.float()
        return t.cpu().numpy()

    def autocast(self):
        """The timing dtype's autocast (a no-op for float32 and TF32), for forward passes too."""
        from frameworks.torch import fast

        return fast.autocast(self.dtype, self.dev)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def versions(self) -> Dict[str, str]:
        out = {"torch": self.torch.__version__}
        if self.dev.type == "cuda":
            out.update(cuda=str(self.torch.version.cuda), cudnn=str(self.torch.backends.cudnn.version()))
        return out

    def hardware(self) -> Dict[str, str]:
        return {"gpu": self.torch.cuda.get_device_name(0)} if self.dev.type == "cuda" else {}

    # ------------------------------------------------------------------ timing (harness.bench)
    def batch(self, shape, num_classes: int):
        """A seeded normal batch of ``shape`` and labels, on the device before any clock starts."""
        gen = self.torch.Generator().manual_seed(0)
        x = self.torch.randn(tuple(shape), generator=gen).to(self.dev)
        y = self.torch.randint(0, num_classes, (shape[0],), generator=gen).to(self.dev)
        return x, y

    def inference_step(self, module, shape, num_classes: int):
        from frameworks.torch import fast

        x, _ = self.batch(shape, num_classes)
        return fast.inference_step(module, x, dtype=self.dtype, channels_last=self.channels_last,
                                   compile_mode=self.compile, cuda_graphs=self.cuda_graphs)

    def training_step(self, module, optimizer, shape, num_classes: int):
        from frameworks.torch import fast

        if self.cuda_graphs:
            raise RunnerError("CUDA graphs are for the inference step here (use torch.compile's "
                              "'reduce-overhead' mode for training)")
        x, y = self.batch(shape, num_classes)
        return fast.training_step(module, optimizer, x, y, dtype=self.dtype, channels_last=self.channels_last,
                                  compile_mode=self.compile)

    def gemm_probe(self) -> Dict[str, float]:
        from frameworks.torch import fast

        return fast.gemm_probe(self.dtype, self.dev)

    def memory(self) -> Dict[str, float]:
        from frameworks.torch import fast

        return fast.memory(self.dev)

    def reset_memory(self) -> None:
        from frameworks.torch import fast

        fast.reset_memory(self.dev)

    def settings(self) -> Dict[str, object]:
        return {"dtype": self.dtype, "channels_last_3d": self.channels_last, "compile": self.compile,
                "cuda_graphs": self.cuda_graphs, "cudnn_benchmark": bool(self.torch.backends.cudnn.benchmark),
                "tf32": bool(self.torch.backends.cudnn.allow_tf32), "threads": self.torch.get_num_threads(),
                "interop_threads": self.torch.get_num_interop_threads()}


class OnTorchDevice(Runner):
    """What a runner timing on a :class:`TorchDevice` (``self.backend``) answers from it:
    the torch runner and mmaction2's, which measure on the same one."""

    backend: TorchDevice

    def gemm_probe(self) -> Dict[str, float]:
        return self.backend.gemm_probe()

    def memory(self) -> Dict[str, float]:
        return self.backend.memory()

    def reset_memory(self) -> None:
        self.backend.reset_memory()

    def hardware(self) -> Dict[str, str]:
        return {**super().hardware(), **self.backend.hardware()}

    # ------------------------------------------------------------------ its bench variants (harness.bench)
    # the run options of every torch-device runner: variant tokens, each also a bench option for every run
    BENCH_RUN = {"channels_last": "channels_last_3d memory layout",
                 "compile": "torch.compile (its mode: --compile)",
                 "cuda_graphs": "inference replayed as a CUDA graph (GPU)"}
    COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

    @classmethod
    def bench_tokens(cls) -> Dict[str, str]:
        """The ``bench forward`` variant tokens it takes, and what each does."""
        return dict(cls.BENCH_RUN)

    @classmethod
    def bench_fast(cls) -> tuple:
        """The tokens the ``fast`` variant stands for."""
        return ()

    @classmethod
    def bench_arguments(cls) -> tuple:
        """Its own ``bench forward`` options, as ``(flags, add_argument keywords)``."""
        who = "torch and mmaction2"
        return ((("--channels-last",), dict(action="store_true", help=f"{who}: channels_last_3d in every run")),
                (("--compile",), dict(nargs="?", const="default", choices=cls.COMPILE_MODES, metavar="MODE",
                                      help=f"{who}: torch.compile every run (MODE: {', '.join(cls.COMPILE_MODES)}; "
                                           "default: no compilation)")),
                (("--cuda-graphs",), dict(action="store_true", help=f"{who}: replay inference as a CUDA graph")))

    @classmethod
    def bench_modes(cls, args) -> list:
        """The execution modes it is timed in, each a configuration of its own."""
        return ["eager"]

    @classmethod
    def bench_variants(cls, variants: list) -> list:
        """The ``--variants`` it runs (every one given)."""
        return list(variants)

    @classmethod
    def bench_options(cls, tokens: set, dtype: str, mode: str, args) -> dict:
        """Its runner's keyword arguments for a configuration: ``tokens`` (the variant's, ``fast``
        expanded) and the run options given for every run (``--channels-last`` ...)."""
        flags = {"channels_last": getattr(args, "channels_last", False),
                 "compile": bool(getattr(args, "compile", None)), "cuda_graphs": getattr(args, "cuda_graphs", False)}
        tokens = set(tokens) | {t for t, on in flags.items() if on}
        return {"dtype": dtype, "benchmark": True, "channels_last": "channels_last" in tokens,
                "compile": (getattr(args, "compile", None) or "default") if "compile" in tokens else None,
                "cuda_graphs": "cuda_graphs" in tokens}


class TorchRunner(OnTorchDevice):
    name = "torch"
    aliases = ("pt", "pytorch")
    title = "PyTorch"
    trains = True
    explains = True
    float64 = True
    checkpoint_suffix = ".pth"

    @classmethod
    def world_from_env(cls, env):
        """torchrun sets ``RANK`` / ``WORLD_SIZE`` in each process it starts."""
        from harness.runners import World, env_int

        if "WORLD_SIZE" not in env:
            return None
        return World(env_int(env, "RANK"), env_int(env, "WORLD_SIZE"), "torchrun")

    @classmethod
    def deterministic_env(cls) -> Dict[str, str]:
        return {DETERMINISTIC: "1"}   # read by TorchDevice: torch.use_deterministic_algorithms(True)

    # exact rewrites of the network (frameworks.torch.model.set_execution / build_folded), bench variant tokens
    BENCH_REWRITES = {"reassociate": "dot-product non-local as (g phi^T / L') theta: O(L C'^2), not O(L L' C')",
                      "fold_bn": "batch norm folded into the convolution before it (inference; training steps "
                                 "run the canonical network)",
                      "inplace": "in-place ReLU and residual add",
                      "fast_pools": "the temporal max pool as a maximum of frames",
                      "direct_mkldnn": "oneDNN for every CPU convolution"}

    @classmethod
    def bench_tokens(cls) -> Dict[str, str]:
        return {**cls.BENCH_REWRITES, **super().bench_tokens()}

    @classmethod
    def bench_fast(cls) -> tuple:
        return tuple(cls.BENCH_REWRITES) + ("channels_last",)

    @classmethod
    def bench_options(cls, tokens: set, dtype: str, mode: str, args) -> dict:
        execution = {"reassociate_nonlocal": "reassociate" in tokens, "inplace": "inplace" in tokens,
                     "fast_pools": "fast_pools" in tokens, "direct_mkldnn": "direct_mkldnn" in tokens}
        return {**super().bench_options(tokens, dtype, mode, args), "execution": execution,
                "fold_bn": "fold_bn" in tokens}

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, benchmark: bool = False,
                 dtype: str = "float32", channels_last: bool = False, compile: Optional[str] = None,
                 cuda_graphs: bool = False, execution: Optional[Dict[str, bool]] = None, fold_bn: bool = False):
        super().__init__(device, threads)
        self.backend = TorchDevice(device, self.threads, benchmark, dtype, channels_last, compile, cuda_graphs)
        self.model = None
        # exact reformulations (frameworks.torch.model.set_execution / build_folded); default: the exact path
        self.execution, self.fold_bn = dict(execution or {}), fold_bn
        self._weights: Optional[Dict[str, np.ndarray]] = None
        self._trainer = None

    def build(self, cfg: I3DNLConfig) -> None:
        from frameworks.torch.model import I3DNL

        self.cfg = cfg
        self.model = I3DNL(cfg).eval().to(self.backend.dev)
        try:
            self.model.set_execution(**self.execution)
        except ValueError as exc:
            raise RunnerError(str(exc)) from None

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from frameworks.torch.weights import load_canonical

        load_canonical(self.model, arrays, self.cfg)
        self._weights = arrays
        if self.fold_bn:  # a separate inference network; the canonical one is what training builds on
            from frameworks.torch.model import build_folded

            self.model = build_folded(self.cfg, arrays).set_execution(**self.execution)
        self.model.to(self.backend.dev)

    # ------------------------------------------------------------------ timing (harness.bench)
    def timing_step(self, shape, task: str = "infer"):
        """One inference or training step on a device-resident seeded batch, as a callable."""
        if task == "infer":
            return self.backend.inference_step(self.model, shape, self.cfg.num_classes)
        trainer = self._training()
        return self.backend.training_step(trainer.net, trainer.optimizer, shape, self.cfg.num_classes)

    def _training(self):
        """The training engineer's step (:class:`frameworks.torch.train.TorchTrainer`): its
        model, recipe and SGD groups, at a constant learning rate."""
        if self._trainer is None:
            try:
                from frameworks.spec.train import get_recipe
            except ImportError as exc:
                raise RunnerError(f"no training step here ({exc})") from None
            recipe = get_recipe().replace(lr_schedule="constant")
            self._trainer = self.trainer(self.cfg, recipe, self._weights, steps_per_epoch=1, total_steps=16)
            self._trainer.model.set_execution(**{k: v for k, v in self.execution.items() if k != "direct_mkldnn"})
        return self._trainer

    def trainer(self, cfg: I3DNLConfig, recipe, weights: Dict[str, np.ndarray], *, steps_per_epoch: int,
                total_steps: Optional[int] = None, float64: bool = False, return_grads: bool = False,
                world=None, seed: int = 0, sync_bn: bool = False):
        from frameworks.torch.train import TorchTrainer, join_process_group

        distributed = world is not None and world.distributed
        if distributed:
            join_process_group(world.size, self.device)
        trainer = TorchTrainer(cfg, recipe, weights, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                               device=self.device, float64=float64, distributed=distributed,
                               rank=world.rank if distributed else 0, seed=seed, sync_bn=sync_bn)
        trainer.world = world
        return trainer

    def flop_count(self, shape) -> Optional[int]:
        """FLOPs of the *exact* network by torch's own counter (meta device: no arithmetic)."""
        from frameworks.torch import fast
        from frameworks.torch.model import I3DNL

        return fast.count_flops(I3DNL(self.cfg).eval(), shape)

    def settings(self) -> Dict[str, object]:
        return {**self.backend.settings(), "execution": self.model.execution(), "fold_bn": self.fold_bn}

    def forward(self, clip: np.ndarray) -> np.ndarray:
        with self.backend.torch.no_grad(), self.backend.autocast():
            return self.backend.numpy(self.model(self.backend.tensor(clip)))

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        with self.backend.torch.no_grad(), self.backend.autocast():
            out = self.model.forward_intermediates(self.backend.tensor(clip))
        return {k: self.backend.numpy(v) for k, v in out.items()}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out, previous = {}, clip
        with self.backend.torch.no_grad():
            for name in layer_names(self.cfg):
                out[name] = self.backend.numpy(self.model.forward_stage(name, self.backend.tensor(previous)))
                previous = reference[name]
        return out

    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        from frameworks.torch.subops import trace

        with self.backend.torch.no_grad():
            return {k: self.backend.numpy(v) for k, v in trace(self.model, name, self.backend.tensor(x)).items()}

    def seeded_weights(self, cfg: I3DNLConfig, clip: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
        return seeded_weights(cfg, clip, seed)

    def run_plugin(self, target: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray],
                   clip: np.ndarray) -> Dict[str, np.ndarray]:
        from harness.runners import plugin

        return plugin.run_torch(target, cfg, weights, clip)

    def forward_intermediates_float64(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        torch = self.backend.torch
        model = self.model.double()
        try:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float64)).to(self.backend.dev)
                return {k: self.backend.numpy(v) for k, v in model.forward_intermediates(x).items()}
        finally:
            self.model.float()

    def sync(self) -> None:
        self.backend.sync()

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), **self.backend.versions()}

    # ------------------------------------------------------------------ ONNX export (harness.runners.onnx_runner)
    ONNX_OPSET = 17   # the default: what onnxruntime and every recent exporter read

    def export_onnx(self, path: str, shape, opset: Optional[int] = None) -> Dict[str, object]:
        """Write the exact network (canonical weights, eval, CPU, float32; this runner's execution
        options and BN folding left out) to ``path`` as an ONNX graph for input ``shape`` (named
        ``input``) whose outputs are every canonical layer under its own name, ``logits`` last.

        torch.onnx's TorchScript exporter (``dynamo=False``: the dynamo exporter needs onnxscript,
        which the ``onnx`` extra does not pull in), constants folded as torch does by default:
        each eval batch norm is folded into the convolution before it. Shapes are static."""
        import warnings

        import torch

        from frameworks.torch.model import I3DNL
        from frameworks.torch.weights import load_canonical

        names = layer_names(self.cfg)
        net = I3DNL(self.cfg).eval()
        load_canonical(net, self._weights, self.cfg)
        opset = int(opset or self.ONNX_OPSET)
        wrapper = _intermediates_module(net, names).eval()   # the export puts a module back in its mode
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
            torch.onnx.export(wrapper, (torch.zeros(tuple(shape)),), path, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=names, do_constant_folding=True)
        return {"exporter": "torch.onnx.export (TorchScript, dynamo=False)", "opset": opset, "outputs": names,
                "torch": torch.__version__, "constant_folding": True}


def _intermediates_module(net, names):
    """A torch module returning ``net``'s canonical layers as a tuple in ``names``' order."""
    import torch

    class Intermediates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net.forward_intermediates(x)
            return tuple(out[name] for name in names)

    return Intermediates()


def seeded_weights(cfg: I3DNLConfig, clip: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
    """The project's seeded random weights: every test and command that compares
    frameworks on random weights uses these (see :func:`frameworks.torch.weights.randomize`
    for why they are well conditioned), with BN statistics calibrated on ``clip``."""
    import torch

    from frameworks.torch.model import I3DNL
    from frameworks.torch.weights import randomize, to_canonical

    torch.manual_seed(seed)
    model = I3DNL(cfg)
    randomize(model, torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)), seed)
    return to_canonical(model)
