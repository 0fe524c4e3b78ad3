"""One way to get a framework's trainer: the framework set up by its runner, the process
group joined when a launcher started several, then :class:`frameworks.torch.train.TorchTrainer`
or :class:`frameworks.mindspore.train.MindSporeTrainer`, which share one interface::

    trainer = make_trainer("ms", cfg, recipe, weights, steps_per_epoch=spe, ms_mode="graph")
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
from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.train import TrainRecipe
from harness.runners import RunnerError, World, canonical_framework, make_runner, runner_options


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


def make_trainer(framework: str, cfg: I3DNLConfig, recipe: TrainRecipe, weights: Dict[str, np.ndarray], *,
                 steps_per_epoch: int, total_steps: Optional[int] = None, device: str = "cpu",
                 ms_mode: str = "graph", threads: Optional[int] = None, float64: bool = False,
                 return_grads: bool = False, world: Optional[World] = None, seed: int = 0, sync_bn: bool = False):
    """The framework's trainer (:meth:`harness.runners.Runner.trainer`) for ``recipe``'s
    schedule over ``total_steps`` (default: the recipe's epochs) of ``steps_per_epoch``,
    with ``trainer.runner`` (versions, hardware) and ``trainer.world`` set."""
    framework = canonical_framework(framework)
    runner = make_runner(framework, device=device, threads=threads, **runner_options(framework, ms_mode))
    try:
        trainer = runner.trainer(cfg, recipe, weights, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                 float64=float64, return_grads=return_grads, world=world or World(), seed=seed,
                                 sync_bn=sync_bn)
    except (ValueError, TypeError) as exc:
        raise RunnerError(f"{framework}: {str(exc).splitlines()[0]}") from None
    trainer.runner = runner
    return trainer
