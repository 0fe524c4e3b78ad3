"""Training parity (``python -m harness.parity --train-steps K``): does a port *train* like the
original? Four checks, each on what it alone can see, in the order a verdict names them:

``components``  the loss function, the network's first BatchNorm (training-mode output,
                running statistics after one batch, inference output) and the classifier's
                dropout, each measured alone in each framework against the spec's
                definition computed in float64 (cross entropy; BN with the config's eps and
                the recipe's momentum; dropout p with its binomial spread);
``optimizer``   the optimiser alone: the same designed parameters and gradients given to both
                frameworks' optimisers for ``max(K, 3)`` steps, every momentum buffer and
                parameter held to the recipe's SGD in float64 within float32's rounding
                bound, the weight decay measured where a gradient is 0, and the learning
                rate of every step of a three-epoch run as each optimiser holds it: a
                momentum, dampening, Nesterov, decay or schedule bug moves these by
                thousands of roundings, and no ReLU can hide it;
``step``        one training step at a time (PaDiff's ``single_step``): step ``k`` starts both
                frameworks from the reference's weights and BN statistics before it, so
                only that step's float32 noise is compared: the loss, every gradient and
                every BN statistic, against torch float64 from the same state. A ReLU or
                max-pool input within rounding of its decision (a *kink*) can be decided the
                other way and move a whole channel's gradient; the float64 judge finds the
                kinks of each step, finds the ones each framework decided differently (the
                change flipping them makes reproduces that framework's difference, channel
                by channel) and names them; the gradients are then held to float64 *with
                those decisions*. Nothing else is allowed for;
``trajectory``  ``K`` steps from the same start, each framework on its own (propagated, as
                training runs): every update, momentum buffer and BN statistic against
                float64 with that framework's decisions, by relative L2 norm, beside torch
                float32's own error (the floor band). Reported; it fails only beyond the band.

Steps run without dropout (each framework draws its own masks); the dropout itself is
measured by ``components``. A check whose own floor (torch float32 against float64) already
exceeds its tolerance cannot judge: the verdict is then INCONCLUSIVE, with the reason (a
small clip leaves BatchNorm in training mode a handful of values per channel at res5, and
the step is ill-conditioned, not wrong), never PASS. Exit status 0 PASS, 1 FAIL or
INCONCLUSIVE, 2 bad input.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig, arch_hash, layer_shapes, parameter_specs
from frameworks.spec.train import (DEFAULT_RECIPE, TrainRecipe, get_recipe, lr_schedule, parameter_family,
                                   recipe_hash, trainable_names)
from harness import train_compare

DEFAULT_SHAPE = (2, 3, 8, 64, 64)
RUNGS = ("components", "optimizer", "step", "trajectory")

# Tolerances, each beside the worst value measured on the unmutated code
# (scripts/measure_train_floors.py -> results/train_parity_floors.json: seeds 0-4 x 1 and 2
# threads, 2x3x8x64x64, i3d_nl_dot_product_r50, 4 classes, torch 2.13 and MindSpore 2.10
# graph mode on a 2-core AMD EPYC). "worst" is the larger of torch's and MindSpore's error
# where a check holds both to a float64 definition; "floor" is torch float32's own error
# against float64 where a check has one.
TOLERANCES = {
    # components: float32 against the float64 definition
    "loss": 2e-6,            # |L - L64| / max(1, |L64|); worst 3.1e-7 (MindSpore)
    "bn": 2e-6,              # max |y - y64| / max |y64|; worst 1.6e-7
    "dropout_p": 6.0,        # |p_measured - p| in binomial sigmas (2^20 elements); worst 2.7 (torch)
    "dropout_scale": 1e-6,   # max |kept - 1/(1-p)| * (1-p); worst 0
    # optimizer: in units of float32's rounding bound of the update (harness.train_compare)
    "optimizer": 2.0,        # worst 0.9995: the bound is tight (some element of every run meets it)
    "decay": 1e-6,           # |wd_measured - wd| / recipe wd; worst 5.6e-8
    "lr": 1e-6,              # |lr - lr_spec| / lr_spec; worst 0 (the tables are equal)
    # step: against float64 from the same state, after the flipped kinks are named
    "step_loss": 5e-6,       # |L - L64| / |L64|; floor 1.0e-6, MindSpore 8.2e-7
    "step_grad": 3e-4,       # max |g - g64| / max |module's g64|; floor 6.0e-5 where no decision
                             # flipped unexplained, MindSpore 6.3e-5; a gradient off by more than a
                             # third of this starts the search for flipped decisions (the judge,
                             # harness/runners/torch_judge.py), so one whose effect stays below it
                             # is what is left in the error
    "step_stat": 2e-5,       # max |s - s64| / max |s64|; floor 4.6e-6, MindSpore 2.7e-6
    # trajectory: relative L2 against float64, a band of the floor
    "band": 10.0,            # x torch float32's own error of the same tensor
    "band_min": 1e-6,        # ... and never below this (a BN scale's K-step update is below float32's
                             # resolution of the scale itself: its floor is ~0.1, so is its band x 0.1);
                             # the loss never below step_loss: loss@1 is the step check's own loss (the
                             # same state), whose float32 floor is 1.0e-6 (MindSpore measured 0.82 of a
                             # 1e-6 band there, seed 4)
}


# ============================================================================ request
@dataclass
class TrainParityRequest:
    cfg: I3DNLConfig
    reference: str = "torch"
    candidate: str = "ms"
    steps: int = 3
    shape: Sequence[int] = DEFAULT_SHAPE
    seed: int = 0
    checkpoint: Optional[str] = None
    trust: bool = False
    recipe: TrainRecipe = field(default_factory=get_recipe)
    device: str = "cpu"
    runner_settings: dict = field(default_factory=dict)   # every framework's own options (runner_settings)
    # one thread per framework: repeatable, and robust on a shared machine (a 2-thread
    # OpenMP team on 2 busy cores ran torch's training step 10-30x slower, measured)
    threads: Optional[int] = 1


@dataclass
class Entry:
    """One compared quantity. ``error`` and ``tolerance`` are in the same (scaled) unit;
    ``floor`` is torch float32's own error there, where it has one; an entry that is not
    ``judged`` (its floor already exceeds the tolerance) neither passes nor fails."""

    rung: str
    family: str
    quantity: str
    name: str
    framework: str
    error: float
    tolerance: float
    floor: Optional[float] = None
    step: Optional[int] = None
    judged: bool = True

    @property
    def share(self) -> float:
        return self.error / self.tolerance if self.tolerance > 0 else (0.0 if self.error == 0 else math.inf)

    @property
    def passed(self) -> bool:
        return self.share <= 1.0      # never NaN: a NaN error is a failure (share is inf or nan -> False)


COLUMNS = ("rung", "family", "quantity", "name", "framework", "error", "tolerance", "floor", "step", "judged")


@dataclass
class Rung:
    name: str
    entries: List[Entry]
    notes: List[str] = field(default_factory=list)
    reason: str = ""

    @property
    def failures(self) -> List[Entry]:
        return [e for e in self.entries if e.judged and not e.passed]

    @property
    def status(self) -> str:
        if self.failures:
            return "FAIL"
        if any(not e.judged for e in self.entries):
            return "INCONCLUSIVE"
        return "PASS"

    def to_dict(self) -> dict:
        rows = [[getattr(e, c) for c in COLUMNS] for e in self.entries]
        return {"status": self.status, "reason": self.reason, "notes": self.notes,
                "entries": {"columns": list(COLUMNS), "rows": rows}}


def verdict(rungs: Dict[str, Rung]) -> Tuple[str, Optional[Entry]]:
    """FAIL at the first failing rung (in :data:`RUNGS` order) and its first failing entry;
    else INCONCLUSIVE if a rung could not judge; else PASS."""
    for name in RUNGS:
        if name in rungs and rungs[name].failures:
            return "FAIL", rungs[name].failures[0]
    if any(r.status == "INCONCLUSIVE" for r in rungs.values()):
        return "INCONCLUSIVE", None
    return "PASS", None


def summary(rungs: Dict[str, Rung]) -> List[dict]:
    """Per rung and family: entries, the worst error as a share of its tolerance (judged
    entries), the worst floor as a share of the same tolerance, failures, status."""
    rows: Dict[Tuple[str, str], dict] = {}
    for rung in rungs.values():
        for e in rung.entries:
            row = rows.setdefault((rung.name, e.family), {"rung": rung.name, "family": e.family, "n": 0, "failed": 0,
                                                         "not_judged": 0, "worst_share": 0.0, "worst": None,
                                                         "floor_share": None})
            row["n"] += 1
            if not e.judged:
                row["not_judged"] += 1
            elif e.share > row["worst_share"] or row["worst"] is None:
                row["worst_share"] = e.share
                row["worst"] = {"name": e.name, "quantity": e.quantity, "framework": e.framework, "step": e.step,
                                "error": e.error, "tolerance": e.tolerance}
            row["failed"] += int(e.judged and not e.passed)
            if e.floor is not None and e.tolerance > 0:
                row["floor_share"] = max(row["floor_share"] or 0.0, e.floor / e.tolerance)
    for row in rows.values():
        row["status"] = "FAIL" if row["failed"] else ("INCONCLUSIVE" if row["not_judged"] else "PASS")
    return list(rows.values())


# ============================================================================ inputs
def make_inputs(req: TrainParityRequest) -> Dict[str, np.ndarray]:
    """The batches of every step, the components' probes and the optimiser's steps and seed
    (its designed parameters and gradients are made in each process,
    :func:`harness.train_compare.optimizer_inputs`): one file every framework reads."""
    rng = np.random.default_rng(req.seed)
    out: Dict[str, np.ndarray] = {}
    for k in range(req.steps):
        out[f"x{k}"] = rng.standard_normal(tuple(req.shape)).astype(np.float32)
        out[f"y{k}"] = rng.integers(0, req.cfg.num_classes, req.shape[0]).astype(np.int64)
    probe = np.random.default_rng([req.seed, 3])
    out["probe/logits"] = (3 * probe.standard_normal((16, req.cfg.num_classes))).astype(np.float32)
    out["probe/labels"] = probe.integers(0, req.cfg.num_classes, 16).astype(np.int64)
    channels = req.cfg.base_channels
    offset = probe.normal(0.0, 2.0, (1, channels, 1, 1, 1))
    spread = probe.uniform(0.5, 3.0, (1, channels, 1, 1, 1))
    out["probe/bn_input"] = (offset + spread * probe.standard_normal((2, channels, 2, 4, 4))).astype(np.float32)
    out["optimizer/steps"] = np.array(max(req.steps, 3))    # each process makes the designed inputs itself
    out["optimizer/seed"] = np.array(req.seed)
    return out


def start_weights(req: TrainParityRequest) -> Tuple[Dict[str, np.ndarray], str]:
    if req.checkpoint:
        from harness.checkpoints import check_runnable, load_weights

        loaded = load_weights(req.checkpoint, req.cfg, trust=req.trust)
        check_runnable(loaded.arrays, req.checkpoint)
        return loaded.arrays, loaded.describe()
    from frameworks.spec.train import parity_weights

    return parity_weights(req.cfg, req.seed), f"parity weights (seed {req.seed}; frameworks.spec.train.parity_weights)"


# ============================================================================ the run
def run(req: TrainParityRequest, workdir: str, progress=print) -> dict:
    """The three processes (reference, candidate, the torch float64 judge), then the four
    checks; returns their parts (see :func:`to_json`)."""
    from harness.checkpoints.io import write_npz
    from harness.runners import FLOAT64_BY, runner_options
    from harness.checkpoints.io import open_arrays
    from harness.runners.child import Job, Task, run_job

    weights, label = start_weights(req)
    inputs = make_inputs(req)
    inputs_path, weights_path = os.path.join(workdir, "inputs.npz"), os.path.join(workdir, "weights.npz")
    write_npz(inputs_path, inputs)
    write_npz(weights_path, weights)
    progress(f"weights: {label}")

    def child(role: str, framework: str, parts: List[str], **extra) -> dict:
        progress(f"{role}: {framework} ({', '.join(parts)})")
        out = os.path.join(workdir, f"{role}.npz")
        task = Task("train_parity", out=out, steps=req.steps, batches=inputs_path, recipe=req.recipe.to_dict(),
                    parts=parts, **extra)
        record = run_job(Job(framework, req.cfg, device=req.device, threads=req.threads,
                             options=runner_options(framework, req.runner_settings), weights=weights_path, tasks=[task]),
                         workdir, role)["tasks"][0]
        return record

    records = {"reference": child("reference", req.reference, ["components", "optimizer", "trajectory"])}
    ref_out = records["reference"]["out"]
    records["candidate"] = child("candidate", req.candidate, ["components", "optimizer", "trajectory", "isolated"],
                                 reference=ref_out)
    records["judge"] = child("judge", FLOAT64_BY, ["judge"], reference=ref_out,
                             candidate_outputs=records["candidate"]["out"], tolerance=TOLERANCES["step_grad"])
    arrays = {role: open_arrays(records[role]["out"]) for role in ("reference", "candidate")}   # a few are read
    rungs = {"components": components_rung(req, weights, inputs, records, arrays),
             "optimizer": optimizer_rung(req, records, arrays),
             "step": step_rung(req, records["judge"]["judge"])}
    rungs["trajectory"] = trajectory_rung(req, records["judge"]["judge"], rungs["step"].status != "INCONCLUSIVE")
    status, first = verdict(rungs)
    return {"rungs": rungs, "verdict": status, "first_failure": first, "weights": label, "records": records}


# ============================================================================ the four checks
def _roles(req: TrainParityRequest) -> List[Tuple[str, str]]:
    return [("reference", req.reference), ("candidate", req.candidate)]


def components_rung(req, weights, inputs, records, arrays) -> Rung:
    cfg = req.recipe.arch(req.cfg)
    loss64 = train_compare.cross_entropy_reference(inputs["probe/logits"], inputs["probe/labels"])
    bn64 = train_compare.bn_reference(inputs["probe/bn_input"], weights["stem.bn.weight"], weights["stem.bn.bias"],
                                      weights["stem.bn.running_mean"], weights["stem.bn.running_var"],
                                      cfg.bn_eps, req.recipe.bn_momentum)
    p = float(req.recipe.dropout)
    entries: List[Entry] = []
    for role, fw in _roles(req):
        got = records[role]["components"]
        entries.append(Entry("components", "loss", "cross_entropy", "loss", fw,
                             abs(got["loss"] - loss64) / max(1.0, abs(loss64)), TOLERANCES["loss"]))
        for key, ref in bn64.items():
            value = arrays[role][f"components/bn/{key}"]
            entries.append(Entry("components", "bn", key, "stem.bn", fw,
                                 float(np.abs(value - ref).max()) / max(float(np.abs(ref).max()), 1e-30),
                                 TOLERANCES["bn"]))
        n = got["dropout_elements"]
        sigma = math.sqrt(p * (1 - p) / n) if 0 < p < 1 else 1.0 / n
        entries.append(Entry("components", "dropout", "p", "head.dropout", fw,
                             abs(got["dropout_zero_fraction"] - p) / sigma, TOLERANCES["dropout_p"]))
        kept = 1.0 / (1.0 - p)
        off = max(abs(got["dropout_kept_min"] - kept), abs(got["dropout_kept_max"] - kept)) / kept
        entries.append(Entry("components", "dropout", "kept_scale", "head.dropout", fw,
                             off if math.isfinite(off) else (0.0 if p >= 1 else math.inf), TOLERANCES["dropout_scale"]))
    return Rung("components", entries)


def optimizer_rung(req, records, arrays) -> Rung:
    from harness.runners.training import OPTIMIZER_SCHEDULE

    spe, epochs = OPTIMIZER_SCHEDULE
    spec = lr_schedule(req.recipe, spe, spe * epochs).astype(np.float64)
    names = trainable_names(req.cfg)
    entries: List[Entry] = []
    notes: List[str] = []
    for role, fw in _roles(req):
        table = arrays[role]["optimizer/lr_table"].astype(np.float64)
        error = float(np.max(np.abs(table - spec) / spec)) if table.shape == spec.shape else math.inf
        entries.append(Entry("optimizer", "lr", "schedule", "lr", fw, error, TOLERANCES["lr"]))
        lr = records[role]["optimizer"]["__lr__"]
        notes.append(f"{fw}: lr applied per step (measured from the updates) "
                     + ", ".join(f"{a:.6e}" for a in lr["applied"]) + "; spec " + ", ".join(f"{a:.6e}" for a in lr["expected"]))
    for name in names:
        for role, fw in _roles(req):
            got = records[role]["optimizer"][name]
            family = parameter_family(name)
            decay_error = abs(got["decay"] - got["decay_expected"]) / max(req.recipe.weight_decay, 1e-12)
            entries.append(Entry("optimizer", family, "decay", name, fw,
                                 decay_error if math.isfinite(decay_error) else math.inf, TOLERANCES["decay"]))
            entries.append(Entry("optimizer", family, "buf", name, fw, got["buf"], TOLERANCES["optimizer"],
                                 step=got["buf_step"]))
            entries.append(Entry("optimizer", family, "param", name, fw, got["param"], TOLERANCES["optimizer"],
                                 step=got["param_step"]))
    return Rung("optimizer", entries, notes)


def step_rung(req, judge: dict) -> Rung:
    """Per step, role and quantity; each entry's floor is torch float32's error there."""
    worst: Dict[tuple, Entry] = {}
    notes: List[str] = []

    def add(key, entry: Entry) -> None:
        if key not in worst or (entry.judged and (entry.share > worst[key].share or not worst[key].judged)):
            worst[key] = entry

    for k, step in enumerate(judge["steps"], start=1):
        floor = step["torch32"]
        kinks = sum(v["count"] for v in step["kinks"].values())
        notes.append(f"step {k}: {kinks} kinks (inputs within float32 rounding of a ReLU or max-pool decision) "
                     f"at {len(step['kinks'])} sites")
        for role, fw in [("torch32", "torch float32")] + _roles(req):
            for flip in step[role]["flips"]:
                where = f"|x| {flip['closest']:.1e}, " if flip.get("closest") is not None else ""
                notes.append(f"step {k}: {fw} took {flip['kinks']} {flip['kind']} decision(s) at {flip['site']} "
                             f"channel {flip['channel']} the other way ({where}margin {flip['margin']:.1e}); "
                             f"its gradients are held to float64 with them")
        for role, fw in _roles(req):
            got = step[role]
            tol = TOLERANCES["step_loss"]
            add(("loss", role), Entry("step", "loss", "loss", "loss", fw, got["loss_error"], tol, floor["loss_error"],
                                      k, floor["loss_error"] <= tol))
            tol = TOLERANCES["step_stat"]
            for name, error in got["stat"].items():
                f = floor["stat"][name]
                add((name, role), Entry("step", "bn_stat", "stat", name, fw, error, tol, f, k, f <= tol))
            tol = TOLERANCES["step_grad"]
            for name, error in got["grad"].items():
                f = floor["grad"][name]
                add((name, role), Entry("step", parameter_family(name), "grad", name, fw, error, tol, f, k, f <= tol))
    order = ["loss"] + list(parameter_specs(req.cfg))
    entries = sorted(worst.values(), key=lambda e: (order.index(e.name) if e.name in order else 0,
                                                    0 if e.quantity == "stat" else 1))
    return _conditioned(Rung("step", entries, notes), req)


def _conditioned(rung: Rung, req) -> Rung:
    """A check whose floor (torch float32 against float64) exceeds its tolerance anywhere cannot
    judge this shape at all: float32 itself does not reproduce the step, so neither can a
    port. Every entry is then left unjudged and the reason given."""
    over = [e for e in rung.entries if not e.judged]
    if over:
        worst = max(over, key=lambda e: (e.floor or 0.0) / e.tolerance)
        for e in rung.entries:
            e.judged = False
        rung.reason = inconclusive_reason(req, over, worst)
    return rung


def trajectory_rung(req, judge: dict, step_conditioned: bool = True) -> Rung:
    traj = judge["trajectory"]
    floor = traj["torch32"]["tensors"]
    entries: List[Entry] = []
    for role, fw in _roles(req):
        got = traj[role]
        for k, error in enumerate(got["loss_errors"], start=1):
            f = traj["torch32"]["loss_errors"][k - 1]
            entries.append(Entry("trajectory", "loss", "loss", f"loss@{k}", fw, error,
                                 max(TOLERANCES["band"] * f, TOLERANCES["step_loss"]), f, k, step_conditioned))
        for key, stats in got["tensors"].items():
            name, _, quantity = key.rpartition("@")
            for statistic, label in (("rel_l2", quantity), ("median", f"{quantity} median")):
                f = floor[key][statistic]
                entries.append(Entry("trajectory", parameter_family(name), label, name, fw, stats[statistic],
                                     max(TOLERANCES["band"] * f, TOLERANCES["band_min"]), f, req.steps,
                                     step_conditioned))
    notes = [f"{fw}: its own {req.steps} steps took {traj[role]['flips']} ReLU / max-pool decision(s) the other way "
             f"than float64; float64's trajectory takes them too" for role, fw in
             [("torch32", "torch float32")] + _roles(req) if traj[role]["flips"]]
    rung = Rung("trajectory", entries, notes)
    if not step_conditioned:
        rung.reason = "the steps themselves are ill-conditioned at this shape (see the step check)"
    return rung


def inconclusive_reason(req, unjudged: List[Entry], worst: Entry) -> str:
    """Why the floor exceeds the tolerance: usually BatchNorm in training mode normalising over
    a handful of values per channel (the batch times the positions left at res5)."""
    shapes = layer_shapes(req.cfg, tuple(req.shape))
    fewest = min((int(np.prod(s)) // s[1], name) for name, s in shapes.items() if len(s) == 5)
    return (f"torch float32 itself misses float64 beyond the tolerance at {len(unjudged)} entries, by up to "
            f"{(worst.floor or 0.0) / worst.tolerance:.3g}x ({worst.name} {worst.quantity}); BatchNorm in training "
            f"mode normalises over {fewest[0]} values per channel at {fewest[1]} for a "
            f"{'x'.join(map(str, req.shape))} batch: the step is ill-conditioned there, not wrong, and is not "
            f"judged (a larger clip or batch conditions it)")


# ============================================================================ output
def to_json(result: dict, req: TrainParityRequest) -> dict:
    from harness.provenance import utc_now

    first: Optional[Entry] = result["first_failure"]
    rungs = result["rungs"]
    runs = {role: {k: v for k, v in rec.items() if k in ("versions", "hardware") or k.endswith("_s")}
            for role, rec in result["records"].items()}
    conventions = {role: {"bn_momentum": result["records"][role]["components"]["bn_momentum"],
                          "lr_applied": result["records"][role]["optimizer"]["__lr__"]}
                   for role in ("reference", "candidate")}
    return {"verdict": result["verdict"], "passed": result["verdict"] == "PASS",
            "first_failure": None if first is None else {c: getattr(first, c) for c in COLUMNS},
            "reference": req.reference, "candidate": req.candidate, "arch": req.cfg.name,
            "arch_hash": arch_hash(req.cfg), "num_classes": req.cfg.num_classes, "seed": req.seed,
            "threads": req.threads, "checkpoint": req.checkpoint, "weights": result["weights"],
            "input_shape": list(req.shape), "steps": req.steps, "recipe": req.recipe.to_dict(),
            "recipe_hash": recipe_hash(req.recipe), "tolerances": TOLERANCES, "device": req.device,
            "runner_settings": req.runner_settings, "date": utc_now(), "summary": summary(rungs),
            "rungs": {name: rung.to_dict() for name, rung in rungs.items()}, "conventions": conventions,
            "runs": runs}


def format_summary(result: dict, req: TrainParityRequest) -> str:
    rungs = result["rungs"]
    lines = [f"training parity: {req.candidate} vs {req.reference}, {req.steps} steps, batch "
             f"{'x'.join(map(str, req.shape))}, {req.cfg.name}, recipe {req.recipe.name} (dropout {req.recipe.dropout:g} "
             f"measured alone; the steps run without it); weights: {result['weights']}", "",
             f"  {'check':11s} {'family':9s} {'n':>5s} {'worst':>9s} {'of tol.':>8s} {'floor':>8s} {'failed':>6s}  "
             f"{'status':12s} worst entry"]
    for row in summary(rungs):
        w = row["worst"] or {}
        floor = "" if row["floor_share"] is None else _share(row["floor_share"])
        where = f"{w.get('name')} {w.get('quantity')} ({w.get('framework')}" + (
            f", step {w['step']})" if w.get("step") else ")") if w else f"{row['not_judged']} not judged"
        worst, share = (f"{w['error']:9.2e}", _share(row["worst_share"])) if w else ("-", "-")
        lines.append(f"  {row['rung']:11s} {row['family']:9s} {row['n']:5d} {worst:>9s} "
                     f"{share:>8s} {floor:>8s} {row['failed']:6d}  {row['status']:12s} {where}")
    lines.append("  (worst: the largest error of the family, in its check's unit; of tol.: as a share of the "
                 "tolerance (over 100% fails); floor: torch float32's own error against float64, same unit)")
    notes = [n for r in rungs.values() for n in r.notes]
    if notes:
        lines += [""] + [f"  {n}" for n in notes]
    for rung in rungs.values():
        if rung.reason:
            lines.append(f"  {rung.name} inconclusive: {rung.reason}")
    lines.append("")
    first: Optional[Entry] = result["first_failure"]
    if result["verdict"] == "PASS":
        lines.append(f"PASSED: {req.candidate} trains like {req.reference}: every check within its tolerance")
    elif result["verdict"] == "FAIL":
        lines.append(f"FAILED: {first.rung} check, family {first.family}: {first.name} {first.quantity} "
                     f"({first.framework}" + (f", step {first.step}" if first.step else "") + f") is "
                     f"{first.error:.3e}, {first.share:.3g}x its tolerance {first.tolerance:.1e}")
    else:
        lines.append("INCONCLUSIVE: " + "; ".join(f"{r.name}: {r.reason}" for r in rungs.values() if r.reason))
    return "\n".join(lines)


def _share(x: float) -> str:
    """A share of a tolerance: ``12.5%``, or ``3.1e+04x`` when it is a hundred times over."""
    return f"{100 * x:.1f}%" if x < 100 else f"{x:.1e}x"


def run_from_parity_args(args) -> int:
    """``python -m harness.parity --train-steps K``: the parity command's options, read for training."""
    from harness.errors import InputError
    from harness.provenance import result_doc
    from harness.files import atomic_write_json
    from harness.runners import require, runner_settings

    frameworks = [require(f, "trains", "--train-steps") for f in args.frameworks.split(",") if f]
    reference = require(args.reference, "trains", "--train-steps") if args.reference else frameworks[0]
    candidates = [f for f in frameworks if f != reference]
    if len(candidates) != 1:
        raise InputError("--train-steps compares two frameworks: --frameworks torch,ms")
    if args.mode != "propagated" or args.load_outputs or args.save_outputs or args.input:
        raise InputError("--train-steps runs its own batches: no --mode isolated, --input, --save-outputs or "
                         "--load-outputs")
    shape = tuple(args.input_shape)
    if shape == (1, 3, 32, 224, 224):   # the forward parity's default: one clip cannot train BN
        shape = DEFAULT_SHAPE
    if shape[0] < 2:
        raise InputError("--train-steps: training-mode BN needs a batch of at least 2 (--input-shape 2,3,8,64,64)")
    if getattr(args, "candidate", None) or getattr(args, "weights", None):
        raise InputError("--train-steps trains our two implementations: no --candidate or --weights")
    if args.atol is not None:
        raise InputError("--train-steps holds each check to its own measured tolerance (harness.train_parity."
                         "TOLERANCES): no --atol")
    from frameworks.spec.arch import DEFAULT_PRESET
    from harness.checkpoints.sidecar import choose_arch

    cfg = choose_arch(args.arch, args.checkpoint, DEFAULT_PRESET, depth=args.depth, num_classes=args.num_classes).cfg
    req = TrainParityRequest(cfg=cfg, reference=reference, candidate=candidates[0], steps=args.train_steps,
                             shape=shape, seed=args.seed, checkpoint=args.checkpoint, trust=args.trust_checkpoint,
                             recipe=get_recipe(args.recipe or DEFAULT_RECIPE), device=args.device,
                             runner_settings=runner_settings(args), threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="nlparity-train-") as tmp:
        result = run(req, tmp, progress=lambda line: None if args.quiet else print(line, flush=True))
    print(format_summary(result, req))
    if args.json:
        atomic_write_json(args.json, result_doc("train_parity", to_json(result, req)))
    return 0 if result["verdict"] == "PASS" else 1
