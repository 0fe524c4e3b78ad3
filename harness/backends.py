"""One small runner class per framework, behind one interface (einops / Polygraphy style).

A runner builds the network for a config, loads canonical weights, and returns numpy
arrays keyed by canonical layer name. Framework libraries are imported lazily, only by
the runner that needs them, and each runner normally lives in a process of its own
(:mod:`harness.worker`), so a comparison never holds two frameworks at once and the
MindSpore process can set its oneDNN ISA before MindSpore is imported.
"""
from __future__ import annotations

import os
import platform
import time
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Type

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names

FRAMEWORK_ALIASES = {"torch": "torch", "pt": "torch", "pytorch": "torch",
                     "ms": "ms", "mindspore": "ms", "mmaction2": "mmaction2"}


class BackendError(RuntimeError):
    """The framework cannot run this request (not installed, preset not expressible)."""


def canonical_framework(name: str) -> str:
    try:
        return FRAMEWORK_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; use torch/pt, mindspore/ms or mmaction2") from None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Runner(ABC):
    """build(cfg) -> load(arrays) -> forward_intermediates(clip) / forward_isolated(...)."""

    name: str = ""

    def __init__(self, device: str = "cpu", threads: Optional[int] = None):
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self.cfg: Optional[I3DNLConfig] = None

    @abstractmethod
    def build(self, cfg: I3DNLConfig) -> None: ...

    @abstractmethod
    def load(self, arrays: Dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        """Every canonical layer's output (``logits`` last) for an (N, C, T, H, W) clip."""

    def forward(self, clip: np.ndarray) -> np.ndarray:
        return self.forward_intermediates(clip)["logits"]

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Each layer run on the *reference's* input to that layer, so that a layer's own
        error shows apart from what it inherits."""
        raise BackendError(f"{self.name} does not support isolated mode")

    def versions(self) -> Dict[str, str]:
        return {"numpy": np.__version__, "python": platform.python_version()}

    def hardware(self) -> Dict[str, str]:
        return {"device": self.device, "cpu": cpu_model(), "threads": str(self.threads)}

    def time_forward(self, clip: np.ndarray, warmup: int = 1, iters: int = 3) -> List[float]:
        for _ in range(warmup):
            self.forward(clip)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.forward(clip)
            times.append(time.perf_counter() - t0)
        return times


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, device: str = "cpu", threads: Optional[int] = None):
        super().__init__(device, threads)
        import torch

        self.torch = torch
        torch.set_num_threads(self.threads)
        # Correctness first: no TF32 on GPU (a 1e-3 error would hide real bugs).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        if device == "gpu" and not torch.cuda.is_available():
            raise BackendError("--device gpu asked for, but torch sees no CUDA device")

    def build(self, cfg: I3DNLConfig) -> None:
        from frameworks.torch.model import I3DNL

        self.cfg = cfg
        self.model = I3DNL(cfg).eval().to(self.dev)

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from frameworks.torch.weights import load_canonical

        load_canonical(self.model, arrays, self.cfg)
        self.model.to(self.dev)

    def _tensor(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def forward(self, clip: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self._tensor(clip)).cpu().numpy()
        self._sync()
        return out

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        with self.torch.no_grad():
            out = self.model.forward_intermediates(self._tensor(clip))
        return {k: v.cpu().numpy() for k, v in out.items()}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out, previous = {}, clip
        with self.torch.no_grad():
            for name in layer_names(self.cfg):
                out[name] = self.model.forward_stage(name, self._tensor(previous)).cpu().numpy()
                previous = reference[name]
        return out

    def random_weights(self, cfg: I3DNLConfig, clip: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
        """Seeded random weights with BN statistics calibrated on ``clip``."""
        from frameworks.torch.model import I3DNL
        from frameworks.torch.weights import randomize, to_canonical

        self.torch.manual_seed(seed)
        model = I3DNL(cfg)
        randomize(model, self.torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)), seed)
        return to_canonical(model)

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), "torch": self.torch.__version__}

    def hardware(self) -> Dict[str, str]:
        hw = super().hardware()
        if self.dev.type == "cuda":
            hw["gpu"] = self.torch.cuda.get_device_name(0)
        return hw


class MMAction2Runner(TorchRunner):
    """mmaction2's own Recognizer3D, built from mmaction2's own config files: the oracle."""

    name = "mmaction2"

    # preset -> (config under mmaction2's configs/recognition/i3d, backbone overrides)
    CONFIGS = {
        "i3d_nl_dot_product_r50": ("i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
        "i3d_nl_embedded_gaussian_r50": ("i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
        "i3d_nl_gaussian_r50": ("i3d_imagenet-pretrained-r50-nl-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
        "i3d_r50": ("i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
        # C2D: mmaction2's ResNet3d with no temporal kernel anywhere.
        "c2d_r50": ("i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py",
                    {"conv1_kernel": (1, 7, 7),
                     "inflate": ((0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (0, 0, 0))}),
    }

    def build(self, cfg: I3DNLConfig) -> None:
        import warnings

        warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
        try:
            import mmaction
            from mmaction.registry import MODELS
            from mmaction.utils import register_all_modules
            from mmengine.config import Config
        except ImportError as exc:
            raise BackendError(f"the mmaction2 reference needs mmaction2/mmengine/mmcv-lite ({exc})") from None
        if cfg.name not in self.CONFIGS:
            raise BackendError(f"arch {cfg.name!r} has no mmaction2 counterpart "
                               f"(mmaction2 builds: {', '.join(self.CONFIGS)})")
        if cfg.depth != 50:
            raise BackendError("the mmaction2 reference is wired for depth 50 only")
        filename, overrides = self.CONFIGS[cfg.name]
        path = os.path.join(os.path.dirname(mmaction.__file__), ".mim", "configs", "recognition", "i3d", filename)
        register_all_modules()
        model_cfg = Config.fromfile(path).model
        model_cfg.backbone.update(pretrained=None, pretrained2d=False, **overrides)
        model_cfg.cls_head.num_classes = cfg.num_classes
        self.cfg = cfg
        self.model = MODELS.build(model_cfg).eval().to(self.dev)

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from harness.checkpoints.mmaction2 import from_canonical

        state = {k: self.torch.from_numpy(np.ascontiguousarray(v)) for k, v in from_canonical(arrays, self.cfg).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise BackendError(f"mmaction2 model rejected the weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model.to(self.dev)

    def _hook_table(self):
        """canonical layer -> (module, 'in' | 'out'); a block with a non-local block
        returns the non-local output, so the bare block is the non-local's input."""
        bb = self.model.backbone
        table = {"stem": (bb.conv1, "out"), "pool1": (bb.maxpool, "out"), "pool2": (bb.pool2, "out")}
        for s in range(4):
            for b, block in enumerate(getattr(bb, f"layer{s + 1}")):
                name = f"res{s + 2}.{b}"
                if getattr(block, "non_local", False):
                    table[name] = (block.non_local_block, "in")
                    table[f"{name}.non_local"] = (block.non_local_block, "out")
                else:
                    table[name] = (block, "out")
        return table

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        handles = []
        for name, (module, where) in self._hook_table().items():
            if name not in layer_names(self.cfg):
                continue
            if where == "in":
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, name=name: out.__setitem__(name, args[0].cpu().numpy().copy())))
            else:
                handles.append(module.register_forward_hook(
                    lambda m, args, result, name=name: out.__setitem__(name, result.cpu().numpy().copy())))
        head = self.model.cls_head
        handles.append(head.avg_pool.register_forward_hook(
            lambda m, args, result: out.__setitem__("pool", result.flatten(1).cpu().numpy().copy())))
        try:
            with self.torch.no_grad():
                logits = head(self.model.backbone(self._tensor(clip)))
        finally:
            for h in handles:
                h.remove()
        out["logits"] = logits.cpu().numpy()
        return {k: out[k] for k in layer_names(self.cfg)}

    def forward(self, clip: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model.cls_head(self.model.backbone(self._tensor(clip))).cpu().numpy()

    def versions(self) -> Dict[str, str]:
        import mmaction
        import mmcv
        import mmengine

        return {**super().versions(), "mmaction2": mmaction.__version__, "mmcv": mmcv.__version__,
                "mmengine": mmengine.__version__}


RUNNERS: Dict[str, str] = {
    "torch": "harness.backends:TorchRunner",
    "mmaction2": "harness.backends:MMAction2Runner",
    "ms": "harness.backends_ms:MindSporeRunner",
}


def get_runner_class(framework: str) -> Type[Runner]:
    import importlib

    module_name, cls_name = RUNNERS[canonical_framework(framework)].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"framework {framework!r} is not available here ({exc})") from None
    return getattr(module, cls_name)


def make_runner(framework: str, device: str = "cpu", **kwargs) -> Runner:
    try:
        return get_runner_class(framework)(device=device, **kwargs)
    except ImportError as exc:
        raise BackendError(f"framework {framework!r} is not installed ({exc})") from None
