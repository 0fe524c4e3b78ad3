"""The training recipe as data: optimiser, learning rate per step, weight-decay rule, batch.

Both training steps (:mod:`frameworks.torch.train`, :mod:`frameworks.mindspore.train`)
read one :class:`TrainRecipe` and the arrays this module computes from it, so that the
three places where ports of a training step usually go wrong are decided once, here:

* **the learning rate at each step** (:func:`lr_schedule`): the seed's
  ``warmup_cosine_annealing_lr_v1`` (mindvideo ``schedule/lr_schedule.py``): step ``i`` of
  the warm-up gets ``lr * (i + 1) / warmup_steps`` (linear from 0, reaching ``lr`` at the
  last warm-up step); afterwards ``eta_min + (lr - eta_min) * (1 + cos(pi * e / t_max)) / 2``
  with ``e`` the step's epoch (``cosine_granularity="epoch"``, the seed's) or its fraction
  of an epoch since the warm-up ended (``"step"``). The values are rounded to float32
  here, once: a framework's float32 optimiser would round them anyway, and rounding them
  in one place makes them the same number in both.
* **which parameters get weight decay** (:func:`weight_decay_of`): ``no_decay`` lists the
  kinds exempt from it. ``("bn",)`` is the seed's rule: it built ``nn.SGD(
  network.trainable_params(), weight_decay=1e-4)``, and MindSpore's optimisers then skip
  every parameter whose name contains ``beta`` or ``gamma`` (the BN shift and scale) and
  decay all others, biases included. PyTorch's SGD decays everything unless told. Both
  frameworks here are told explicitly, one parameter group per decay value.
* **BN momentum**: ``bn_momentum`` is PyTorch's convention (the weight of the new batch,
  ``running = (1 - m) * running + m * batch``); MindSpore's ``momentum`` is ``1 - m``
  (:mod:`frameworks.mindspore.model` converts). Running variances are updated with the
  unbiased batch variance in both (measured: MindSpore 2.10's ``BatchNorm`` on CPU does
  as PyTorch does).

SGD itself is the same update in both: ``d = g + wd * p``; ``buf = momentum * buf + d``
(``buf = d`` at the first step); ``p -= lr * buf`` (no dampening, no Nesterov).
:func:`initial_weights` gives both frameworks the same starting point when no
checkpoint is given (mmaction2's ResNet3d initialisation, seeded, in numpy).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .arch import I3DNLConfig, lookup, parameter_specs

OPTIMIZERS = ("sgd",)
LR_SCHEDULES = ("warmup_cosine", "constant")
COSINE_GRANULARITIES = ("epoch", "step")
LOSSES = ("cross_entropy",)
BN_MODES = ("train", "frozen")
PARAMETER_KINDS = ("weight", "bias", "bn")
_BN_MODULE = re.compile(r"(?:^|\.)bn\d*$")


@dataclass(frozen=True)
class TrainRecipe:
    """How a network is trained; every field is read by both frameworks.

    ``batch_size`` is the global batch (all data-parallel processes together);
    ``bn_mode="frozen"`` keeps every BN in inference mode (running statistics used, never
    updated; its scale and shift still learn), mmaction2's ``norm_eval=True``.
    """

    name: str = "seed_finetune"
    source: str = ("ZJUT-ERCISS/zjut_mindvideo mindvideo/config/nonlocal/nonlocal.yaml (optimizer, learning_rate, "
                   "loss, train); tools/classification/train.py; dropout 0.5 is model.keep_prob 0.5 of the yaml the "
                   "seed's README prints (the committed nonlocal.yaml says keep_prob 1.0: recipe "
                   "seed_finetune_repo_yaml)")
    optimizer: str = "sgd"
    lr: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_decay: Tuple[str, ...] = ("bn",)
    lr_schedule: str = "warmup_cosine"
    warmup_epochs: float = 1.0
    cosine_t_max_epochs: float = 100.0
    cosine_granularity: str = "epoch"
    eta_min: float = 0.0
    epochs: int = 5
    batch_size: int = 6
    loss: str = "cross_entropy"
    dropout: float = 0.5
    bn_mode: str = "train"
    bn_momentum: float = 0.1
    known_quirks: Tuple[str, ...] = (
        "t_max is 100 epochs while training runs 5: the cosine has fallen to 97.6% of lr at the last epoch",
        "the seed's train epochs was 1 for its published checkpoint (4975 steps): all of it warm-up",
    )

    def __post_init__(self) -> None:
        checks = {"optimizer": (self.optimizer, OPTIMIZERS), "lr_schedule": (self.lr_schedule, LR_SCHEDULES),
                  "cosine_granularity": (self.cosine_granularity, COSINE_GRANULARITIES),
                  "loss": (self.loss, LOSSES), "bn_mode": (self.bn_mode, BN_MODES)}
        for field_name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"recipe {self.name}: {field_name}={value!r} not in {allowed}")
        bad = [k for k in self.no_decay if k not in PARAMETER_KINDS]
        if bad:
            raise ValueError(f"recipe {self.name}: no_decay kinds {bad} not in {PARAMETER_KINDS}")
        for field_name in ("lr", "momentum", "weight_decay", "warmup_epochs", "eta_min", "dropout"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"recipe {self.name}: {field_name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"recipe {self.name}: dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"recipe {self.name}: bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not (math.isfinite(self.cosine_t_max_epochs) and self.cosine_t_max_epochs > 0):
            raise ValueError(f"recipe {self.name}: cosine_t_max_epochs must be > 0, got {self.cosine_t_max_epochs}")
        for field_name in ("epochs", "batch_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"recipe {self.name}: {field_name} must be an integer >= 1, got {value!r}")

    def replace(self, **changes) -> "TrainRecipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainRecipe":
        d = dict(d)
        for key in ("no_decay", "known_quirks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def arch(self, cfg: I3DNLConfig) -> I3DNLConfig:
        """``cfg`` with the recipe's dropout and BN momentum: the graph that is trained."""
        return cfg.replace(dropout=float(self.dropout), bn_momentum=float(self.bn_momentum))


