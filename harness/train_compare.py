"""What training parity measures, as plain numpy: no framework, no file, no printing.

The framework processes (:mod:`harness.runners.training`) call these on their own arrays
and send back numbers, not arrays; :mod:`harness.train_parity` turns the numbers into
verdicts. Every error here is *scaled*: divided by a magnitude of the reference, never by
a reference element itself (a relative error against a near-zero reference means
nothing):

* :func:`module_scales`: a gradient is scaled by the largest ``|value|`` of its module
  (a convolution's or BatchNorm's whole set of gradients), so that a gradient that is
  analytically zero (a BN shift followed by another BN in training mode) is held to its
  module's scale, not to its own float32 noise;
* :func:`optimizer_errors`: an optimiser's state after each step against the recipe's SGD in
  float64 (:func:`frameworks.spec.train.sgd_reference`), in units of the rounding bound of
  the float32 operations that produced it (a share of 1 is what float32 can do at worst,
  before the few roundings of one update are added up);
* :func:`robust_errors`: a trajectory's tensors after ``K`` steps by relative L2 norm and by
  the median element error, statistics that a handful of diverging elements cannot move.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np

from frameworks.spec.train import TrainRecipe, sgd_reference

U32 = 2.0 ** -24   # float32's unit roundoff: a rounded operation is within U32 x |result|


def module_of(name: str) -> str:
    return name.rpartition(".")[0]


def module_scales(arrays: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Per name: the largest ``|value|`` among the arrays of the same module (at least 1e-30)."""
    by_module: Dict[str, float] = {}
    for name, value in arrays.items():
        key = module_of(name)
        by_module[key] = max(by_module.get(key, 0.0), float(np.abs(value).max()) if np.size(value) else 0.0)
    return {name: max(by_module[module_of(name)], 1e-30) for name in arrays}


def scaled_errors(got: Dict[str, np.ndarray], ref: Dict[str, np.ndarray], scales: Dict[str, float]
                  ) -> Dict[str, float]:
    """Per name: ``max |got - ref| / scale`` (inf where ``got`` is not finite)."""
    out = {}
    for name, r in ref.items():
        g = np.asarray(got[name], dtype=np.float64)
        if not np.all(np.isfinite(g)):
            out[name] = float("inf")
            continue
        out[name] = float(np.abs(g - r).max()) / scales[name] if np.size(r) else 0.0
    return out


