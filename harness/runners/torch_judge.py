"""The float64 judge of training parity (torch): the truth each float32 step is held to.

For a step from a given state on a given batch, the judge runs torch in float32 and in
float64 with every ReLU and max-pool input recorded (:class:`frameworks.torch.kinks.Watch`),
finds the kinks (inputs within float32 rounding of a decision), and finds the decisions a
float32 run took the other way (:func:`harness.train_compare.explain_flips`): its gradients
are then measured against float64 *with those decisions*, and a difference no kink
explains stays in the errors, whatever its size.

``step`` checks: every step ``k`` from the reference's state before it, for torch float32
(the floor), the reference and the candidate (its isolated steps).
``trajectory`` checks: each one's own ``K`` steps (torch float32's, run here; the
reference's and the candidate's, with the states they saved) against float64's ``K`` steps
from the start taking the decisions that run took at each of its steps, tensor by tensor
(:func:`harness.train_compare.robust_errors`).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import kink_sites, parameter_specs
from frameworks.spec.train import is_running_statistic, trainable_names
from harness import train_compare
from harness.runners.train_arrays import state_before, step_arrays

JUDGE_STEPS = 10_000   # the judge's trainers step many times (each recomputation is a step)
ROLES = ("torch32", "reference", "candidate")
# a flipped decision whose effect is over a third of the tolerance is found and named; one
# below it stays in the error, which the tolerance then holds with a margin of three
SEARCH_SHARE = 3.0


class Judge:
    def __init__(self, work, reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray], tolerance: float):
        self.work, self.cfg = work, work.cfg
        self.arrays = {"reference": reference, "candidate": candidate}
        self.tolerance = tolerance                  # the step check's, on scaled gradient errors
        self.search = tolerance / SEARCH_SHARE      # an error above this: look for the decisions behind it
        self.names = trainable_names(self.cfg)
        self.stats = [n for n in parameter_specs(self.cfg) if is_running_statistic(n)]
        self.sites = kink_sites(self.cfg)
        self.f32 = work._trainer(work.no_dropout, work.steps, JUDGE_STEPS)
        self.f64 = work._trainer(work.no_dropout, work.steps, JUDGE_STEPS, float64=True)

    def run(self) -> dict:
        steps, flips = [], {role: [] for role in ROLES}
        for k in range(self.work.steps):
            record, step_flips = self.step(k)
            steps.append(record)
            for role in ROLES:
                flips[role].append(step_flips[role])
        # float32 itself cannot follow float64 at this shape (an ill-conditioned step): the
        # trajectory is not judged, so its decisions are not searched for either
        conditioned = all(max(step["torch32"]["grad"].values()) <= self.tolerance for step in steps)
        return {"steps": steps, "trajectory": self.trajectory(flips, search=conditioned)}

    # ------------------------------------------------------------------ one step, explained
    def _run(self, trainer, state, x, y, flips=None):
        from frameworks.torch.kinks import Watch

        trainer.set_state(state)
        with Watch(trainer.model, flips) as watch:
            loss, _ = trainer.step(x, y)
        grads = {n: np.asarray(g, dtype=np.float64) for n, g in trainer.gradients().items()}
        stats = {n: np.asarray(v, dtype=np.float64) for n, v in trainer.weights().items() if is_running_statistic(n)}
        return loss, grads, stats, watch.inputs

    def _truth(self, state, k: int) -> dict:
        """Float32 and float64 of step ``k`` from ``state``: both runs, the kinks, and the way to
        recompute float64's gradients with some decisions flipped."""
        from frameworks.torch.kinks import find_kinks

        x, y = self.work.inputs[f"x{k}"], self.work.inputs[f"y{k}"]
        loss32, grads32, stats32, x32 = self._run(self.f32, state, x, y)
        loss64, grads64, stats64, x64 = self._run(self.f64, state, x, y)
        kinks = find_kinks(self.f64.model, x32, x64)
        return {"torch32": {"loss": loss32, "grad": grads32, "stat": stats32}, "loss64": loss64, "grads64": grads64,
                "stats64": stats64, "x64": x64, "kinks": kinks, "scales": train_compare.module_scales(grads64),
                "gradients_with": lambda flips: self._run(self.f64, state, x, y, flips)[1]}

    def _explain(self, truth: dict, got: dict) -> dict:
        masks = {s: v["flip"] for s, v in truth["kinks"].items() if v["count"]}
        flips, grads, found = train_compare.explain_flips(got["grad"], truth["grads64"], truth["gradients_with"], masks,
                                                          self.sites, self.search, truth["scales"], self.names)
        for record in found:
            record.update(_closest(truth["kinks"][record["site"]], truth["x64"], flips, record))
        stat_scales = {n: max(float(np.abs(v).max()), 1e-30) for n, v in truth["stats64"].items()}
        return {"loss": got["loss"], "loss_error": abs(got["loss"] - truth["loss64"]) / max(abs(truth["loss64"]), 1e-30),
                "grad": train_compare.scaled_errors(got["grad"], grads, truth["scales"]),
                "grad_raw": train_compare.scaled_errors(got["grad"], truth["grads64"], truth["scales"]),
                "stat": train_compare.scaled_errors(got["stat"], truth["stats64"], stat_scales),
                "flips": found, "_masks": flips}

    def step(self, k: int):
        """Step ``k`` from the reference's state before it, for each role."""
        truth = self._truth(state_before(self.arrays["reference"], self.work.weights, k), k)
        targets = {"torch32": truth["torch32"],
                   "reference": step_arrays(self.arrays["reference"], f"trajectory/{k + 1}", self.cfg),
                   "candidate": step_arrays(self.arrays["candidate"], f"isolated/{k + 1}", self.cfg)}
        out = {"loss64": truth["loss64"],
               "kinks": {s: {key: v[key] for key in ("kind", "count", "elements", "noise", "margin")}
                         for s, v in truth["kinks"].items() if v["count"]}}
        flips = {}
        for role, got in targets.items():
            out[role] = self._explain(truth, got)
            flips[role] = out[role].pop("_masks")
        return out, flips

    # ------------------------------------------------------------------ the trajectory
    def trajectory(self, isolated_flips: Dict[str, List[dict]], search: bool = True) -> dict:
        """Each role's own ``K`` steps against float64's ``K`` steps taken with the decisions that
        role took at each of its steps (found from the states it saved: the reference's
        steps are the isolated ones; the candidate's and torch float32's own are explained
        here)."""
        work = self.work
        start = {n: np.asarray(v, dtype=np.float64) for n, v in work.weights.items()}
        runs = {"torch32": self._own_trajectory()}
        for role in ("reference", "candidate"):
            arrays = self.arrays[role]
            runs[role] = {"losses": [float(arrays[f"trajectory/{k + 1}/loss"]) for k in range(work.steps)],
                          "final": {n: arrays[f"trajectory/final/{n}"] for n in parameter_specs(self.cfg)},
                          "momentum": {n: arrays[f"trajectory/momentum/{n}"] for n in self.names},
                          # read one step at a time (a state and a step's gradients: a network's weights each)
                          "state": lambda k, a=arrays: state_before(a, work.weights, k),
                          "step": lambda k, a=arrays: step_arrays(a, f"trajectory/{k + 1}", self.cfg)}
        out: Dict[str, dict] = {}
        plain = None
        for role in ROLES:
            got = runs[role]
            if role == "reference":
                flips = isolated_flips["reference"]
            else:
                flips = self._trajectory_flips(got) if search else [{} for _ in range(work.steps)]
            if any(flips):
                truth = self._float64_trajectory(flips)
            else:
                plain = plain or self._float64_trajectory(None)
                truth = plain
            out[role] = self._trajectory_errors(start, got, truth)
            out[role]["flips"] = sum(int(m.sum()) for step in flips for m in step.values())
        return out

    def _own_trajectory(self) -> dict:
        work = self.work
        trainer = work._trainer(work.no_dropout, work.steps, 2 * work.steps + 1)
        trainer.set_state(work.weights)
        states, steps = [], []
        for k in range(work.steps):
            states.append(trainer.weights())
            loss, _ = trainer.step(work.inputs[f"x{k}"], work.inputs[f"y{k}"])
            steps.append({"loss": loss, "grad": trainer.gradients(),
                          "stat": {n: v for n, v in trainer.weights().items() if is_running_statistic(n)}})
        return {"losses": [s["loss"] for s in steps], "final": trainer.weights(),
                "momentum": trainer.momentum_buffers(), "state": states.__getitem__, "step": steps.__getitem__}

    def _trajectory_flips(self, run: dict) -> List[Dict[str, np.ndarray]]:
        flips = []
        for k in range(self.work.steps):
            truth = self._truth(run["state"](k), k)
            flips.append(self._explain(truth, run["step"](k))["_masks"])
        return flips

    def _float64_trajectory(self, flips: Optional[List[Dict[str, np.ndarray]]]) -> dict:
        from frameworks.torch.kinks import Watch

        work = self.work
        trainer = work._trainer(work.no_dropout, work.steps, 2 * work.steps + 1, float64=True)
        trainer.set_state(work.weights)
        losses = []
        for k in range(work.steps):
            with Watch(trainer.model, flips[k] if flips else None):
                losses.append(trainer.step(work.inputs[f"x{k}"], work.inputs[f"y{k}"])[0])
        return {"losses": losses, "final": trainer.weights(), "momentum": trainer.momentum_buffers()}

    def _trajectory_errors(self, start: Dict[str, np.ndarray], got: dict, truth: dict) -> dict:
        update64 = {n: np.asarray(truth["final"][n], dtype=np.float64) - start[n] for n in self.names}
        update_scales = train_compare.module_rms(update64)
        momentum_scales = train_compare.module_rms(truth["momentum"])
        stat_scales = train_compare.module_rms({n: truth["final"][n] for n in self.stats})
        row: Dict[str, dict] = {}
        for n in self.names:
            update = np.asarray(got["final"][n], dtype=np.float64) - start[n]
            row[f"{n}@update"] = train_compare.robust_errors(update, update64[n], update_scales[n])
            row[f"{n}@momentum"] = train_compare.robust_errors(got["momentum"][n], truth["momentum"][n],
                                                               momentum_scales[n])
        for n in self.stats:
            row[f"{n}@stat"] = train_compare.robust_errors(got["final"][n], truth["final"][n], stat_scales[n])
        return {"tensors": row, "losses": list(got["losses"]),
                "loss_errors": [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got["losses"], truth["losses"])]}


def _closest(kink: dict, inputs: Dict[str, np.ndarray], flips: Dict[str, np.ndarray], record: dict) -> dict:
    """How close to its decision the flipped input was (``|x|`` of a ReLU input), against the margin."""
    site = record["site"]
    values = inputs.get(site)
    chosen = flips.get(site)
    if values is None or chosen is None or kink["kind"] != "relu":
        return {"kind": kink["kind"], "margin": kink["margin"]}
    picked = np.abs(values[:, record["channel"]][chosen[:, record["channel"]]])
    return {"kind": kink["kind"], "margin": kink["margin"], "closest": float(picked.min()) if picked.size else None}
