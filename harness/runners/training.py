"""Training parity's measurements, made in a framework's own process (task ``train_parity``).

The parent (:mod:`harness.train_parity`) sends each framework the same inputs and gets
numbers back; only the states the next process needs travel as arrays. ``parts`` says
what a process does, in this order:

``components``  the trainer's loss, its network's first BatchNorm and its dropout, each
                measured alone on given inputs (the recipe as given: dropout on)
``optimizer``   the optimiser alone: ``steps`` updates of designed parameters with designed
                gradients (:func:`harness.train_compare.optimizer_inputs`), compared here with
                the recipe's SGD in float64; and the learning rate of every step of a whole
                run as the optimiser holds it
``trajectory``  ``steps`` training steps from the weights on the batches (dropout off: the
                masks come from each framework's own generator): the state before each step,
                each step's loss, gradients and BN statistics, the final weights and momentum
``isolated``    each step ``k`` again, from the reference's state before it (``states``)
``judge``       (torch, float64) the float64 truth of every isolated step and of the
                trajectory, the kinks of each step (:mod:`frameworks.torch.kinks`), and the
                errors of torch float32, the reference and the candidate against it, each
                after the ReLU / max-pool decisions it took differently are found and named
"""
from __future__ import annotations

import time
from typing import Dict

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from frameworks.spec.train import TrainRecipe, decay_groups, trainable_names
from harness import train_compare
from harness.runners import FLOAT64_BY, RunnerError
from harness.runners.train_arrays import save_step, state_before

PARTS = ("components", "optimizer", "trajectory", "isolated", "judge")
OPTIMIZER_SCHEDULE = (4, 3)   # the optimiser's lr table: 3 epochs of 4 steps (warm-up, then the cosine)
DROPOUT_PROBE = 1 << 20       # elements through the dropout: its measured p is within 5e-4 (1 sigma)


def run(job, task, weights: Dict[str, np.ndarray], runner=None) -> dict:
    """The ``train_parity`` task: every part in ``task.parts``; arrays to ``task.out``,
    numbers in the returned record."""
    from harness.checkpoints.io import write_npz
    from harness.checkpoints.io import read_arrays

    bad = [p for p in task.parts if p not in PARTS]
    if bad or not task.out:
        raise RunnerError(f"train_parity needs out and parts from {PARTS}; got {task.parts}")
    recipe = TrainRecipe.from_dict(task.recipe)
    inputs = read_arrays(task.batches) if task.batches else {}
    work = _Work(job, recipe, weights, inputs, task, runner)
    record: Dict[str, object] = {"op": task.op, "out": task.out}
    arrays: Dict[str, np.ndarray] = {}
    for part in task.parts:
        t0 = time.perf_counter()
        part_arrays, part_record = getattr(work, part)()
        arrays.update(part_arrays)
        record[part] = part_record
        record[f"{part}_s"] = time.perf_counter() - t0
    write_npz(task.out, arrays)
    record["versions"], record["hardware"] = work.runner.versions(), work.runner.hardware()
    return record


