"""One way to get a framework's trainer: the framework set up by its runner, the process
group joined when a launcher started several, then :class:`frameworks.torch.train.TorchTrainer`
or :class:`frameworks.mindspore.train.MindSporeTrainer`, which share one interface::

    trainer = make_trainer("ms", cfg, recipe, lrs, weights, ms_mode="graph")
    loss, lr = trainer.step(x, y)          # one SGD step
    trainer.weights(); trainer.gradients(); trainer.momentum_buffers()   # canonical names
    trainer.save(path, meta); trainer.load(path)

Used by ``harness.train`` (the command), ``harness.train_parity`` (in a child process per
framework) and ``harness.train_bench``. Imports a framework only inside
:func:`make_trainer`, after its runner has prepared the process (MindSpore's oneDNN ISA
cap must precede ``import mindspore``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.train import TrainRecipe
from harness.runners import RunnerError, canonical_framework, make_runner, runner_options


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


def world_from_env(framework: str, env=os.environ) -> World:
    """torchrun sets ``RANK``/``WORLD_SIZE``; msrun sets ``RANK_ID``/``RANK_SIZE`` (and
    ``MS_WORKER_NUM``) for each worker it spawns."""
    def number(key: str) -> int:
        try:
            return int(env[key])
        except ValueError:
            raise RunnerError(f"{key}={env[key]!r} is not an integer") from None

    if framework == "torch" and "WORLD_SIZE" in env:
        return World(number("RANK"), number("WORLD_SIZE"), "torchrun")
    if framework == "ms" and ("MS_WORKER_NUM" in env or "RANK_SIZE" in env):
        size = number("MS_WORKER_NUM") if "MS_WORKER_NUM" in env else number("RANK_SIZE")
        rank = number("RANK_ID") if "RANK_ID" in env else 0
        return World(rank, size, "msrun")
    return World()


def make_trainer(framework: str, cfg: I3DNLConfig, recipe: TrainRecipe, lrs: np.ndarray,
                 weights: Dict[str, np.ndarray], *, device: str = "cpu", ms_mode: str = "graph",
                 threads: Optional[int] = None, float64: bool = False, return_grads: bool = False,
                 world: Optional[World] = None, seed: int = 0, sync_bn: bool = False):
    """A trainer for ``framework``, with ``trainer.runner`` (versions, hardware) and
    ``trainer.world`` set."""
    framework = canonical_framework(framework)
    world = world or World()
    if framework == "mmaction2":
        raise RunnerError("training runs our implementations: torch or ms")
    runner = make_runner(framework, device=device, threads=threads, **runner_options(framework, ms_mode))
    try:
        if framework == "torch":
            from frameworks.torch.train import TorchTrainer, join_process_group

            if world.distributed:
                join_process_group(world.size, device)
            trainer = TorchTrainer(cfg, recipe, lrs, weights, device=device, float64=float64,
                                   distributed=world.distributed, rank=world.rank, seed=seed, sync_bn=sync_bn)
        else:
            if float64:
                raise RunnerError("float64 training runs in torch only (it is the float32 noise floor)")
            if sync_bn:
                raise RunnerError("--sync-bn: MindSpore's SyncBatchNorm runs on Ascend only")
            from frameworks.mindspore.train import MindSporeTrainer, join_cluster

            if world.distributed:
                world = World(*join_cluster(), "msrun")
            trainer = MindSporeTrainer(cfg, recipe, lrs, weights, return_grads=return_grads, seed=seed)
    except (ValueError, TypeError) as exc:
        raise RunnerError(f"{framework}: {str(exc).splitlines()[0]}") from None
    trainer.runner = runner
    trainer.world = world
    return trainer
