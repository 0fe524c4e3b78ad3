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
from typing import Dict, List, Optional, Tuple, Type

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.errors import InputError
from harness.provenance import cpu_model

# framework -> "module:class", imported on first use (einops' lazy backends). A runner
# module imports its framework only inside its methods, so importing it to read its names
# and abilities (:func:`runner_class`) is cheap. Adding a framework is one line here, one
# runner module and its tests.
RUNNERS: Dict[str, str] = {
    "torch": "harness.runners.torch_runner:TorchRunner",
    "ms": "harness.runners.mindspore_runner:MindSporeRunner",
    "mmaction2": "harness.runners.mmaction2_runner:MMAction2Runner",
    "onnx": "harness.runners.onnx_runner:OnnxRunner",
}
# the runner that makes the project's seeded weights (calibrated on a clip), and the one that
# runs in float64 (every float32 noise floor)
SEEDED_BY = FLOAT64_BY = "torch"
ORACLE = "mmaction2"   # the other program's model parity compares with (the tests' oracle)


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



def runner_class(name: str) -> Type["Runner"]:
    """The runner class of a framework, by its name or an alias (imports the runner module,
    not the framework)."""
    key = str(name).lower()
    for canonical in RUNNERS:
        cls = _load(canonical)
        if key == canonical or key in cls.aliases:
            return cls
    names = ", ".join(f"{n}" + (f"/{'/'.join(_load(n).aliases)}" if _load(n).aliases else "") for n in RUNNERS)
    raise RunnerError(f"unknown framework {name!r}; use {names}")


def _load(canonical: str) -> Type["Runner"]:
    module_name, cls_name = RUNNERS[canonical].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def canonical_framework(name: str) -> str:
    return runner_class(name).name


def framework_title(name) -> str:
    """``PyTorch`` for ``torch``; a name no runner knows is returned as it is."""
    try:
        return runner_class(str(name)).title or str(name)
    except RunnerError:
        return str(name)


def able(ability: str) -> List[str]:
    """The frameworks with an ability (a :class:`Runner` attribute: ``trains``, ``evaluates``,
    ``explains``, ``float64``)."""
    return [n for n in RUNNERS if getattr(_load(n), ability)]


def names_help(ability: Optional[str] = None) -> str:
    """The frameworks a user may name (with an ``ability``), aliases included, for a ``--help``:
    ``torch/pt/pytorch, ms/mindspore, onnx/onnxruntime/ort``."""
    names = able(ability) if ability else list(RUNNERS)
    return ", ".join("/".join((n, *_load(n).aliases)) for n in names)


def require(framework: str, ability: str, doing: str) -> str:
    """``framework``'s canonical name if its runner has ``ability``; else one line naming the
    frameworks that have it (``evaluate runs on torch or ms; mmaction2 does not evaluates``)."""
    cls = runner_class(framework)
    if not getattr(cls, ability):
        names = able(ability)
        choices = ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]
        raise RunnerError(f"{doing} runs on {choices} (--framework {'/'.join(names)}); {cls.name} "
                          f"{ABILITY_WORDS.get(ability, 'cannot')}")
    return cls.name


ABILITY_WORDS = {"trains": "has no trainer", "evaluates": "is the oracle parity compares with",
                 "explains": "runs no layer alone", "float64": "runs in float32 only"}


def is_framework(name: str) -> bool:
    """Whether ``name`` is a framework's name or alias (a plug-in candidate may not take one)."""
    try:
        runner_class(name)
        return True
    except RunnerError:
        return False


class Runner(ABC):
    """build(cfg) -> load(arrays) -> forward / forward_intermediates / forward_isolated.

    What a command needs to know about a framework is here, as class attributes and class
    methods (read without importing the framework), never as a comparison of its name:
    """

    name: str = ""                          # canonical name, e.g. "torch"
    aliases: Tuple[str, ...] = ()           # other names a user may type ("pt", "pytorch")
    title: str = ""                         # for tables and plots ("PyTorch")
    evaluates: bool = True                  # runs evaluate, infer and drift (not the oracle, mmaction2)
    trains: bool = False                    # has a trainer: harness.train, parity --train-steps
    float64: bool = False                   # runs in float64 (the noise floor; the training judge)
    explains: bool = False                  # runs a layer alone and its sub-operations (parity's drill-down)
    checkpoint_suffix: Optional[str] = None   # the extension of what its trainer saves
    decodes_beside: bool = True             # may decode video in its own process (MindSpore may not:
                                            # it aborts if decord was imported first)

    @classmethod
    def prepare_process(cls) -> Dict[str, str]:
        """What must happen in a process before the framework is imported (MindSpore: cap
        oneDNN's ISA); returns what was decided, for the record."""
        return {}

    @classmethod
    def arguments(cls) -> Tuple[Tuple[Tuple[str, ...], dict], ...]:
        """The command-line options this framework owns, as ``((flags...), add_argument
        keywords)``: every command that runs a framework offers them (:func:`add_runner_arguments`),
        MindSpore's ``--ms-mode`` for one."""
        return ()

    @classmethod
    def options_from(cls, settings: Optional[dict] = None) -> dict:
        """The runner's keyword arguments from a command's runner settings (the values of every
        runner's :meth:`arguments`, by ``dest``; :func:`runner_settings`)."""
        return {}

    @classmethod
    def world_from_env(cls, env) -> Optional["World"]:
        """This process's place if a launcher of this framework started it (torchrun, msrun)."""
        return None

    @classmethod
    def deterministic_env(cls) -> Dict[str, str]:
        """Environment that makes this framework's kernels repeatable run to run."""
        return {}

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
        started (:class:`World`)."""
        raise RunnerError(f"{self.name} does not train: training runs our implementations, torch or ms")

    def seeded_weights(self, cfg: I3DNLConfig, clip: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
        """The project's seeded random weights, BN statistics calibrated on ``clip``."""
        raise RunnerError(f"seeded weights are made by the {SEEDED_BY} runner, not {self.name}")

    def run_plugin(self, target: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray],
                   clip: np.ndarray) -> Dict[str, np.ndarray]:
        """A user's own network (``module:function``, :mod:`harness.runners.plugin`) on ``clip``:
        its hooked layers and ``logits``."""
        raise RunnerError(f"{self.name} runs no plug-in network")

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
    return runner_class(framework)


