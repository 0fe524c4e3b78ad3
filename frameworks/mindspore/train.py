"""One training step of the I3D-NL network in MindSpore, as :mod:`frameworks.spec.train` says.

MindSpore's defaults differ from the recipe's rules in three places, and each is made
explicit here:

* weight decay: ``nn.SGD(params, weight_decay=wd)`` would skip every parameter whose name
  contains ``beta`` or ``gamma`` and decay all others (the seed's behaviour, by accident
  of naming); here the optimiser gets one parameter group per decay value of
  :func:`frameworks.spec.train.decay_groups`, and MindSpore then applies exactly those;
* learning rate: the spec's float32 array (:func:`frameworks.spec.train.lr_schedule` of the
  recipe and the run's steps per epoch) is the optimiser's dynamic learning rate
  (``learning_rate=Tensor(lrs)``); step ``i`` reads ``lrs[global_step]`` and the
  optimiser's ``global_step`` travels in the checkpoint, so a resumed run continues it;
* BN momentum: MindSpore's is ``1 - PyTorch's``; the model converts the recipe's
  (PyTorch-convention) value. ``bn_mode="frozen"`` sets every BN cell to inference after
  the network is set to training.

The step (:class:`TrainStep`) is one Cell: ``value_and_grad`` of the loss with respect to
the optimiser's parameters, the data-parallel gradient mean when the parallel context asks
for it (``msrun``; ``DistributedGradReducer``), then the optimiser. It compiles to one graph
in GRAPH_MODE and runs op by op in PYNATIVE_MODE.

For training parity (:mod:`harness.runners.training`), the trainer also applies given
gradients (``apply_gradients``: the optimiser in isolation), starts a step from given
weights (``set_state``), and lets its loss, first BatchNorm and dropout be measured alone
(``probe_loss``, ``probe_bn``, ``probe_dropout``).

Checkpoints are ``save_checkpoint`` of that Cell: the weights, the optimiser's ``accum.*``
(momentum buffers) and ``stat.*``, ``global_step``, ``learning_rate``, ``momentum``, and
``epoch_num`` / ``step_num``, the layout of the seed's ``ModelCheckpoint`` files, which the
weight readers import (ignoring the optimiser's entries).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.naming import mindspore_names
from frameworks.spec.train import TrainRecipe, decay_groups, lr_schedule

from .model import build_model
from .weights import load_canonical, to_canonical


def data_parallel() -> bool:
    """Whether the parallel context asks for data-parallel gradient averaging."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    return mode in (ms.ParallelMode.DATA_PARALLEL, ms.ParallelMode.HYBRID_PARALLEL)


def join_cluster() -> Tuple[int, int]:
    """MindSpore data parallel: ``init()`` (the cluster msrun built; on CPU its own collective
    library) and the data-parallel context with gradient mean. Returns (rank, size)."""
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except RuntimeError as exc:
        raise ValueError(f"MindSpore could not join the msrun cluster ({str(exc).splitlines()[0]})") from None
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=get_group_size())
    return get_rank(), get_group_size()


class TrainStep(nn.Cell):
    """``construct(x, y)`` -> ``loss`` (and the gradients with ``return_grads``), after one
    optimiser step; the loss is the mean softmax cross entropy over the batch."""

    def __init__(self, net: nn.Cell, criterion: nn.Cell, optimizer: nn.Optimizer, return_grads: bool = False):
        super().__init__(auto_prefix=False)
        self.network = nn.WithLossCell(net, criterion)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.value_and_grad = ops.value_and_grad(self.network, None, self.weights)
        self.return_grads = return_grads
        self.reduce = data_parallel()
        if self.reduce:
            from mindspore.communication import get_group_size

            self.grad_reducer = nn.DistributedGradReducer(self.weights, True, get_group_size())
            self.loss_sum = ops.AllReduce()
            self.group_size = float(get_group_size())

    def construct(self, x, y):
        loss, grads = self.value_and_grad(x, y)
        if self.reduce:
            grads = self.grad_reducer(grads)
            loss = self.loss_sum(loss) / self.group_size   # the global batch's loss
        loss = ops.depend(loss, self.optimizer(grads))
        if self.return_grads:
            return loss, grads
        return loss


