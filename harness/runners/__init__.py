"""One small runner class per framework, behind one interface (einops / Polygraphy style).

A runner builds the network for a config, loads canonical weights, and returns numpy
arrays keyed by canonical layer name. Each lives in its own module and is imported only
when asked for by name (:data:`RUNNERS`), so a process imports one framework and the
MindSpore runner can cap oneDNN's ISA before MindSpore loads. Commands run a runner in a
process of its own through :mod:`harness.runners.child`, or in process (evaluate).

    runner = make_runner("ms", device="cpu", threads=2, mode="graph")
    runner.build(cfg); runner.load(arrays)
    runner.forward_intermediates(clip)   # {canonical layer: array}, "logits" last
"""
from __future__ import annotations

import importlib
import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, Optional, Type

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.cli import InputError, cpu_model

FRAMEWORK_ALIASES = {"torch": "torch", "pt": "torch", "pytorch": "torch",
                     "ms": "ms", "mindspore": "ms", "mmaction2": "mmaction2"}
# framework -> "module:class", imported on first use (einops' lazy backends)
RUNNERS: Dict[str, str] = {
    "torch": "harness.runners.torch_runner:TorchRunner",
    "ms": "harness.runners.mindspore_runner:MindSporeRunner",
    "mmaction2": "harness.runners.mmaction2_runner:MMAction2Runner",
}
FRAMEWORK_NAMES = {"torch": "PyTorch", "ms": "MindSpore", "mmaction2": "mmaction2"}


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes a launcher started."""

    rank: int = 0
    size: int = 1
    launcher: str = ""   # torchrun | msrun | ""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RunnerError(InputError):
    """The framework cannot run this request (not installed, no such device, preset not
    expressible): bad input, one line, exit 2."""



def canonical_framework(name: str) -> str:
    try:
        return FRAMEWORK_ALIASES[name.lower()]
    except KeyError:
        raise RunnerError(f"unknown framework {name!r}; use torch/pt, mindspore/ms or mmaction2") from None


class Runner(ABC):
    """build(cfg) -> load(arrays) -> forward / forward_intermediates / forward_isolated."""

    name: str = ""

    def __init__(self, device: str = "cpu", threads: Optional[int] = None):
        if device not in ("cpu", "gpu"):
            raise RunnerError(f"unknown device {device!r}; use cpu or gpu")
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self.cfg: Optional[I3DNLConfig] = None

    @abstractmethod
    def build(self, cfg: I3DNLConfig) -> None:
        """Make the network of ``cfg`` (eval mode) on the runner's device."""

    @abstractmethod
    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        """Load canonical arrays, strictly (every key, shape and dtype)."""

    @abstractmethod
    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        """Every canonical layer's output (``logits`` last) for an (N, C, T, H, W) clip."""

    @abstractmethod
    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Each layer run on the *reference's* input to that layer, so that a layer's own
        error shows apart from what it inherits."""

    @abstractmethod
    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        """Canonical layer ``name`` run on its input ``x``, every sub-operation kept, under
        :func:`frameworks.spec.arch.subop_names` (parity's drill-down)."""

    def trainer(self, cfg: I3DNLConfig, recipe, weights: Dict[str, np.ndarray], *, steps_per_epoch: int,
                total_steps: Optional[int] = None, float64: bool = False, return_grads: bool = False,
                world=None, seed: int = 0, sync_bn: bool = False):
        """The framework's trainer (one interface: ``step``, ``apply_gradients``, ``set_state``,
        ``weights``, ``gradients``, ``momentum_buffers``, ``lr_table``, ``probe_*``, ``save``,
        ``load``) for ``recipe`` over a run of ``total_steps`` (default: the recipe's epochs)
        of ``steps_per_epoch``; ``world`` joins the data-parallel processes a launcher
        started (:class:`harness.training.World`)."""
        raise RunnerError(f"{self.name} does not train: training runs our implementations, torch or ms")

    def forward_intermediates_float64(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        """:meth:`forward_intermediates` in float64: only the torch runner can (the noise floor)."""
        raise RunnerError(f"{self.name} cannot run in float64; the noise floor comes from torch")

    @abstractmethod
    def forward(self, clip: np.ndarray) -> np.ndarray:
        """The network's output for a clip (logits, or Caffe2's averaged probabilities)."""

    @abstractmethod
    def sync(self) -> None:
        """Wait for the device: a timer stopped before this measures a queue, not work."""

    def versions(self) -> Dict[str, str]:
        return {"numpy": np.__version__, "python": platform.python_version()}

    def hardware(self) -> Dict[str, str]:
        return {"device": self.device, "cpu": cpu_model(), "threads": str(self.threads)}

    # ------------------------------------------------------------------ timing (harness.bench)
    def timing_step(self, shape, task: str = "infer"):
        """A zero-argument callable running one step on a seeded batch of ``shape`` already
        on the device: ``infer`` a forward pass, ``train`` forward, loss, backward and the
        optimiser. The caller calls :meth:`sync` before it stops a clock."""
        raise RunnerError(f"{self.name} has no timing step for {task!r}")

    def gemm_probe(self) -> Dict[str, float]:
        """GFLOP/s of a square matrix product in the timing dtype, now (``{"gflops": ...}``)."""
        raise RunnerError(f"{self.name} has no GEMM probe")

    def memory(self) -> Dict[str, float]:
        """Peak device memory since :meth:`reset_memory` (MiB; empty on CPU)."""
        return {}

    def reset_memory(self) -> None:
        """Start a new device-memory peak."""

    def flop_count(self, shape) -> Optional[int]:
        """FLOPs of one forward pass by the framework's own counter, where it has one."""
        return None

    def settings(self) -> Dict[str, object]:
        """How the timing runs (dtype, layout, compilation, threads): printed and recorded."""
        return {"threads": self.threads}


def get_runner_class(framework: str) -> Type[Runner]:
    module_name, cls_name = RUNNERS[canonical_framework(framework)].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunnerError(f"framework {framework!r} is not available here ({exc})") from None
    return getattr(module, cls_name)


def runner_options(framework: str, ms_mode: str = "graph") -> dict:
    """A framework's own runner options from the commands' shared ones: ``--ms-mode`` is
    MindSpore's ``mode``; the other runners take none."""
    return {"mode": ms_mode} if framework == "ms" else {}


def make_runner(framework: str, device: str = "cpu", threads: Optional[int] = None, **options) -> Runner:
    """A runner by framework name; ``options`` are the framework's own (``mode`` for MindSpore)."""
    cls = get_runner_class(framework)
    try:
        return cls(device=device, threads=threads, **options)
    except ImportError as exc:
        raise RunnerError(f"framework {framework!r} is not installed ({exc})") from None
    except TypeError as exc:
        raise RunnerError(f"{framework}: {exc}") from None