class _Work:
    """One framework process's share of a training-parity run."""

    def __init__(self, job, recipe: TrainRecipe, weights: Dict[str, np.ndarray], inputs: Dict[str, np.ndarray], task,
                 runner=None):
        from harness.runners import make_runner

        self.job, self.recipe, self.weights, self.inputs, self.task = job, recipe, weights, inputs, task
        self.cfg: I3DNLConfig = job.config
        self.steps = int(task.steps)
        self.runner = runner or make_runner(job.framework, device=job.device, threads=job.threads, **job.options)
        self._stepper = self._full = None

    def _trainer(self, recipe: TrainRecipe, steps_per_epoch: int, total_steps: int, float64: bool = False):
        try:
            return self.runner.trainer(self.cfg, recipe, self.weights, steps_per_epoch=steps_per_epoch,
                                       total_steps=total_steps, float64=float64, return_grads=True)
        except (ValueError, TypeError) as exc:
            raise RunnerError(f"{self.job.framework}: {str(exc).splitlines()[0]}") from None

    @property
    def no_dropout(self) -> TrainRecipe:
        return self.recipe.replace(dropout=0.0)

    def stepper(self):
        """The trainer the trajectory and the isolated steps share (one compilation)."""
        if self._stepper is None:
            self._stepper = self._trainer(self.no_dropout, self.steps, 2 * self.steps + 1)
        return self._stepper

    # ------------------------------------------------------------------ components
    def full(self):
        """The trainer of the recipe as given (dropout on) over the optimiser's schedule."""
        if self._full is None:
            spe, epochs = OPTIMIZER_SCHEDULE
            self._full = self._trainer(self.recipe, spe, spe * epochs)
        return self._full

    def components(self):
        trainer = self.full()
        i = self.inputs
        loss = trainer.probe_loss(i["probe/logits"], i["probe/labels"])
        bn = trainer.probe_bn(i["probe/bn_input"])
        dropped = trainer.probe_dropout(DROPOUT_PROBE)
        kept = dropped[dropped != 0]
        arrays = {f"components/bn/{k}": v for k, v in bn.items()}
        record = {"loss": loss, "dropout_zero_fraction": float(np.mean(dropped == 0)),
                  "dropout_kept_min": float(kept.min()) if kept.size else float("nan"),
                  "dropout_kept_max": float(kept.max()) if kept.size else float("nan"),
                  "dropout_elements": int(dropped.size), "bn_momentum": trainer.bn_momentum()}
        return arrays, record

    # ------------------------------------------------------------------ the optimiser alone
    def optimizer(self):
        trainer = self.full()
        names = trainable_names(self.cfg)
        k_steps = int(self.inputs["optimizer/steps"])
        params, grads = train_compare.optimizer_inputs({n: self.weights[n].shape for n in names}, k_steps,
                                                       int(self.inputs["optimizer/seed"]))
        trainer.set_state({**self.weights, **params})
        got, used = [], []
        for k in range(k_steps):
            used.append(trainer.apply_gradients(grads[k]))
            weights, buffers = trainer.weights(), trainer.momentum_buffers()
            got.append({n: (weights[n], buffers[n]) for n in names})
        decay = {n: d for d, group in decay_groups(self.recipe, self.cfg).items() for n in group}
        errors = train_compare.optimizer_errors(params, grads, trainer.lr_table()[:k_steps], self.recipe, decay, got)
        errors["__lr__"]["used"] = used
        return {"optimizer/lr_table": trainer.lr_table()}, errors

    # ------------------------------------------------------------------ training steps
    def trajectory(self):
        trainer = self.stepper()
        trainer.set_state(self.weights)
        arrays: Dict[str, np.ndarray] = {}
        losses = []
        for k in range(self.steps):
            if k:
                arrays.update({f"trajectory/state{k}/{n}": v for n, v in trainer.weights().items()})
            loss, _ = trainer.step(self.inputs[f"x{k}"], self.inputs[f"y{k}"])
            losses.append(loss)
            arrays.update(save_step(f"trajectory/{k + 1}", trainer, loss))
        arrays.update({f"trajectory/final/{n}": v for n, v in trainer.weights().items()})
        arrays.update({f"trajectory/momentum/{n}": v for n, v in trainer.momentum_buffers().items()})
        return arrays, {"losses": losses, "lr_used": [float(x) for x in trainer.lr_table()[:self.steps]],
                        "bn_momentum": trainer.bn_momentum()}

    def isolated(self):
        from harness.checkpoints.io import open_arrays

        trainer = self.stepper()
        states = open_arrays(self.task.reference) if self.task.reference else {}
        arrays: Dict[str, np.ndarray] = {}
        losses = []
        for k in range(self.steps):
            trainer.set_state(state_before(states, self.weights, k))
            loss, _ = trainer.step(self.inputs[f"x{k}"], self.inputs[f"y{k}"])
            losses.append(loss)
            arrays.update(save_step(f"isolated/{k + 1}", trainer, loss))
        return arrays, {"losses": losses}

    # ------------------------------------------------------------------ the float64 judge (torch)
    def judge(self):
        from harness.checkpoints.io import open_arrays
        from harness.runners.torch_judge import Judge

        if not self.runner.float64:
            raise RunnerError(f"the float64 judge runs in {FLOAT64_BY}, not {self.job.framework}")
        judge = Judge(self, open_arrays(self.task.reference), open_arrays(self.task.candidate_outputs),
                      tolerance=float(self.task.tolerance or 0.0))
        return {}, judge.run()