class MindSporeTrainer:
    """The network, its SGD optimiser and the compiled step; ``step(x, y)`` trains once.

    Set the execution mode, device and (for data parallel) the parallel context before
    building one (the MindSpore runner does the first two).
    """

    framework = "ms"

    def __init__(self, cfg: I3DNLConfig, recipe: TrainRecipe, weights: Dict[str, np.ndarray], *,
                 steps_per_epoch: int, total_steps: Optional[int] = None, return_grads: bool = False,
                 seed: int = 0):
        self.cfg = recipe.arch(cfg)
        self.recipe = recipe
        self.lrs = lr_schedule(recipe, steps_per_epoch, total_steps)
        ms.set_seed(int(seed))   # dropout masks (MindSpore's generator: not re-drawn identically on resume)
        self.net = build_model(self.cfg)
        load_canonical(self.net, weights, self.cfg)
        self.ms_names = mindspore_names(self.cfg)              # MindSpore name -> canonical
        by_canonical = {c: m for m, c in self.ms_names.items()}
        params = {p.name: p for p in self.net.trainable_params()}
        groups = []
        for decay, names in decay_groups(recipe, self.cfg).items():
            groups.append({"params": [params[by_canonical[n]] for n in names], "weight_decay": float(decay)})
        self.optimizer = nn.SGD(groups, learning_rate=ms.Tensor(self.lrs), momentum=float(recipe.momentum),
                                dampening=0.0, nesterov=False)
        self.criterion = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        self.train_step = TrainStep(self.net, self.criterion, self.optimizer, return_grads=return_grads)
        self.step_index = 0
        self._grads: Optional[tuple] = None
        self.train_mode()

    # ------------------------------------------------------------------ modes
    def train_mode(self) -> None:
        self.train_step.set_train(True)
        if self.recipe.bn_mode == "frozen":
            for _, cell in self.net.cells_and_names():
                if isinstance(cell, (nn.BatchNorm3d, nn.BatchNorm2d)):
                    cell.set_train(False)

    # ------------------------------------------------------------------ one step
    def lr(self, step: Optional[int] = None) -> float:
        """The learning rate the optimiser reads for ``step`` (default: the next step)."""
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0]) if step is None else step
        table = self.optimizer.learning_rate.learning_rate.asnumpy()   # _IteratorLearningRate's Parameter
        if step >= len(table):
            raise IndexError(f"step {step} is past the schedule's {len(table)} steps")
        return float(table[step])

    def step(self, x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
        """One SGD step on a batch; returns (loss, the learning rate the step used)."""
        lr = self.lr()
        out = self.train_step(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)),
                              ms.Tensor(np.asarray(y, dtype=np.int32)))
        if self.train_step.return_grads:
            loss, self._grads = out
        else:
            loss = out
        self.step_index += 1
        return float(loss.asnumpy()), lr

    def apply_gradients(self, grads: Dict[str, np.ndarray]) -> float:
        """The optimiser alone: one step on the given gradients (canonical names, every
        trainable parameter); returns the learning rate it used."""
        missing = [self.ms_names[p.name] for p in self.optimizer.parameters if self.ms_names[p.name] not in grads]
        if missing:
            raise ValueError(f"no gradient given for {missing[0]} (and {len(missing) - 1} more)")
        lr = self.lr()
        self.optimizer(tuple(ms.Tensor(np.ascontiguousarray(grads[self.ms_names[p.name]], dtype=np.float32))
                             for p in self.optimizer.parameters))
        self.step_index += 1
        return lr

    def set_state(self, arrays: Dict[str, np.ndarray]) -> None:
        """Weights and BN statistics from canonical arrays, in place (the optimiser keeps its
        state): the start of an isolated step."""
        load_canonical(self.net, arrays, self.cfg)

    def lr_table(self) -> np.ndarray:
        """The learning rate of every step of the run, as the optimiser holds it."""
        return self.optimizer.learning_rate.learning_rate.asnumpy().astype(np.float32).copy()

    # ------------------------------------------------------------------ components, measured alone
    def probe_loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """The trainer's loss of given logits and labels."""
        return float(self.criterion(ms.Tensor(np.ascontiguousarray(logits, dtype=np.float32)),
                                    ms.Tensor(np.asarray(labels, dtype=np.int32))).asnumpy())

    def probe_bn(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        """The network's first BatchNorm (``stem.bn``) on ``x``: its training-mode output and
        running statistics after that one batch, then its inference-mode output; the cell
        is left as it was."""
        bn = self.net.stem.bn
        params = list(bn.get_parameters())
        saved = [p.asnumpy().copy() for p in params]
        was_training = bn.training
        stats = {p.name.rpartition(".")[2]: p for p in params}
        try:
            bn.set_train(True)
            out = {"train_output": bn(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))).asnumpy()}
            out.update(running_mean=stats["moving_mean"].asnumpy().copy(),
                       running_var=stats["moving_variance"].asnumpy().copy())
            bn.set_train(False)
            out["eval_output"] = bn(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))).asnumpy()
            return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
        finally:
            for p, value in zip(params, saved):
                p.set_data(ms.Tensor(value))
            bn.set_train(was_training)

    def probe_dropout(self, n: int) -> np.ndarray:
        """The classifier's dropout, in training mode, applied to ``n`` ones."""
        head = self.net.head
        if not head.has_dropout:
            return np.ones(n)
        was_training = head.dropout.training
        try:
            head.dropout.set_train(True)
            return head.dropout(ms.Tensor(np.ones(n, dtype=np.float32))).asnumpy().astype(np.float64)
        finally:
            head.dropout.set_train(was_training)

    def sync(self) -> None:
        synchronize = getattr(getattr(ms, "runtime", None), "synchronize", None)
        if synchronize is not None:
            synchronize()

    # ------------------------------------------------------------------ state, canonical names
    def weights(self) -> Dict[str, np.ndarray]:
        return to_canonical(self.net, self.cfg)

    def gradients(self) -> Dict[str, np.ndarray]:
        """The last step's gradient of every trainable parameter (before weight decay);
        build with ``return_grads=True``."""
        if self._grads is None:
            raise RuntimeError("no gradients kept: build the trainer with return_grads=True and step once")
        return {self.ms_names[p.name]: g.asnumpy().copy() for p, g in zip(self.optimizer.parameters, self._grads)}

    def momentum_buffers(self) -> Dict[str, np.ndarray]:
        return {self.ms_names[p.name]: a.asnumpy().copy() for p, a in zip(self.optimizer.parameters,
                                                                           self.optimizer.accum)}

    # ------------------------------------------------------------------ checkpoints
    def bn_momentum(self) -> dict:
        """The BN momentum as MindSpore holds it: nn.BatchNorm's constructor takes the weight of
        the new batch (PyTorch's number) and keeps 1 - it, the weight of the running statistic."""
        cells = [c for _, c in self.net.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
        weights = sorted({round(float(c.momentum), 9) for c in cells})
        return {"constructor": sorted({round(1.0 - w, 9) for w in weights}), "new_batch_weight": weights,
                "convention": "MindSpore: running = m * running + (1 - m) * batch"}

    def save(self, path: str, meta: dict) -> None:
        """The step Cell's every parameter (weights, optimiser state, counters), atomically;
        ``meta``'s ``epoch`` and ``step`` go in as ``epoch_num`` / ``step_num``."""
        folder = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.partial.ckpt")
        try:
            ms.save_checkpoint(self.train_step, tmp, append_dict={"epoch_num": int(meta.get("epoch", 0)),
                                                                  "step_num": int(self.step_index)})
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load(self, path: str) -> dict:
        """Restore a checkpoint written by :meth:`save`; returns ``{"step", "epoch"}``."""
        params = ms.load_checkpoint(path)
        meta = {"step": int(params.pop("step_num").asnumpy()), "epoch": int(params.pop("epoch_num").asnumpy())}
        not_loaded, unused = ms.load_param_into_net(self.train_step, params, strict_load=True)
        if not_loaded or unused:
            raise ValueError(f"{path}: checkpoint does not fit the training cell "
                             f"(not loaded: {list(not_loaded)[:4]}, unused: {list(unused)[:4]})")
        step = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        if step != meta["step"]:
            raise ValueError(f"{path}: the optimiser's global_step {step} != the saved step {meta['step']}")
        self.step_index = step
        self.train_mode()
        return meta
