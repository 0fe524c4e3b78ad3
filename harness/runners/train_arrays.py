"""How training parity's arrays are named in the files its processes exchange: the states a
reference saves before each step (``trajectory/state<k>/<name>``) and each step's loss,
gradients and BN statistics (``<prefix>/loss``, ``<prefix>/grad/<name>``, ``<prefix>/stat/<name>``)."""
from __future__ import annotations

from typing import Dict

import numpy as np

from frameworks.spec.arch import I3DNLConfig, parameter_specs
from frameworks.spec.train import is_running_statistic


def state_before(states: Dict[str, np.ndarray], start: Dict[str, np.ndarray], k: int) -> Dict[str, np.ndarray]:
    """The reference's weights and BN statistics before step ``k + 1`` (0-based ``k``)."""
    if k == 0:
        return start
    prefix = f"trajectory/state{k}/"
    return {n[len(prefix):]: states[n] for n in states.keys() if n.startswith(prefix)}   # only this state read


def save_step(prefix: str, trainer, loss: float) -> Dict[str, np.ndarray]:
    """A step's loss, every gradient and the BN statistics after it."""
    out = {f"{prefix}/loss": np.array(loss)}
    out.update({f"{prefix}/grad/{n}": v for n, v in trainer.gradients().items()})
    out.update({f"{prefix}/stat/{n}": v for n, v in trainer.weights().items() if is_running_statistic(n)})
    return out


def step_arrays(arrays: Dict[str, np.ndarray], prefix: str, cfg: I3DNLConfig) -> dict:
    """``{"loss", "grad": {name: array}, "stat": {name: array}}`` of one step saved by
    :func:`save_step` under ``prefix``."""
    names = parameter_specs(cfg)
    return {"loss": float(arrays[f"{prefix}/loss"]),
            "grad": {n: arrays[f"{prefix}/grad/{n}"] for n in names if not is_running_statistic(n)},
            "stat": {n: arrays[f"{prefix}/stat/{n}"] for n in names if is_running_statistic(n)}}


# a warm child's trainers, kept between its train_time requests: (runner, recipe, schedule length) ->
# (trainer, build seconds, peak RSS bytes right after the build)
_KEPT: Dict[tuple, tuple] = {}