# The seed states its dropout twice, differently: the yaml its README prints has
# ``model.keep_prob: 0.5`` (dropout 0.5, the published checkpoint's recipe as documented),
# the nonlocal.yaml committed in its repository ``keep_prob: 1.0`` (no dropout). Both are
# here, by name; the README's is the default.
RECIPES: Dict[str, TrainRecipe] = {
    "seed_finetune": TrainRecipe(),
    "seed_finetune_repo_yaml": TrainRecipe(
        name="seed_finetune_repo_yaml", dropout=0.0,
        source=("ZJUT-ERCISS/zjut_mindvideo mindvideo/config/nonlocal/nonlocal.yaml as committed (model.keep_prob "
                "1.0: no dropout); everything else as seed_finetune, which follows the yaml the seed's README "
                "prints (keep_prob 0.5)")),
}
DEFAULT_RECIPE = "seed_finetune"


def get_recipe(name: str = DEFAULT_RECIPE, **overrides) -> TrainRecipe:
    return lookup(RECIPES, name, "recipe", overrides)


def recipe_hash(recipe: TrainRecipe) -> str:
    blob = json.dumps(recipe.to_dict(), sort_keys=True, separators=(",", ":"), default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------- the learning rate
def steps_per_epoch(num_videos: int, batch_size: int) -> int:
    """Full global batches in an epoch (the last, partial batch is dropped, so that every
    step, and every data-parallel process, sees the same number of clips)."""
    steps = int(num_videos) // int(batch_size)
    if steps < 1:
        raise ValueError(f"{num_videos} training videos do not fill one batch of {batch_size}")
    return steps


def lr_at(recipe: TrainRecipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based), in float64 before rounding."""
    if recipe.lr_schedule == "constant":
        return float(recipe.lr)
    warmup_steps = int(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return recipe.lr * (step + 1) / warmup_steps
    if recipe.cosine_granularity == "epoch":
        progress = step // steps_per_epoch
    else:
        progress = (step - warmup_steps) / steps_per_epoch
    return recipe.eta_min + (recipe.lr - recipe.eta_min) * (1.0 + math.cos(math.pi * progress
                                                                           / recipe.cosine_t_max_epochs)) / 2.0


def lr_schedule(recipe: TrainRecipe, steps_per_epoch: int, total_steps: Optional[int] = None) -> np.ndarray:
    """float32 ``(total_steps,)``: the learning rate of every step (default: every epoch's)."""
    total = recipe.epochs * steps_per_epoch if total_steps is None else int(total_steps)
    return np.array([lr_at(recipe, i, steps_per_epoch) for i in range(total)], dtype=np.float32)


# --------------------------------------------------------------------- parameters
def parameter_kind(name: str) -> str:
    """``bn`` (a BatchNorm's scale or shift), ``bias`` (a conv's or the classifier's) or ``weight``."""
    module, _, field_name = name.rpartition(".")
    if _BN_MODULE.search(module):
        return "bn"
    return "bias" if field_name == "bias" else "weight"


# parameter families, the unit a training-parity verdict names (in the order a report lists them)
PARAMETER_FAMILIES = ("conv", "nonlocal", "fc", "bias", "bn", "bn_stat")


def parameter_family(name: str) -> str:
    """``conv`` (a backbone convolution's kernel), ``nonlocal`` (a non-local block's
    theta / phi / g / out kernel), ``fc`` (the classifier's weight), ``bias`` (any bias),
    ``bn`` (a BatchNorm's scale or shift) or ``bn_stat`` (its running mean or variance)."""
    if is_running_statistic(name):
        return "bn_stat"
    kind = parameter_kind(name)
    if kind != "weight":
        return kind
    module = name.rpartition(".")[0]
    if module == "head.fc":
        return "fc"
    return "nonlocal" if ".non_local." in f".{module}." else "conv"


def is_running_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


def trainable_names(cfg: I3DNLConfig):
    """Canonical names of the parameters an optimiser updates, in build order."""
    return [n for n in parameter_specs(cfg) if not is_running_statistic(n)]


def weight_decay_of(recipe: TrainRecipe, name: str) -> float:
    """The weight decay of parameter ``name`` under the recipe's rule."""
    return 0.0 if parameter_kind(name) in recipe.no_decay else float(recipe.weight_decay)


def decay_groups(recipe: TrainRecipe, cfg: I3DNLConfig) -> Dict[float, list]:
    """``{weight decay: [canonical names]}``, each list in build order; the groups both
    frameworks build their optimiser from."""
    groups: Dict[float, list] = {}
    for name in trainable_names(cfg):
        groups.setdefault(weight_decay_of(recipe, name), []).append(name)
    return groups


# --------------------------------------------------------------------- initial weights
def initial_weights(cfg: I3DNLConfig, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded weights to train from when no checkpoint is given, as mmaction2's ResNet3d
    initialises them: convs He-normal (fan out), the classifier and the non-local block's
    theta, phi and g N(0, 0.01), biases 0, BN
    scale 1 and shift 0, except ``zero_init_residual`` (each block's last BN scale 0) and
    the non-local block's ``zeros_init`` (its output BN scale 0), so every block starts as
    the identity. Running statistics: mean 0, variance 1. float32, canonical names."""
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    for name, shape in parameter_specs(cfg).items():
        module, _, field_name = name.rpartition(".")
        if _BN_MODULE.search(module):
            zero = module.endswith(("bn3", "non_local.bn"))
            value = {"weight": 0.0 if zero else 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}[field_name]
            out[name] = np.full(shape, value, dtype=np.float32)
        elif field_name == "bias":
            out[name] = np.zeros(shape, dtype=np.float32)
        elif module == "head.fc" or module.endswith(("non_local.theta", "non_local.phi", "non_local.g")):
            out[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_out = shape[0] * int(np.prod(shape[2:]))
            out[name] = (rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(np.float32)
    return out


def parity_weights(cfg: I3DNLConfig, seed: int = 0) -> Dict[str, np.ndarray]:
    """:func:`initial_weights` made to test every parameter of a training step: each block's
    last BN and the non-local output BN get a scale in U[0.1, 0.3] (mmaction2's 0 would
    leave every convolution inside a block without a gradient at step 1), the other BN
    scales U[0.5, 1.5] and shifts N(0, 0.1), conv biases N(0, 0.01), and the running
    statistics mean N(0, 0.1), variance U[0.5, 1.5] (so that an update with the wrong
    momentum moves them visibly).

    (The forward parity's seeded weights are calibrated for inference; in training mode a
    small clip leaves BN a handful of positions per channel at res5, and with them torch
    float32 and float64 gradients differed by 3e-4 of their scale after one step, against
    1e-5 with these, at batch 2 x 3x8x64x64.)
    """
    out = initial_weights(cfg, seed)
    rng = np.random.default_rng([seed, 1])
    for name, value in out.items():
        module, _, field_name = name.rpartition(".")
        if _BN_MODULE.search(module):
            if field_name == "weight":
                low, high = (0.1, 0.3) if module.endswith(("bn3", "non_local.bn")) else (0.5, 1.5)
                new = rng.uniform(low, high, value.shape)
            elif field_name == "bias":
                new = 0.1 * rng.standard_normal(value.shape)
            elif field_name == "running_mean":
                new = 0.1 * rng.standard_normal(value.shape)
            else:
                new = rng.uniform(0.5, 1.5, value.shape)
            out[name] = new.astype(np.float32)
        elif field_name == "bias":
            out[name] = (0.01 * rng.standard_normal(value.shape)).astype(np.float32)
    return out


# --------------------------------------------------------------------- the optimiser, exactly
def sgd_reference(params: Dict[str, np.ndarray], grads: list, lrs, recipe: TrainRecipe,
                  decay: Dict[str, float]) -> list:
    """The recipe's SGD in float64, the oracle both frameworks' optimisers are held to: for
    each step ``k`` (``grads[k]``: ``{name: gradient}``, ``lrs[k]``), per parameter::

        d = g + wd * p          (wd = decay[name])
        buf = d                 (first step)      buf = momentum * buf + d   (later steps)
        p = p - lr * buf

    (no dampening, no Nesterov: torch.optim.SGD and mindspore.nn.SGD as both trainers
    configure them). Returns, per step, ``{name: (p, buf)}`` after the step."""
    p = {n: np.asarray(v, dtype=np.float64) for n, v in params.items()}
    buf: Dict[str, np.ndarray] = {}
    out = []
    for k, g_k in enumerate(grads):
        lr = float(lrs[k])
        for n in p:
            d = np.asarray(g_k[n], dtype=np.float64) + float(decay[n]) * p[n]
            buf[n] = d if n not in buf else float(recipe.momentum) * buf[n] + d
            p[n] = p[n] - lr * buf[n]
        out.append({n: (p[n].copy(), buf[n].copy()) for n in p})
    return out
