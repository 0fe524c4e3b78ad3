"""Training-step parity: K SGD steps of the same network on the same batches in two
frameworks, compared per canonical parameter (``python -m harness.parity --train-steps K``).

Each framework runs in a child process (:mod:`harness.runners.child`, task ``train_steps``):
the same initial weights, the same K batches, dropout off, the recipe's lr array; torch
runs a third time in float64, the float32 noise floor. Per parameter, in canonical
order, the comparison holds (``<name>@<entry>``):

``grad1``      its gradient at step 1 (before weight decay)
``decay``      the weight decay the optimiser applied at step 1, measured: least squares of
               ``buf_1 - g_1 = wd * p_0`` (the momentum buffer after one step is ``d = g + wd p``)
``lr``         the learning rate each step applied, measured: least squares of
               ``p_k - p_(k-1) = -lr_k buf_k`` (K values)
``final``      the update after K steps, ``p_K - p_0`` (the weights after K steps, minus the
               common start)
``momentum``   the momentum buffer after K steps
``running1``   (BN buffers) the running statistic after step 1
``final``      (BN buffers) the running statistic after K steps

and then ``loss@k`` for every step. Tolerances (Polygraphy's rule, as the forward parity;
``atol`` scaled by the largest ``|reference|`` of the parameter's module and entry):

* entries that one forward pass decides, or that the optimiser's rules decide exactly
  (``decay``, ``lr``, ``running1``, ``loss@1``): tight; a port's classic mistakes (weight
  decay on BN in one framework, MindSpore's BN momentum given PyTorch's number, the lr
  schedule one step off) move them by 10% to 900%, and they are named at the first
  parameter they touch;
* entries that depend on a backward pass (``grad1``, ``final``, ``momentum``, the BN
  statistics after K steps, ``loss@k>1``): looser, and a few elements may exceed them
  (:func:`kink_allowance`), because a ReLU or max-pool input within float32 rounding of its
  kink goes one way in one run and the other way in the next: torch float32 against float64
  showed it in about one step of two on a test-sized clip; one flip moved a res5 channel's
  gradient by up to 17% of the tensor's largest value, and everything upstream by ~1e-3.
  Without a flip, float32 and float64 agree to ~1e-5 there (see :data:`TOLERANCES`).

The torch float32-vs-float64 comparison of the same steps is printed and saved beside
the framework comparison, so each run shows its own floor.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from frameworks.spec.arch import I3DNLConfig, arch_hash, parameter_specs
from frameworks.spec.train import (TrainRecipe, get_recipe, is_running_statistic, lr_schedule, parameter_kind,
                                   parity_weights, recipe_hash, trainable_names)

DEFAULT_SHAPE = (2, 3, 8, 64, 64)
# Entry kind -> scaled atol. Measured at 2x3x8x64x64, lr 3e-4, parity_weights, seeds 0-2,
# one thread, torch 2.13 float32 vs float64 and MindSpore 2.10 graph vs torch float32 (six
# comparisons), worst over every parameter: loss@1 1.7e-7; running1 (forward only) 4.3e-6;
# decay 5.8e-5 of the recipe's weight decay; lr 8.7e-3 (float32's rounding of
# p_k - p_(k-1), a few hundred ulps at lr 3e-4). The kink-exposed kinds, with the kink
# allowance below (0.1% of a tensor's elements, at least one in 64): the smallest atol that
# passed all six comparisons was grad1 3e-2, final 0.2, momentum 0.2, running 2e-3 and
# loss@k>1 1e-4 (one grid point below each failed at least one comparison; without the
# allowance one MindSpore run needed 0.51 for a momentum buffer). The defaults are 2-10x those.
TOLERANCES = {"loss1": 1e-5, "running1": 1e-4, "decay": 1e-2, "lr": 5e-2,
              "grad1": 0.1, "final": 0.4, "momentum": 0.4, "running": 5e-3, "loss": 3e-4}
TIGHT = ("loss1", "running1", "decay", "lr")
# entries a flipped ReLU / max-pool decision can move: a handful of elements may exceed the
# tolerance (a flip changes the positions it decides, i.e. a channel or two) without failing
KINK_SHARE = 1e-3


def kink_allowance(n_elements: int) -> int:
    """Elements of a kink-exposed entry allowed beyond its tolerance: 0.1% of them, and
    at least one in a tensor of 64 or more (a BN of 64 channels has one per channel)."""
    return max(int(KINK_SHARE * n_elements), 1 if n_elements >= 64 else 0)
PLANTS = {"wd_on_bn": "weight decay applied to BN scales and shifts in the candidate only",
          "bn_momentum": "the candidate's BN momentum given in the other framework's convention (0.9 for 0.1)",
          "lr_off_by_one": "the candidate's learning rate schedule one step ahead"}


# ============================================================================ child side
def run_train_steps(framework: str, cfg: I3DNLConfig, weights: Dict[str, np.ndarray], recipe: TrainRecipe,
                    lrs: np.ndarray, batches: Dict[str, np.ndarray], steps: int, *, device: str = "cpu",
                    ms_mode: str = "graph", threads: Optional[int] = None, float64: bool = False
                    ) -> Tuple[Dict[str, np.ndarray], dict]:
    """Train ``steps`` steps; the entries above as arrays (``<name>@<entry>``), and what
    the framework itself says it applied (lr per step, BN momentum, weight decay by name)."""
    from harness.training import make_trainer

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    trainer = make_trainer(framework, cfg, recipe, lrs, weights, device=device, ms_mode=ms_mode, threads=threads,
                           float64=float64, return_grads=True)
    names = trainable_names(trainer.cfg)
    out: Dict[str, np.ndarray] = {}
    start = {n: np.asarray(v, dtype=np.float64) for n, v in trainer.weights().items()}
    previous = {n: start[n] for n in names}
    losses, lr_used, lr_measured = [], [], {n: [] for n in names}
    for k in range(steps):
        loss, lr = trainer.step(batches[f"x{k}"], batches[f"y{k}"])
        losses.append(loss)
        lr_used.append(lr)
        now = {n: np.asarray(v, dtype=np.float64) for n, v in trainer.weights().items()}
        buffers = {n: np.asarray(v, dtype=np.float64) for n, v in trainer.momentum_buffers().items()}
        for n in names:
            b = buffers[n]
            denom = float((b * b).sum())
            lr_measured[n].append(-float(((now[n] - previous[n]) * b).sum()) / denom if denom > 0 else 0.0)
        if k == 0:
            grads = trainer.gradients()
            for n in names:
                g = np.asarray(grads[n], dtype=np.float64)
                out[f"{n}@grad1"] = g
                out[f"{n}@decay"] = np.array(measured_decay(buffers[n], g, start[n]))
            for n, v in now.items():
                if is_running_statistic(n):
                    out[f"{n}@running1"] = v
        previous = {n: now[n] for n in names}
    final = now                           # the last step's weights and buffers (steps >= 1)
    for n in parameter_specs(trainer.cfg):
        if is_running_statistic(n):
            out[f"{n}@final"] = final[n]
        else:
            out[f"{n}@lr"] = np.asarray(lr_measured[n])
            out[f"{n}@final"] = final[n] - start[n]
            out[f"{n}@momentum"] = np.asarray(buffers[n], dtype=np.float64)
    for k, loss in enumerate(losses):
        out[f"loss@{k + 1}"] = np.array(loss)
    if not float64:   # float32 arrays travel as float32 (the real network's are 35M values each)
        out = {k: v.astype(np.float32) if v.ndim and v.dtype == np.float64 and not k.endswith(("@lr", "@decay"))
               else v for k, v in out.items()}
    conventions = {"lr_used": lr_used, "bn_momentum": trainer.bn_momentum(),
                   "weight_decay": trainer.weight_decay_by_name(), "float64": float64}
    record = {"versions": trainer.runner.versions(), "hardware": trainer.runner.hardware()}
    return out, {**conventions, **record}


def measured_decay(buffer: np.ndarray, grad: np.ndarray, p0: np.ndarray) -> float:
    """The weight decay behind ``buffer = grad + wd * p0`` (the momentum buffer after one
    step), by least squares over the elements where float32 can resolve it: where
    ``|grad| <= 8 |p0|``, float32's rounding of ``grad + wd p0`` is below 1% of ``wd p0``
    for any ``wd >= 1e-4`` (elsewhere the decay drowns in the gradient's last bit)."""
    buffer, grad, p0 = (np.asarray(a, dtype=np.float64).ravel() for a in (buffer, grad, p0))
    use = np.abs(grad) <= 8 * np.abs(p0)
    if not use.any():
        use = np.abs(p0) > 0
    denom = float((p0[use] ** 2).sum())
    return float(((buffer[use] - grad[use]) * p0[use]).sum()) / denom if denom > 0 else 0.0


# ============================================================================ parent side
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
    recipe: TrainRecipe = None
    device: str = "cpu"
    ms_mode: str = "graph"
    atol: Optional[float] = None
    rtol: float = 1e-5
    plants: Tuple[str, ...] = ()
    # one thread per framework: repeatable, and robust on a shared machine (a 2-thread
    # OpenMP team on 2 busy cores ran torch's training step 10-30x slower, measured)
    threads: Optional[int] = 1
    floor: bool = True   # also run torch in float64 (the noise floor); the command always does

    def __post_init__(self) -> None:
        if self.recipe is None:
            self.recipe = get_recipe(dropout=0.0)

    @property
    def steps_per_epoch(self) -> int:
        # one warm-up epoch of K steps: every step gets its own learning rate
        return self.steps


def make_batches(req: TrainParityRequest) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(req.seed)
    out = {}
    for k in range(req.steps):
        out[f"x{k}"] = rng.standard_normal(tuple(req.shape)).astype(np.float32)
        out[f"y{k}"] = rng.integers(0, req.cfg.num_classes, req.shape[0]).astype(np.int64)
    return out


def planted(req: TrainParityRequest, recipe: TrainRecipe, lrs: np.ndarray) -> Tuple[TrainRecipe, np.ndarray]:
    """The candidate's recipe and lr array with the planted faults applied."""
    for plant in req.plants:
        if plant == "wd_on_bn":
            recipe = recipe.replace(no_decay=tuple(k for k in recipe.no_decay if k != "bn"))
        elif plant == "bn_momentum":
            recipe = recipe.replace(bn_momentum=1.0 - recipe.bn_momentum)
        elif plant == "lr_off_by_one":
            lrs = np.concatenate([lrs[1:], lrs[-1:]])
    return recipe, lrs


def _entry_kind(entry: str) -> str:
    name, _, kind = entry.rpartition("@")
    if name == "loss":
        return "loss1" if kind == "1" else "loss"
    if kind == "final" and is_running_statistic(name):
        return "running"
    return kind


def entry_names(cfg: I3DNLConfig, steps: int) -> List[str]:
    names = []
    for n in parameter_specs(cfg):
        if is_running_statistic(n):
            names += [f"{n}@running1", f"{n}@final"]
        else:
            names += [f"{n}@grad1", f"{n}@decay", f"{n}@lr", f"{n}@final", f"{n}@momentum"]
    return names + [f"loss@{k + 1}" for k in range(steps)]


def tolerances(reference: Dict[str, np.ndarray], names: Sequence[str], recipe: TrainRecipe,
               atol: Optional[float] = None) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Per entry, the atol the comparator scales by the entry's own max |reference|: the
    kind's tolerance re-scaled to the module's largest |reference| of that entry (so a
    gradient that is analytically zero, such as a BN shift followed by another BN in
    training mode, is held to its module's scale, not to its own float32 noise); ``decay``
    is scaled by the recipe's weight decay. Returns (atol per entry, scale per entry)."""
    module_scale: Dict[Tuple[str, str], float] = {}
    for entry in names:
        name, _, kind = entry.rpartition("@")
        key = (name.rpartition(".")[0], _entry_kind(entry))
        module_scale[key] = max(module_scale.get(key, 0.0), float(np.abs(reference[entry]).max()))
    out, scales = {}, {}
    for entry in names:
        name, _, kind = entry.rpartition("@")
        tol = TOLERANCES[_entry_kind(entry)] if atol is None else atol
        own = float(np.abs(reference[entry]).max())
        own = own if own > 0 else 1.0
        if kind == "decay":
            scale = max(recipe.weight_decay, 1e-12)
        else:
            scale = max(module_scale[(name.rpartition(".")[0], _entry_kind(entry))], own * 1e-30)
        out[entry] = tol * scale / own
        scales[entry] = scale
    return out, scales


def compare(reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray], cfg: I3DNLConfig, steps: int,
            recipe: TrainRecipe, reference_name: str, candidate_name: str, atol: Optional[float] = None,
            rtol: float = 1e-5):
    from harness.comparator import compare_outputs

    names = entry_names(cfg, steps)
    per_entry, scales = tolerances(reference, names, recipe, atol)
    report = compare_outputs(reference, candidate, names, atol=None, rtol=rtol, per_layer_atol=per_entry,
                             reference_name=reference_name, candidate_name=candidate_name,
                             mode=f"train {steps} steps")
    for layer in report.layers:
        if layer.passed or _entry_kind(layer.name) in TIGHT or not np.isfinite(layer.max_abs):
            continue
        n = int(np.prod(layer.shape)) if layer.shape else 1
        beyond = int(round((1.0 - layer.within) * n))
        if beyond <= kink_allowance(n):
            layer.passed = True
            layer.note = (f"{beyond} of {n} elements beyond atol, within the kink allowance "
                          f"({kink_allowance(n)}: ReLU / max-pool decisions flipped by float32 rounding)")
    report.scales = scales   # kept for kind_summary: errors in units of each module's scale
    report.kind_atol = {k: (TOLERANCES[k] if atol is None else atol) for k in TOLERANCES}
    return report


def first_failing_parameter(report) -> Optional[str]:
    first = report.first_failure
    return None if first is None else first.rpartition("@")[0]


def kind_summary(report) -> List[dict]:
    """Per entry kind: how many, the worst scaled error (against the module's scale) and
    where, the tolerance, how many fail."""
    rows: Dict[str, dict] = {}
    for layer in report.layers:
        kind = _entry_kind(layer.name)
        row = rows.setdefault(kind, {"kind": kind, "n": 0, "failed": 0, "worst": 0.0, "worst_entry": None,
                                     "median": [], "tolerance": report.kind_atol.get(kind)})
        module_relative = layer.max_abs / report.scales[layer.name]
        row["n"] += 1
        row["failed"] += 0 if layer.passed else 1
        row["median"].append(module_relative)
        if module_relative > row["worst"] or row["worst_entry"] is None:
            row["worst"], row["worst_entry"] = module_relative, layer.name
    for row in rows.values():
        row["median"] = float(np.median(row["median"])) if row["median"] else 0.0
    order = list(TOLERANCES)
    return sorted(rows.values(), key=lambda r: order.index(r["kind"]) if r["kind"] in order else 99)


def run(req: TrainParityRequest, workdir: str, cache: Optional[dict] = None) -> dict:
    """Run the three children (reference float32, candidate float32, torch float64) and
    compare; returns the result's parts. ``cache`` (a dict kept by the caller) reuses the
    runs of an earlier call with the same framework, recipe, lrs, batches and weights."""
    from harness.checkpoints.io import write_npz
    from harness.runners import runner_options
    from harness.runners.child import Job, Task, load_arrays, run_job

    recipe = req.recipe
    lrs = lr_schedule(recipe, req.steps_per_epoch, total_steps=req.steps + 1)
    cand_recipe, cand_lrs = planted(req, recipe, lrs)
    batches = make_batches(req)
    batches_path = os.path.join(workdir, "batches.npz")
    write_npz(batches_path, batches)
    weights_path = os.path.join(workdir, "weights.npz")
    if req.checkpoint:
        from harness.checkpoints import check_runnable, load_weights

        loaded = load_weights(req.checkpoint, req.cfg, trust=req.trust)
        check_runnable(loaded.arrays, req.checkpoint)
        weights_label = loaded.describe()
        start = loaded.arrays
    else:
        weights_label = f"parity weights (seed {req.seed}; frameworks.spec.train.parity_weights)"
        start = parity_weights(req.cfg, req.seed)
    write_npz(weights_path, start)
    print(f"weights: {weights_label}", flush=True)

    runs, outputs = {}, {}
    plan = [("reference", req.reference, recipe, lrs, False), ("candidate", req.candidate, cand_recipe, cand_lrs, False),
            ("float64", "torch", recipe, lrs, True)][:3 if req.floor else 2]
    for role, fw, rec, rates, f64 in plan:
        key = (fw, recipe_hash(rec), rates.tobytes(), f64, tuple(req.shape), req.seed, req.checkpoint, req.steps,
               arch_hash(req.cfg), req.ms_mode)
        if cache is None or key not in cache:
            out = os.path.join(workdir, f"{role}-{len(cache or {})}.npz")
            task = Task("train_steps", out=out, steps=req.steps, batches=batches_path, recipe=rec.to_dict(),
                        lrs=[float(x) for x in rates], float64=f64)
            record = run_job(Job(fw, req.cfg, device=req.device, threads=req.threads,
                                 options=runner_options(fw, req.ms_mode), weights=weights_path,
                                 tasks=[task]), workdir, f"{role}-{len(cache or {})}")["tasks"][0]
            info = {"framework": fw, "float64": f64, **{k: v for k, v in record.items()
                                                          if k in ("versions", "hardware", "lr_used", "bn_momentum",
                                                                   "train_s")},
                    "weight_decay_by_kind": _decay_by_kind(record["weight_decay"])}
            entry = (load_arrays(out), info)
            if cache is not None:
                cache[key] = entry
        else:
            entry = cache[key]
        outputs[role], runs[role] = entry
    report = compare(outputs["reference"], outputs["candidate"], req.cfg, req.steps, recipe, req.reference,
                     req.candidate, req.atol, req.rtol)
    floor = compare(outputs["float64"], outputs["reference"], req.cfg, req.steps, recipe, "torch float64",
                    f"{req.reference} float32", req.atol, req.rtol) if req.floor else None
    if floor is not None:   # each entry's own float32 error against float64, as the forward parity shows it
        for mine, own in zip(report.layers, floor.layers):
            mine.floor = own.scaled_max_abs
    conventions = _conventions(outputs, runs, start, req.cfg, trainable_names(req.cfg))
    return {"report": report, "floor": floor, "runs": runs, "conventions": conventions, "lrs": lrs[:req.steps],
            "weights": weights_label, "recipe": recipe, "candidate_recipe": cand_recipe}


def _decay_by_kind(by_name: Dict[str, float]) -> Dict[str, List[float]]:
    out: Dict[str, set] = {}
    for name, value in by_name.items():
        out.setdefault(parameter_kind(name), set()).add(value)
    return {k: sorted(v) for k, v in sorted(out.items())}


def _conventions(outputs, runs, start: Dict[str, np.ndarray], cfg: I3DNLConfig, names: List[str]) -> dict:
    """What each framework applied, measured from its own arrays: lr per step (median over
    parameters), weight decay per parameter kind (min, max), BN momentum (its running-mean
    update after step 1 relative to the reference's, times the reference's momentum)."""
    out = {}
    ref_m = runs["reference"]["bn_momentum"]["new_batch_weight"]
    for role in [r for r in ("reference", "candidate", "float64") if r in outputs]:
        arrays = outputs[role]
        lr_eff = np.median(np.stack([arrays[f"{n}@lr"] for n in names]), axis=0)
        decay: Dict[str, List[float]] = {}
        for n in names:
            decay.setdefault(parameter_kind(n), []).append(float(arrays[f"{n}@decay"]))
        ratios = []
        for n in parameter_specs(cfg):
            if n.endswith("running_mean"):
                r0 = start[n].astype(np.float64)
                mine, ref = arrays[f"{n}@running1"] - r0, outputs["reference"][f"{n}@running1"] - r0
                mask = np.abs(ref) > 1e-3 * max(float(np.abs(ref).max()), 1e-30)
                if mask.any():
                    ratios.append(float(np.median(mine[mask] / ref[mask])))
        momentum = float(np.median(ratios) * ref_m[0]) if ratios and len(ref_m) == 1 else None
        out[role] = {"lr_used": runs[role].get("lr_used"), "lr_measured": [float(x) for x in lr_eff],
                     "weight_decay_measured": {k: [float(np.min(v)), float(np.max(v))] for k, v in sorted(decay.items())},
                     "weight_decay_configured": runs[role].get("weight_decay_by_kind"),
                     "bn_momentum_measured": momentum, "bn_momentum": runs[role].get("bn_momentum")}
    return out


# ============================================================================ printing
def format_summary(result: dict, req: TrainParityRequest) -> str:
    from harness.comparator import format_report

    report, floor = result["report"], result["floor"]
    lines = [f"training-step parity: {req.candidate} vs {req.reference}, {req.steps} SGD steps, batch "
             f"{'x'.join(map(str, req.shape))}, {req.cfg.name}; weights: {result['weights']}"]
    if req.plants:
        lines.append("PLANTED in the candidate: " + "; ".join(PLANTS[p] for p in req.plants))
    lines.append("")
    lines.append("what each framework applied (measured from its own arrays):")
    lines.append(f"  {'':10s} {'step':>4s} {'spec lr':>11s} " + " ".join(f"{r:>24s}" for r in ("reference", "candidate",
                                                                                                "float64")))
    conv = result["conventions"]
    roles = [r for r in ("reference", "candidate", "float64") if r in conv]
    for k in range(req.steps):
        cells = []
        for role in roles:
            c = conv[role]
            used = c["lr_used"][k] if c["lr_used"] else float("nan")
            cells.append(f"{used:.4e} ({c['lr_measured'][k]:.4e})")
        lines.append(f"  {'lr':10s} {k + 1:4d} {result['lrs'][k]:11.4e} " + " ".join(f"{c:>24s}" for c in cells))
    for kind in ("weight", "bias", "bn"):
        cells = []
        for role in roles:
            lo, hi = conv[role]["weight_decay_measured"].get(kind, [float("nan")] * 2)
            cells.append(f"{lo:.2e}..{hi:.2e}")
        lines.append(f"  {'decay ' + kind:10s} {'':4s} {'':11s} " + " ".join(f"{c:>24s}" for c in cells))
    cells = []
    for role in roles:
        bn = conv[role]["bn_momentum"] or {}
        measured = conv[role]["bn_momentum_measured"]
        cells.append(f"{bn.get('constructor', ['?'])[0]!s}->{measured:.4f}" if measured is not None else "?")
    lines.append(f"  {'BN moment.':10s} {'':4s} {'':11s} " + " ".join(f"{c:>24s}" for c in cells))
    lines.append("  (lr: the optimiser's (measured from p_k - p_(k-1) = -lr buf_k); decay: min..max per parameter "
                 "kind, measured from buf_1 - g_1; BN momentum: the constructor's number -> the weight of the new "
                 "batch, measured)")
    lines.append("")
    lines.append("per kind (worst error as a fraction of the module's largest |reference|; floor = torch float32 "
                 "vs float64 of the same steps):")
    lines.append(f"  {'kind':9s} {'n':>4s} {'median':>9s} {'worst':>9s} {'floor med':>9s} {'floor max':>9s} "
                 f"{'atol':>7s} {'failed':>6s}  worst entry")
    floor_rows = {r["kind"]: r for r in kind_summary(floor)} if floor is not None else {}
    for row in kind_summary(report):
        f = floor_rows.get(row["kind"], {})
        lines.append(f"  {row['kind']:9s} {row['n']:4d} {row['median']:9.1e} {row['worst']:9.1e} "
                     f"{f.get('median', float('nan')):9.1e} {f.get('worst', float('nan')):9.1e} "
                     f"{row['tolerance'] or 0:7.0e} {row['failed']:6d}  {row['worst_entry']}")
    failing = [layer for layer in report.layers if not layer.passed]
    if failing:
        lines.append("")
        import dataclasses

        shown = dataclasses.replace(report, layers=failing[:20], logits={})
        lines.append(format_report(shown).rsplit("\n", 1)[0])
        if len(failing) > 20:
            lines.append(f"... and {len(failing) - 20} more failing entries (all in --json)")
    lines.append("")
    if report.passed:
        lines.append(f"PASSED: {req.candidate} trains like {req.reference}: every one of {len(report.layers)} "
                     f"entries within tolerance")
    else:
        lines.append(f"FAILED: {len(failing)} of {len(report.layers)} entries out of tolerance; first failing "
                     f"parameter: {first_failing_parameter(report)} ({report.first_failure})")
    return "\n".join(lines)


def run_from_parity_args(args) -> int:
    """``python -m harness.parity --train-steps K``: the parity command's options, read for training."""
    from harness.cli import InputError, result_doc, utc_now
    from harness.files import atomic_write_json
    from harness.runners import canonical_framework

    frameworks = [canonical_framework(f) for f in args.frameworks.split(",") if f]
    reference = canonical_framework(args.reference) if args.reference else frameworks[0]
    candidates = [f for f in frameworks if f != reference]
    if reference == "mmaction2" or "mmaction2" in candidates:
        raise InputError("--train-steps compares our two implementations: --frameworks torch,ms")
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
    from frameworks.spec.arch import DEFAULT_PRESET
    from harness.checkpoints.sidecar import choose_arch

    cfg = choose_arch(args.arch, args.checkpoint, DEFAULT_PRESET, depth=args.depth, num_classes=args.num_classes).cfg
    plants = tuple(p for p in (getattr(args, "train_plant", None) or "").split(",") if p)
    bad = [p for p in plants if p not in PLANTS]
    if bad:
        raise InputError(f"unknown plant {bad[0]!r}; one of {', '.join(PLANTS)}")
    req = TrainParityRequest(cfg, reference, candidates[0], args.train_steps, shape, args.seed, args.checkpoint,
                             args.trust_checkpoint, device=args.device, ms_mode=args.ms_mode, atol=args.atol,
                             rtol=args.rtol, plants=plants)
    with tempfile.TemporaryDirectory(prefix="nlparity-train-") as tmp:
        result = run(req, tmp)
    print(format_summary(result, req))
    report, floor = result["report"], result["floor"]
    if args.json:
        body = report.to_dict()
        body.update(first_failing_parameter=first_failing_parameter(report), arch=cfg.name, arch_hash=arch_hash(cfg),
                    seed=req.seed, checkpoint=req.checkpoint, weights=result["weights"], input_shape=list(req.shape),
                    steps=req.steps, recipe=req.recipe.to_dict(), recipe_hash=recipe_hash(req.recipe),
                    candidate_recipe=result["candidate_recipe"].to_dict(), plants=list(plants),
                    lr_schedule=[float(x) for x in result["lrs"]], conventions=result["conventions"],
                    tolerances=TOLERANCES, kinds=kind_summary(report), floor=floor.to_dict(),
                    floor_kinds=kind_summary(floor), device=req.device, date=utc_now(), runs=result["runs"])
        atomic_write_json(args.json, result_doc("train_parity", body))
    return 0 if report.passed else 1


# ============================================================================ the child's task
def run_train_task(job, task, weights: Dict[str, np.ndarray]) -> dict:
    """The ``train_steps`` / ``train_time`` tasks of :mod:`harness.runners.child`."""
    import time

    from harness.checkpoints.io import write_npz
    from harness.runners import RunnerError
    from harness.runners.child import load_arrays

    recipe = TrainRecipe.from_dict(task.recipe) if task.recipe else get_recipe(dropout=0.0)
    lrs = np.asarray(task.lrs, dtype=np.float32)
    ms_mode = job.options.get("mode", "graph")
    if task.op == "train_time":
        from harness.train_bench import time_training

        return time_training(job, task, weights, recipe, lrs)
    if not task.batches or not task.out or task.steps < 1:
        raise RunnerError("train_steps needs batches, out and steps >= 1")
    t0 = time.perf_counter()
    arrays, record = run_train_steps(job.framework, job.config, weights, recipe, lrs, load_arrays(task.batches),
                                     task.steps, device=job.device, ms_mode=ms_mode, threads=job.threads,
                                     float64=task.float64)
    write_npz(task.out, arrays)
    return {"op": task.op, "out": task.out, "train_s": time.perf_counter() - t0, **record}