def runner_options(framework: str, settings: Optional[dict] = None) -> dict:
    """A framework's runner keyword arguments from a command's runner settings
    (:meth:`Runner.options_from`; ``None``: every default)."""
    return runner_class(framework).options_from(settings or {})


def _arguments(ability: Optional[str] = None):
    seen = set()
    for name in RUNNERS:
        if ability and not getattr(_load(name), ability):
            continue
        for flags, keywords in _load(name).arguments():
            if flags not in seen:
                seen.add(flags)
                yield flags, keywords


def add_runner_arguments(parser, ability: Optional[str] = None) -> None:
    """Every framework's own options (:meth:`Runner.arguments`) on a command's parser or group;
    with ``ability`` (``"trains"``), only those of the frameworks that have it."""
    for flags, keywords in _arguments(ability):
        parser.add_argument(*flags, **keywords)


def runner_settings(args) -> dict:
    """The values of every framework's own options from parsed ``args`` (defaults where a
    command does not offer them), by ``dest``: what a request carries to its runners."""
    out = {}
    for flags, keywords in _arguments():
        dest = keywords.get("dest") or flags[0].lstrip("-").replace("-", "_")
        out[dest] = getattr(args, dest, keywords.get("default"))
    return out


def runner_argv(settings: dict) -> List[str]:
    """``settings`` as command-line options again (for a command that starts another)."""
    argv = []
    for flags, keywords in _arguments():
        dest = keywords.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if settings.get(dest) is not None:
            argv += [flags[0], str(settings[dest])]
    return argv


def make_runner(framework: str, device: str = "cpu", threads: Optional[int] = None, **options) -> Runner:
    """A runner by framework name; ``options`` are the framework's own (``mode`` for MindSpore)."""
    cls = get_runner_class(framework)
    try:
        return cls(device=device, threads=threads, **options)
    except ImportError as exc:
        raise RunnerError(f"framework {framework!r} is not installed ({exc})") from None
    except TypeError as exc:
        raise RunnerError(f"{framework}: {exc}") from None


def env_int(env, key: str) -> int:
    """An integer a launcher put in the environment; anything else is one line, exit 2."""
    try:
        return int(env[key])
    except ValueError:
        raise RunnerError(f"{key}={env[key]!r} is not an integer") from None


def world_from_env(framework: str, env=None) -> World:
    """This process's place among the processes the framework's launcher started (one process: rank 0 of 1)."""
    return runner_class(framework).world_from_env(os.environ if env is None else env) or World()


def make_trainer(framework: str, cfg: I3DNLConfig, recipe, weights: Dict[str, np.ndarray], *, steps_per_epoch: int,
                 total_steps: Optional[int] = None, device: str = "cpu", settings: Optional[dict] = None,
                 threads: Optional[int] = None, float64: bool = False, return_grads: bool = False,
                 world: Optional[World] = None, seed: int = 0, sync_bn: bool = False):
    """A framework's trainer (:meth:`Runner.trainer`), its process prepared by its runner (MindSpore's
    oneDNN cap precedes ``import mindspore``), with ``trainer.runner`` (versions, hardware) and
    ``trainer.world`` set::

        trainer = make_trainer("ms", cfg, recipe, weights, steps_per_epoch=spe)
        loss, lr = trainer.step(x, y)          # one SGD step
        trainer.weights(); trainer.gradients(); trainer.momentum_buffers()   # canonical names
        trainer.save(path, meta); trainer.load(path)
    """
    runner = make_runner(framework, device=device, threads=threads, **runner_options(framework, settings))
    try:
        trainer = runner.trainer(cfg, recipe, weights, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                 float64=float64, return_grads=return_grads, world=world or World(), seed=seed,
                                 sync_bn=sync_bn)
    except (ValueError, TypeError) as exc:
        raise RunnerError(f"{runner.name}: {str(exc).splitlines()[0]}") from None
    trainer.runner = runner
    return trainer