# a warm child's trainers, kept between its train_time requests: (runner, recipe, schedule length) ->
# (trainer, build seconds, peak RSS bytes right after the build)
_KEPT: Dict[tuple, tuple] = {}


def time_training(job, task, weights: Dict[str, np.ndarray], runner=None) -> dict:
    """The ``train_time`` task (``harness.bench forward --mode train --recipe seed``): the
    trainer's own ``step`` (the recipe's whole training step: forward in training mode with
    its dropout, loss, backward, SGD with its decay groups, the step's learning rate written)
    on a seeded host batch per batch size of ``task``: ``warmup`` untimed steps, then
    ``steps`` timed, each ended by the trainer's device sync. The trainer is made at the first
    request (``build_s``) and kept for the next ones of the same recipe and schedule, so that a
    warm child times it in turns; ``lrs`` sizes the schedule, which must cover every step
    the child will take. Reports the process's peak resident memory and the peak right after
    the trainer was built (the baseline the bench scales its memory estimate from)."""
    import json
    import os
    import resource

    recipe = TrainRecipe.from_dict(task.recipe)
    key = (id(runner), json.dumps(task.recipe, sort_keys=True), len(task.lrs or ()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if runner is None or key not in _KEPT:
        _KEPT[key] = _build_trainer(job, recipe, weights, len(task.lrs or ()), runner)
    trainer, build_s, after_build = _KEPT[key]
    rows = []
    for batch in task.batch_sizes:
        rows.append(_timed_steps(trainer, job.config, [batch] + list(task.input_shape[1:]), task.warmup, task.steps))
        if "error" in rows[-1]:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"op": "train_time", "runs": rows, "build_s": build_s, "peak_rss_bytes": peak,
            "rss_before_bytes": before, "rss_after_build_bytes": after_build, "load_average": list(os.getloadavg()),
            "versions": trainer.runner.versions(), "hardware": trainer.runner.hardware()}


def _build_trainer(job, recipe: TrainRecipe, weights: Dict[str, np.ndarray], steps: int, runner=None) -> tuple:
    """The job's trainer for a run of ``steps`` steps (one epoch), on ``runner`` (the child's,
    its options the job's) or on a runner of its own: (trainer, build seconds, peak RSS after)."""
    import resource

    from harness.runners import make_trainer

    t0 = time.perf_counter()
    if runner is None:
        trainer = make_trainer(job.framework, job.config, recipe, weights, steps_per_epoch=steps, total_steps=steps,
                               device=job.device, ms_mode=job.options.get("mode", "graph"), threads=job.threads)
    else:
        try:
            trainer = runner.trainer(job.config, recipe, weights, steps_per_epoch=steps, total_steps=steps)
        except (ValueError, TypeError) as exc:
            raise RunnerError(f"{job.framework}: {str(exc).splitlines()[0]}") from None
        trainer.runner = runner
    return trainer, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed_steps(trainer, cfg: I3DNLConfig, shape, warmup: int, steps: int) -> dict:
    """``warmup`` then ``steps`` timed steps of ``trainer`` on a seeded batch of ``shape``
    (wall and CPU seconds each); a step that fails (out of memory, a shape BatchNorm refuses,
    a schedule run out) is the row's ``error``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, shape[0])
    row = {"batch_size": shape[0], "shape": list(shape), "warmup_s": [], "step_s": [], "cpu_s": []}
    try:
        for k in range(warmup + steps):
            c0, t0 = time.process_time(), time.perf_counter()
            loss, _ = trainer.step(x, y)
            trainer.sync()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if k < warmup:
                row["warmup_s"].append(wall)
            else:
                row["step_s"].append(wall)
                row["cpu_s"].append(cpu)
            row["loss"] = float(loss)
    except (RuntimeError, MemoryError, IndexError, ValueError) as exc:
        return {"batch_size": shape[0], "shape": list(shape),
                "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    return row
