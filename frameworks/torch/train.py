"""One training step of the I3D-NL network in PyTorch, as :mod:`frameworks.spec.train` says.

The recipe's rules, made explicit here (PyTorch's defaults would differ):

* weight decay: one ``SGD`` parameter group per decay value of
  :func:`frameworks.spec.train.decay_groups` (PyTorch would decay every parameter);
* learning rate: the spec's float32 array (:func:`frameworks.spec.train.lr_schedule` of the
  recipe and the run's steps per epoch), one value per step, written into every group
  before the step (no ``lr_scheduler``: its ``last_epoch`` bookkeeping is a classic
  off-by-one);
* loss: ``nn.CrossEntropyLoss()`` (mean over the batch, no label smoothing);
* BN momentum: the recipe's, PyTorch's convention, through the model's config;
  ``bn_mode="frozen"`` puts every BN in eval mode after ``model.train()``;
* dropout masks: the global generator is re-seeded from ``(seed, rank, step)`` before each
  step, so a resumed run draws the masks an uninterrupted one drew.

For training parity (:mod:`harness.runners.training`), the trainer also applies given
gradients (``apply_gradients``: the optimiser in isolation), starts a step from given
weights (``set_state``), and lets its loss, first BatchNorm and dropout be measured alone
(``probe_loss``, ``probe_bn``, ``probe_dropout``).

Checkpoints are ``torch.save({"state_dict", "optimizer", "meta"})``: the layout mmengine
writes, so the weights load anywhere a ``.pth`` does (the optimiser state is skipped by
the weight readers) and ``load`` restores the momentum buffers exactly.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.train import TrainRecipe, decay_groups, lr_schedule

from .model import I3DNL
from .weights import load_canonical, to_canonical


def join_process_group(world_size: int, device: str) -> None:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "gpu" else "gloo")
    if dist.get_world_size() != world_size:
        raise ValueError(f"torch.distributed has {dist.get_world_size()} processes, WORLD_SIZE says {world_size}")


def step_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of one step of one process (stable across runs and resumes)."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step)) % (2 ** 63)


class TorchTrainer:
    """The network, its SGD optimiser and the step counter; ``step(x, y)`` trains once."""

    framework = "torch"

    def __init__(self, cfg: I3DNLConfig, recipe: TrainRecipe, weights: Dict[str, np.ndarray], *,
                 steps_per_epoch: int, total_steps: Optional[int] = None, device: str = "cpu",
                 float64: bool = False, distributed: bool = False, rank: int = 0, seed: int = 0,
                 sync_bn: bool = False):
        self.cfg = recipe.arch(cfg)
        self.recipe = recipe
        self.lrs = lr_schedule(recipe, steps_per_epoch, total_steps)
        self.seed, self.rank = int(seed), int(rank)
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        self.dtype = torch.float64 if float64 else torch.float32
        model = I3DNL(self.cfg)
        load_canonical(model, weights, self.cfg)
        if sync_bn:
            if self.dev.type != "cuda":
                raise ValueError("--sync-bn: torch's SyncBatchNorm runs on GPUs only "
                                 "(on CPU it raises 'SyncBatchNorm expected input tensor to be on GPU')")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device=self.dev, dtype=self.dtype)
        self.net: nn.Module = self.model
        self.distributed = distributed
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.dev.index] if self.dev.type == "cuda"
                                               else None)
        params = dict(self.model.named_parameters())
        self.group_names: List[List[str]] = []
        groups = []
        for decay, names in decay_groups(recipe, self.cfg).items():
            self.group_names.append(names)
            groups.append({"params": [params[n] for n in names], "weight_decay": decay})
        self.optimizer = torch.optim.SGD(groups, lr=float(self.lrs[0]) if len(self.lrs) else recipe.lr,
                                         momentum=recipe.momentum, dampening=0.0, nesterov=False)
        self.criterion = nn.CrossEntropyLoss()
        self.step_index = 0
        self.train_mode()

    # ------------------------------------------------------------------ modes
    def train_mode(self) -> None:
        self.model.train()
        if self.recipe.bn_mode == "frozen":
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device=self.dev, dtype=self.dtype)

    # ------------------------------------------------------------------ one step
    def lr(self, step: Optional[int] = None) -> float:
        step = self.step_index if step is None else step
        if step >= len(self.lrs):
            raise IndexError(f"step {step} is past the schedule's {len(self.lrs)} steps")
        return float(self.lrs[step])

    def step(self, x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
        """One SGD step on a batch; returns (loss, the learning rate the step used)."""
        torch.manual_seed(step_seed(self.seed, self.rank, self.step_index))
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(self.tensor(x))
        loss = self.criterion(logits, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.dev))
        loss.backward()
        lr = self._update()
        value = loss.detach()
        if self.distributed:   # the global batch's loss, as one process would report it
            torch.distributed.all_reduce(value)
            value = value / torch.distributed.get_world_size()
        return float(value), lr

    def _update(self) -> float:
        """The optimiser's step with this step's learning rate, on the gradients in ``.grad``."""
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step_index += 1
        return float(self.optimizer.param_groups[0]["lr"])

    def apply_gradients(self, grads: Dict[str, np.ndarray]) -> float:
        """The optimiser alone: one step on the given gradients (canonical names, every
        trainable parameter); returns the learning rate it used."""
        params = dict(self.model.named_parameters())
        missing = [n for n in params if n not in grads]
        if missing:
            raise ValueError(f"no gradient given for {missing[0]} (and {len(missing) - 1} more)")
        for name, p in params.items():
            p.grad = torch.from_numpy(np.ascontiguousarray(grads[name])).to(device=self.dev, dtype=self.dtype)
        return self._update()

    def set_state(self, arrays: Dict[str, np.ndarray]) -> None:
        """Weights and BN statistics from canonical arrays, in place (the optimiser keeps its
        state): the start of an isolated step."""
        load_canonical(self.model, arrays, self.cfg)

    def lr_table(self) -> np.ndarray:
        """The learning rate of every step of the run, as the trainer will apply it."""
        return np.asarray(self.lrs, dtype=np.float32).copy()

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ state, canonical names
    def weights(self) -> Dict[str, np.ndarray]:
        return to_canonical(self.model)

    def gradients(self) -> Dict[str, np.ndarray]:
        """The last step's gradient of every trainable parameter (before weight decay)."""
        return {n: p.grad.detach().cpu().numpy().copy() for n, p in self.model.named_parameters()
                if p.grad is not None}

    def momentum_buffers(self) -> Dict[str, np.ndarray]:
        out = {}
        for n, p in self.model.named_parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[n] = buf.detach().cpu().numpy().copy()
        return out

    # ------------------------------------------------------------------ components, measured alone
    def probe_loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """The trainer's loss of given logits and labels."""
        with torch.no_grad():
            return float(self.criterion(self.tensor(logits), torch.from_numpy(np.asarray(labels, dtype=np.int64))
                                        .to(self.dev)))

    def probe_bn(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """The network's first BatchNorm (``stem.bn``) on ``x``: its training-mode output and
        running statistics after that one batch, then its inference-mode output; the module
        is left as it was."""
        bn = self.model.stem.bn
        saved = {k: v.detach().clone() for k, v in bn.state_dict().items()}
        was_training = bn.training
        try:
            with torch.no_grad():
                bn.train()
                out = {"train_output": bn(self.tensor(x))}
                out.update(running_mean=bn.running_mean.clone(), running_var=bn.running_var.clone())
                bn.eval()
                out["eval_output"] = bn(self.tensor(x))
            return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.items()}
        finally:
            bn.load_state_dict(saved)
            bn.train(was_training)

    def probe_dropout(self, n: int) -> np.ndarray:
        """The classifier's dropout, in training mode, applied to ``n`` ones."""
        dropout = self.model.head.dropout
        was_training = dropout.training
        try:
            dropout.train()
            with torch.no_grad():
                return dropout(torch.ones(n, dtype=self.dtype, device=self.dev)).cpu().numpy().astype(np.float64)
        finally:
            dropout.train(was_training)

    # ------------------------------------------------------------------ checkpoints
    def bn_momentum(self) -> dict:
        """The BN momentum as PyTorch holds it, and the weight of the new batch it implies."""
        values = sorted({m.momentum for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
        return {"constructor": values, "new_batch_weight": values,
                "convention": "PyTorch: running = (1 - m) * running + m * batch"}

    def save(self, path: str, meta: dict) -> None:
        """Weights, optimiser state and ``meta`` (plain data), written atomically."""
        from harness.files import atomic_path

        state = {"state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "optimizer": self.optimizer.state_dict(),
                 "meta": dict(meta, step=self.step_index)}
        with atomic_path(path, suffix=".pth") as tmp:
            torch.save(state, tmp)

    def load(self, path: str) -> dict:
        """Restore a checkpoint written by :meth:`save`; returns its ``meta``."""
        state = torch.load(path, map_location=self.dev, weights_only=True)
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        meta = state.get("meta") or {}
        self.step_index = int(meta["step"])
        self.train_mode()
        return meta