def robust_errors(got: np.ndarray, ref: np.ndarray, scale: float) -> Dict[str, float]:
    """``rel_l2`` = ``rms(got - ref) / scale``, ``median`` = median ``|got - ref|`` / ``scale``,
    ``max`` = max ``|got - ref|`` / ``scale``, with ``scale`` a magnitude of the reference
    (the module's, see :func:`module_rms`), never of the compared tensor alone: a BN shift
    whose gradient is analytically 0 moves by float32 noise only, and its own norm would
    make that noise look like a 100% error."""
    g = np.asarray(got, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if not np.all(np.isfinite(g)):
        return {"rel_l2": float("inf"), "median": float("inf"), "max": float("inf")}
    d = np.abs(g - r)
    scale = max(scale, 1e-30)
    return {"rel_l2": float(np.sqrt(np.mean(d * d))) / scale, "median": float(np.median(d)) / scale,
            "max": float(d.max()) / scale}


def module_rms(arrays: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Per name: the largest root-mean-square of the arrays of its module."""
    by_module: Dict[str, float] = {}
    for name, value in arrays.items():
        v = np.asarray(value, dtype=np.float64)
        by_module[module_of(name)] = max(by_module.get(module_of(name), 0.0),
                                         float(np.sqrt(np.mean(v * v))) if v.size else 0.0)
    return {name: max(by_module[module_of(name)], 1e-30) for name in arrays}


# --------------------------------------------------------------------- the optimiser alone
def optimizer_inputs(shapes: Dict[str, Tuple[int, ...]], steps: int, seed: int = 0
                     ) -> Tuple[Dict[str, np.ndarray], List[Dict[str, np.ndarray]]]:
    """Parameters and ``steps`` gradients made so that every term of an SGD update is seen by
    float32: parameters N(0, 1e-3), gradients N(0, 1e-2) with one element in ten (and the first) exactly 0.
    With the recipe's lr (1e-4 .. 3e-4) an update is ~1e-6, thousands of ulps of its
    parameter (so an lr off by 1% moves it by tens of ulps), and where a gradient is 0 the
    momentum buffer is the decay alone (``wd * p``, measured exactly). (Real weights and
    gradients would hide both: ``lr * wd * p`` is a quarter of an ulp of ``p``.)"""
    rng = np.random.default_rng([seed, 7])
    params = {n: np.float32(1e-3) * rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    grads = []
    for _ in range(steps):
        step = {}
        for n, s in shapes.items():
            g = np.float32(1e-2) * rng.standard_normal(s, dtype=np.float32)
            g[rng.random(s, dtype=np.float32) < 0.1] = 0.0
            g.flat[0] = 0.0          # at least one, in the smallest tensor too
            step[n] = g
        grads.append(step)
    return params, grads


OPTIMIZER_SAMPLE = 1 << 16   # elements per tensor compared with the float64 SGD (evenly strided)


def optimizer_errors(params: Dict[str, np.ndarray], grads: List[Dict[str, np.ndarray]], lrs: Iterable[float],
                     recipe: TrainRecipe, decay: Dict[str, float], got: List[Dict[str, Tuple[np.ndarray, np.ndarray]]]
                     ) -> Dict[str, dict]:
    """An optimiser's parameters and momentum buffers after each step (``got[k][name] =
    (p, buf)``) against the recipe's SGD in float64 on the same float32 inputs.

    Per name: ``buf`` and ``param``: the largest error over the steps in units of the
    float32 rounding bound of the operations that produced it (see below), with the step
    where it is largest; ``decay``: the weight decay measured where the first step's gradient
    is exactly 0 (there ``buf_1 = wd * p_0``); and ``__lr__``: per step, the learning rate
    measured from the update, ``-sum(dp * u) / sum(u * u)`` with ``u`` the float64 buffer,
    over every parameter. Each tensor is compared on up to :data:`OPTIMIZER_SAMPLE` evenly
    strided elements (its designed values are independent draws; an optimiser treats every
    element alike).

    The constants are the float32 numbers both frameworks compute with (momentum, decay,
    lr); the bound counts one rounding (``U32`` of its result) per operation of ``d = g +
    wd p``, ``buf = m buf + d``, ``p = p - lr buf`` and carries the previous step's error::

        e_buf_k = U32 (2 |g| + 3 |wd p_(k-1)| + 3 |m buf_(k-1)|) + m e_buf_(k-1) + wd e_p_(k-1)
        e_p_k   = U32 (|p_(k-1)| + 2 |lr buf_k|) + e_p_(k-1) + lr e_buf_k
    """
    as32 = lambda v: float(np.float32(v))   # noqa: E731
    lrs = [as32(x) for x in lrs]
    recipe32 = recipe.replace(momentum=as32(recipe.momentum))
    decay32 = {n: as32(v) for n, v in decay.items()}
    pick = {n: slice(None, None, max(1, -(-np.size(p) // OPTIMIZER_SAMPLE))) for n, p in params.items()}
    sample = lambda n, a: np.asarray(a, dtype=np.float64).ravel()[pick[n]]   # noqa: E731
    oracle = sgd_reference({n: sample(n, p) for n, p in params.items()},
                           [{n: sample(n, g[n]) for n in params} for g in grads], lrs, recipe32, decay32)
    out: Dict[str, dict] = {}
    num, den = np.zeros(len(grads)), np.zeros(len(grads))
    for name, p0 in params.items():
        steps = [(sample(name, g_k[name]), oracle[k][name], (sample(name, got[k][name][0]),
                                                              sample(name, got[k][name][1])))
                 for k, g_k in enumerate(grads)]
        out[name], moved = _tensor_errors(sample(name, p0), steps, lrs, recipe32.momentum, decay32[name])
        for k, (n, d) in enumerate(moved):
            num[k] += n
            den[k] += d
        zero = steps[0][0] == 0
        b1, p = steps[0][2][1], sample(name, p0)
        use = zero & (np.abs(p) > 0)
        out[name].update(decay=float(np.median(b1[use] / p[use])) if use.any() else float("nan"),
                         decay_expected=decay[name])
    out["__lr__"] = {"applied": [float(-n / d) if d > 0 else float("nan") for n, d in zip(num, den)],
                     "expected": lrs[:len(grads)]}
    return out


def _tensor_errors(p0: np.ndarray, steps, lrs: List[float], m: float, wd: float) -> Tuple[dict, list]:
    """One tensor's worst ``buf`` and ``param`` error over the steps in units of the rounding
    bound, and per step the two sums the applied lr is measured from. ``steps``: per step
    (gradient, (oracle p, oracle buf), (got p, got buf))."""
    p_prev, b_prev = p0, np.zeros_like(p0)
    e_p, e_b = np.zeros_like(p0), np.zeros_like(p0)
    worst = {"buf": (0.0, 0), "param": (0.0, 0)}
    got_prev, moved = p0, []
    for k, (g, (p_ref, b_ref), (p_got, b_got)) in enumerate(steps):
        e_b = U32 * (2 * np.abs(g) + 3 * np.abs(wd * p_prev) + 3 * np.abs(m * b_prev)) + m * e_b + wd * e_p
        e_p = U32 * (np.abs(p_prev) + 2 * np.abs(lrs[k] * b_ref)) + e_p + lrs[k] * e_b
        for quantity, value, ref, bound in (("buf", b_got, b_ref, e_b), ("param", p_got, p_ref, e_p)):
            share = float(np.max(np.abs(value - ref) / np.maximum(bound, 1e-45))) if np.all(np.isfinite(value)) \
                else float("inf")
            if share > worst[quantity][0]:
                worst[quantity] = (share, k + 1)
        moved.append((float(np.sum((p_got - got_prev) * b_ref)), float(np.sum(b_ref * b_ref))))
        got_prev, p_prev, b_prev = p_got, p_ref, b_ref
    return {"buf": worst["buf"][0], "buf_step": worst["buf"][1], "param": worst["param"][0],
            "param_step": worst["param"][1]}, moved


# --------------------------------------------------------------------- components alone
def bn_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 eps: float, momentum: float) -> Dict[str, np.ndarray]:
    """A BatchNorm in float64 on ``x`` (N, C, ...), as the spec defines it: in training mode the
    batch statistics normalise (biased variance) and the running statistics move by
    ``momentum`` (PyTorch's convention) towards the batch's (unbiased variance); then in
    inference mode with the updated running statistics."""
    x = np.asarray(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    n = x.size // x.shape[1]
    mu = x.mean(axis=axes)
    biased = x.var(axis=axes)
    w, b = (np.asarray(a, dtype=np.float64).reshape(shape) for a in (weight, bias))
    train = (x - mu.reshape(shape)) / np.sqrt(biased.reshape(shape) + eps) * w + b
    running_mean = (1 - momentum) * np.asarray(mean, dtype=np.float64) + momentum * mu
    running_var = (1 - momentum) * np.asarray(var, dtype=np.float64) + momentum * biased * n / (n - 1)
    evaluated = (x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps) * w + b
    return {"train_output": train, "running_mean": running_mean, "running_var": running_var,
            "eval_output": evaluated}


def cross_entropy_reference(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross entropy in float64 (no label smoothing, no class weights)."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_sum - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))


# --------------------------------------------------------------------- kinks, explained
def explain_flips(target: Dict[str, np.ndarray], base: Dict[str, np.ndarray], gradients_with,
                  kinks: Dict[str, np.ndarray], sites: Dict[str, List[str]], tolerance: float,
                  scales: Dict[str, float], order: List[str], max_rounds: int = 8, max_passes: int = 40
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], List[dict]]:
    """The ReLU / max-pool decisions ``target`` (a float32 step's gradients) took the other way.

    ``base`` is the float64 step's gradients; ``gradients_with(flips)`` recomputes them with
    the decisions of ``flips`` (site -> boolean array, a subset of ``kinks``, the elements
    within float32 rounding of their kink) taken the other way; ``sites`` maps each site to
    the parameters whose rows it touches first (:func:`frameworks.spec.arch.kink_sites`).

    While some gradient's error exceeds ``tolerance`` (scaled), the sites are tried in the
    order of the error left in their own first parameters (a flipped decision moves its own
    channel's rows by far the most; everything upstream only a little): for each, the
    float64 gradients with all its kinks flipped give the change each channel's kinks make
    to the site's first parameters, and a channel is taken as flipped only if that change
    reproduces ``target``'s own difference there (within half of it). Channels holding
    several kinks whose flips together do not match are tried kink by kink. The search stops
    when every gradient is within tolerance, when no site matches, or after ``max_passes``
    recomputations. Returns (the flips, the float64 gradients with them, and one record per
    flipped channel: site, channel, kinks flipped)."""
    flips: Dict[str, np.ndarray] = {}
    current = base
    found: List[dict] = []
    passes = 0
    for _ in range(max_rounds):
        errors = {n: _error(target[n], current[n], scales[n]) for n in order}
        if max(errors.values()) <= tolerance:
            break
        candidates = []
        for site, params in sites.items():
            mask = kinks.get(site)
            remaining = None if mask is None else mask & ~flips.get(site, np.zeros_like(mask))
            own = max(errors[p] for p in params)
            if remaining is not None and remaining.any() and own > tolerance:
                candidates.append((own, site, remaining))
        added = False
        for _, site, remaining in sorted(candidates, key=lambda c: -c[0]):
            if passes >= max_passes:
                break
            accepted, used = _match_site(site, remaining, flips, current, target, gradients_with, sites[site],
                                         tolerance, scales, max_passes - passes)
            passes += used
            for channel, mask in accepted:
                flips[site] = flips.get(site, np.zeros_like(remaining)) | mask
                found.append({"site": site, "channel": int(channel), "kinks": int(mask.sum())})
            if accepted:
                added = True
                break
        if not added or passes >= max_passes:
            break
        current = gradients_with(flips)
        passes += 1
    return flips, current, found


def _error(got: np.ndarray, ref: np.ndarray, scale: float) -> float:
    got = np.asarray(got, dtype=np.float64)
    return float(np.abs(got - ref).max()) / scale if np.all(np.isfinite(got)) else float("inf")


def _match_site(site, remaining, flips, current, target, gradients_with, params, tolerance, scales, budget):
    """The channels of ``site`` whose kinks, flipped, reproduce ``target``'s difference."""
    def change(mask) -> Dict[str, np.ndarray]:
        trial = dict(flips)
        trial[site] = flips.get(site, np.zeros_like(mask)) | mask
        grads = gradients_with(trial)
        return {p: grads[p] - current[p] for p in params}

    def matches(delta, channel) -> bool:
        main = max(params, key=lambda p: float(np.linalg.norm(delta[p][channel])) / scales[p])
        d = delta[main][channel]
        r = np.asarray(target[main][channel], dtype=np.float64) - current[main][channel]
        return (float(np.abs(d).max()) / scales[main] > tolerance
                and float(np.linalg.norm(r - d)) <= 0.5 * float(np.linalg.norm(d)))

    if budget < 1:
        return [], 0
    delta, used = change(remaining), 1
    accepted = []
    for channel in np.unique(np.nonzero(remaining)[1]):
        in_channel = np.zeros_like(remaining)
        in_channel[:, channel] = remaining[:, channel]
        if matches(delta, channel):
            accepted.append((channel, in_channel))
            continue
        elements = np.argwhere(in_channel)
        if len(elements) < 2 or len(elements) > 8:
            continue
        for element in elements:        # several kinks in the channel: one of them alone?
            if used >= budget:
                break
            single = np.zeros_like(remaining)
            single[tuple(element)] = True
            used += 1
            if matches(change(single), channel):
                accepted.append((channel, single))
                break
    return accepted, used
