"""Benchmarks, results as data: ``forward`` (inference and training speed per framework)
and ``data`` (decoding throughput per decoder and loader workers, :mod:`harness.data.bench`).

    python -m harness.bench forward --frameworks torch,ms,mmaction2 --variants exact,fast --json results/b.json
    python -m harness.bench forward --frameworks torch --device gpu --dtype bfloat16 --variants fast \\
        --batch-sizes 1,16,64 --mode both --train-batch-sizes 8
    python -m harness.bench forward --mode train --recipe seed --ms-mode graph,pynative \\
        --train-input-shape 2,3,8,112,112 6,3,32,224,224 --warmup 1 --iters 3 --json results/train_step_cpu.json
    python -m harness.bench data --json results/bench_data_cpu.json

How ``forward`` measures
------------------------
As timm's ``benchmark.py`` does. Each configuration (framework x execution mode x dtype x
variant) is a warm process of its own (:class:`harness.runners.child.WarmChild`) holding
the network on benchmark weights (below) and a seeded batch already on the device. Per
batch size, each process first runs one step alone (the compile / autotune time,
``first_call_s``) and ``--warmup`` untimed-for-the-result steps (``warmup_s``); then the
processes take turns, ``--iters-per-turn`` steps each (A B C A B C ...), until each has
``--iters``: machine noise then falls on all of them alike and their ratios hold. Every
step ends with a device synchronisation before its clock stops. Thread counts are set
equal (``--threads``, default every core) and printed for every process.

A training step (``--mode train`` or ``both``) follows ``--recipe``:

  plain (default)  forward, loss, backward and the optimiser on a batch already on the
                   device, at a constant learning rate: the runner's timing step, as timm
                   times it, in every variant and dtype, mmaction2 (plain SGD) included.
                   The default: the one step every framework, variant and dtype has, so
                   ``--mode both --variants exact,fast --dtype float32,bfloat16`` and the
                   mmaction2 baseline keep meaning what they mean for inference.
  seed             the seed's whole training step as its trainer runs it
                   (:func:`harness.runners.training.time_training`: ``trainer.step`` on a
                   host batch, dropout 0.5, decay groups, SGD with momentum, the learning
                   rate of each step written), the exact network in float32, on the
                   frameworks that train; a configuration it does not apply to is recorded
                   with the reason.

Memory: before each shape larger than one a configuration has already run, the resident
memory its largest run so far took above its baseline (the process after its network,
or for the seed recipe its trainer, was built) is scaled by the ratio of clip elements;
when the estimates of the configurations running side by side exceed 70% of the memory
available now, a configuration is recorded with the reason instead of being tried
(``--sequential`` gives each the whole machine). The estimate errs high: fixed costs are
scaled with the rest.

Reported per run (flat fields): median / p90 / min / max latency, clips/s, ms per clip,
training ms per step, GFLOPs per clip from the spec (:mod:`frameworks.spec.flops`, checked
against torch's ``FlopCounterMode``), achieved GFLOP/s, its share of the CPU's theoretical
float32 peak (``cpu_peak``: vector lanes x FMA units x 2 x clock x cores used, the ISA and
clock read from /proc/cpuinfo and cpufreq, the FMA units assumed; each assumption named)
and of a GEMM probe run by the same process in the same dtype before and after the timing
(one 2048^2 matmul: a reference point, not a limit, so a network's kernels may beat it and
the share then reads "above the GEMM probe", never over 100%), peak host RSS and device
memory, CPU seconds per step, and the load average over the turns. A run is flagged noisy
when its max / min latency exceeds 1.5 or the load average exceeded the core count; one
line (``noise`` in the JSON) gives the verdict and, when frameworks ran several threads,
suggests ``--threads 1``, which holds on a busy machine where an OpenMP team swings.
``ratios`` compares every configuration with the baseline of its task, batch and dtype
(the oracle, mmaction2, where it ran, else the first).

dtypes: float32 (TF32 off), tf32 (CUDA only), bfloat16 and float16 (torch autocast;
MindSpore auto_mixed_precision O2). A configuration a framework or device cannot run is
recorded with its one-line reason and the others go on. Nothing is written when no
configuration ran: a good result file is never replaced by one holding only errors.

Exit status: 0 ok, 2 bad input or no configuration could run (one line).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from frameworks.spec.arch import DEFAULT_PRESET, PRESETS, arch_hash, get_preset, parameter_count, parameter_specs
from frameworks.spec.flops import gflops_per_clip, train_gflops_per_clip
from harness.errors import InputError
from harness.provenance import result_doc, utc_now
from harness.cli import add_device, check_clip_size, int_list, nonnegative_int, OneLineParser, positive_int, run_main
from harness.files import atomic_write_json, check_output_path

TASKS = {"infer": ("infer",), "train": ("train",), "both": ("infer", "train")}
DTYPES = ("float32", "tf32", "bfloat16", "float16")
RECIPES = ("plain", "seed")
GENERIC_TOKENS = {"exact": "the reference path (what the oracle, mmaction2, matches bit for bit)",
                  "fast": "every free rewrite the framework has (below)"}
NOISY_SPREAD = 1.5
MEMORY_SHARE = 0.7   # of the memory available now that the runs of one shape may be estimated to need
CPUINFO = "/proc/cpuinfo"
CPUFREQ_MAX = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
# float32 lanes of the widest vector unit the flags show, and whether it has fused multiply-add
_ISA = (("avx512f", "AVX-512", 16, True), ("fma", "AVX2+FMA", 8, True), ("avx", "AVX", 8, False),
        ("sse2", "SSE2", 4, False))


# ----------------------------------------------------------------------------- what each runner declares
# A runner class says what its bench configurations are (harness.runners.*Runner.bench_*):
# its variant tokens, what ``fast`` stands for, its own options, its execution modes, the
# variants it runs and its runner's keyword arguments. A runner that declares none of them
# is timed once per dtype, in mode "default", with ``dtype`` as its only option.
_DEFAULTS: Dict[str, Callable] = {
    "tokens": lambda cls: {}, "fast": lambda cls: (), "arguments": lambda cls: (),
    "modes": lambda cls, args: ["default"], "variants": lambda cls, variants: list(variants),
    "options": lambda cls, tokens, dtype, mode, args: {"dtype": dtype},
}


def declared(cls, what: str, *args):
    """A runner class's ``bench_<what>(*args)``, or the default of a runner that declares none."""
    method = getattr(cls, f"bench_{what}", None)
    return method(*args) if method is not None else _DEFAULTS[what](cls, *args)


def bench_runners() -> list:
    """Every registered runner class whose module imports (a runner module imports its
    framework only when it runs, so this is cheap)."""
    from harness.runners import RUNNERS, RunnerError, runner_class

    classes = []
    for name in RUNNERS:
        try:
            classes.append(runner_class(name))
        except (ImportError, RunnerError):
            continue
    return classes


# ----------------------------------------------------------------------------- options
def _shape(text: str) -> List[int]:
    shape = int_list(text)
    if len(shape) != 5:
        raise argparse.ArgumentTypeError("input shape must be N,C,T,H,W")
    return shape


def _choices(allowed, what: str):
    def parse(text: str) -> List[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; one of {', '.join(allowed)}")
        return list(dict.fromkeys(items))
    return parse


def _variants(tokens) -> Callable[[str], List[str]]:
    """The ``--variants`` type: each a ``+``-joined set of ``tokens``, optionally scoped to a
    framework or one of its modes (``torch:fast``, ``ms/graph:fast``)."""
    def parse(text: str) -> List[str]:
        from harness.runners import is_framework

        out = []
        for variant in (v.strip() for v in text.split(",") if v.strip()):
            scope, _, body = variant.rpartition(":")
            if scope and not is_framework(scope.split("/")[0]):
                raise argparse.ArgumentTypeError(f"variant {variant!r}: {scope!r} is not a framework or "
                                                 "framework/MODE")
            bad = [t for t in body.split("+") if t not in tokens]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown variant token {', '.join(bad)}; one of {', '.join(tokens)}")
            out.append(variant)
        if not out:
            raise argparse.ArgumentTypeError("no variant given")
        return list(dict.fromkeys(out))
    return parse


def variants_help(runners) -> str:
    """The variant tokens, in --help: the generic two, then each runner's own."""
    lines = ["Variants (--variants): each a '+'-joined set of tokens, optionally scoped to one framework or",
             "mode (exact,torch:fast,ms/graph:fast); every token is exact in real arithmetic and",
             "parity-tested against exact.", ""]
    lines += [f"  {token:<15} {text}" for token, text in GENERIC_TOKENS.items()]
    for cls in runners:
        tokens, fast = declared(cls, "tokens"), declared(cls, "fast")
        if declared(cls, "variants", ["fast"]) == ["exact"]:
            flags = [f[0] for f, _ in declared(cls, "arguments")]
            lines.append(f"  {cls.name}: exact only, whatever --variants says"
                         + (f" ({', '.join(flags)} apply to it)" if flags else ""))
            continue
        lines.append(f"  {cls.name}: fast = {'+'.join(fast) or 'exact'}")
        lines += [f"    {token:<13} {text}" for token, text in tokens.items()]
    return "\n".join(lines)


def build_forward_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    runners = bench_runners()
    tokens = list(GENERIC_TOKENS) + list(dict.fromkeys(t for cls in runners for t in declared(cls, "tokens")))
    p.add_argument("--frameworks", default="torch,ms",
                   help="comma-separated: " + ", ".join("/".join((cls.name,) + tuple(cls.aliases)) for cls in runners)
                        + " (default torch,ms)")
    p.add_argument("--mode", choices=list(TASKS), default="infer",
                   help="infer (forward passes), train (one training step, see --recipe), or both (default infer)")
    p.add_argument("--recipe", choices=RECIPES, default="plain",
                   help="the training step: plain (forward, loss, backward, optimiser on a device-resident batch, "
                        "every variant and dtype, mmaction2 too) or seed (the seed's whole step, its trainer's own: "
                        "dropout, decay groups, SGD, the lr of each step; exact float32) (default plain)")
    p.add_argument("--variants", type=_variants(tokens), default=["exact"], metavar="V[,V...]",
                   help="comma-separated, each a '+'-joined set of: " + ", ".join(tokens) + " (default exact; "
                        "see the list below)")
    p.add_argument("--dtype", type=_choices(DTYPES, "dtype"), default=["float32"], metavar="D[,D...]",
                   help="float32 (TF32 off), tf32 (CUDA), bfloat16, float16; several run side by side "
                        "(default float32)")
    add_device(p)
    p.add_argument("--input-shape", type=_shape, default=[1, 3, 32, 224, 224], metavar="N,C,T,H,W",
                   help="clip shape; N is replaced by each of --batch-sizes (default 1,3,32,224,224)")
    p.add_argument("--batch-sizes", type=int_list, metavar="B[,B...]",
                   help="clips per inference step (default: N of --input-shape)")
    p.add_argument("--json", metavar="OUT", help="write the results here (default: printed only)")
    _more_options(p.add_argument_group("more options"), runners)
    return p


def _more_options(g, runners) -> None:
    g.add_argument("--arch", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="PRESET",
                   help="the architecture preset (default %s)" % DEFAULT_PRESET)
    g.add_argument("--train-input-shape", type=_shape, nargs="+", metavar="N,C,T,H,W",
                   help="clip shapes of training steps, each run at its N or at each of --train-batch-sizes, "
                        "smallest first (default: --input-shape)")
    g.add_argument("--train-batch-sizes", type=int_list, metavar="B[,B...]",
                   help="clips per training step (default: N of each training shape)")
    g.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed steps after the first (default 2)")
    g.add_argument("--iters", type=positive_int, default=5,
                   help="timed steps per configuration and batch size (default 5)")
    g.add_argument("--iters-per-turn", type=positive_int, default=1,
                   help="steps a process times before the next one takes its turn (default 1)")
    g.add_argument("--sequential", action="store_true",
                   help="one process at a time, each closed before the next starts (for a GPU's memory, or the "
                        "seed's batch on a small machine); ratios are then not interleaved")
    g.add_argument("--threads", type=positive_int, help="threads of every framework (default: all cores)")
    seen = set()
    for cls in runners:   # each framework's own options (its modes, its run options)
        for flags, kwargs in declared(cls, "arguments"):
            if not seen.intersection(flags):
                g.add_argument(*flags, **kwargs)
                seen.update(flags)


def build_parser() -> argparse.ArgumentParser:
    description, _, details = __doc__.partition("How ``forward`` measures\n------------------------\n")
    p = OneLineParser(prog="python -m harness.bench", description=description,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{forward,data}")
    build_forward_parser(sub.add_parser(
        "forward", help="inference and training speed of each framework", description=description,
        epilog=variants_help(bench_runners()) + "\n\nHow forward measures\n\n" + details,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.add_parser("data", help="decode throughput (harness.data.bench; its own options: bench data --help)",
                   add_help=False)
    return p


def benchmark_weights(cfg, rng) -> dict:
    """Weights for timing: N(0, 1/fan_in) convs, identity BN, and every non-local output
    BN at zero scale (the papers' initialisation), so no activation overflows and the
    timing measures the real arithmetic."""
    weights = {}
    for name, shape in parameter_specs(cfg).items():
        if name.endswith("running_var"):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith(("running_mean", "bias")):
            weights[name] = np.zeros(shape, np.float32)
        elif ".bn" in name or name.startswith("stem.bn"):
            scale = 0.0 if ".non_local.bn." in name else 1.0
            weights[name] = np.full(shape, scale, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            weights[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return weights


# ----------------------------------------------------------------------------- configurations
@dataclass
class Config:
    """One timed process: a framework in one mode, dtype and variant."""

    framework: str
    mode: str                 # the runner's execution mode (eager; MindSpore graph or pynative)
    dtype: str
    variant: str
    options: dict
    label: str = ""
    child: object = None
    ready: dict = field(default_factory=dict)
    error: Optional[str] = None
    probes: List[dict] = field(default_factory=list)
    flops_counter: Optional[int] = None
    runs: Dict[str, List[dict]] = field(default_factory=dict)   # task -> rows
    baseline: Dict[str, float] = field(default_factory=dict)     # task -> peak RSS bytes before its first shape
    measured: Dict[str, Tuple[int, float]] = field(default_factory=dict)   # task -> (elements, bytes) of its largest


def runner_options(framework: str, variant: str, dtype: str, args, mode: Optional[str] = None) -> dict:
    """The runner options (harness.runners.*Runner keyword arguments) of one variant, as the
    framework's runner class declares them (``mode``: one of its bench modes, default the first)."""
    from harness.runners import RunnerError, runner_class

    cls = runner_class(framework)
    tokens = set(variant.split("+")) - {"exact"}
    if "fast" in tokens:
        tokens = (tokens - {"fast"}) | set(declared(cls, "fast"))
    unusable = sorted(tokens - set(declared(cls, "tokens")))
    if unusable:
        raise InputError(f"variant {variant!r}: {', '.join(unusable)} does not apply to {cls.name}")
    try:
        return declared(cls, "options", tokens, dtype, mode or declared(cls, "modes", args)[0], args)
    except RunnerError as exc:
        raise InputError(f"variant {variant!r}: {exc}") from None


def configurations(frameworks: List[str], args) -> List[Config]:
    from harness.runners import canonical_framework, runner_class

    configs = []
    for fw in frameworks:
        cls = runner_class(fw)
        variants = declared(cls, "variants", list(dict.fromkeys(args.variants)))
        for mode, dtype, scoped in itertools.product(declared(cls, "modes", args), args.dtype, variants):
            scope, _, variant = scoped.rpartition(":")
            if scope:
                scope_fw, _, scope_mode = scope.partition("/")
                if canonical_framework(scope_fw) != fw or scope_mode not in ("", mode):
                    continue
            options = runner_options(fw, variant, dtype, args, mode)
            label = "/".join([fw, mode] + ([variant] if variant != "exact" else [])
                             + ([dtype] if dtype != "float32" else []))
            configs.append(Config(fw, mode, dtype, variant, options, label))
    return configs


@dataclass
class Steps:
    """How the steps of one task are asked of a configuration's warm process: ``prepare`` /
    ``time`` (the runner's timing step on a batch already on the device), or, for the seed
    recipe's training step (``seed``: its recipe and learning rates), ``train_time`` (the
    trainer's own ``step``, :func:`harness.runners.training.time_training`)."""

    task: str
    seed: Optional[dict] = None

    def refusal(self, config: Config) -> Optional[str]:
        """Why this configuration has no such step (None: it has)."""
        from harness.runners import RunnerError, require

        if self.seed is None:
            return None
        try:
            require(config.framework, "trains", "the seed recipe's training step")
        except RunnerError as exc:
            return str(exc)
        if config.variant != "exact" or config.dtype != "float32":
            return (f"the seed recipe times its trainer's own step, the exact network in float32, not "
                    f"{config.variant}/{config.dtype} (--recipe plain times every variant and dtype)")
        return None

    def first(self, config: Config, shape: List[int]) -> dict:
        """One step alone (compilation, autotuning): ``first_s``, or ``error``."""
        if self.seed is None:
            return _ask(config, op="prepare", task=self.task, shape=shape)
        reply = self._train_time(config, shape, 1)
        if "error" not in reply:
            config.baseline.setdefault(self.task, reply.pop("rss_after_build_bytes"))
            reply["first_s"] = reply.pop("step_s")[0]
            reply.pop("cpu_s")
        return reply

    def timed(self, config: Config, shape: List[int], iters: int) -> dict:
        """``iters`` timed steps: ``step_s``, ``cpu_s``, ``load_average``, or ``error``."""
        if self.seed is None:
            return _ask(config, op="time", task=self.task, shape=shape, iters=iters)
        reply = self._train_time(config, shape, iters)
        reply.pop("rss_after_build_bytes", None)
        reply.pop("trainer_build_s", None)
        return reply

    def _train_time(self, config: Config, shape: List[int], steps: int) -> dict:
        reply = _ask(config, op="train_time", batch_sizes=[shape[0]], input_shape=list(shape), warmup=0,
                     steps=steps, **self.seed)
        if "error" in reply:
            return reply
        run = reply["runs"][0]
        if "error" in run:
            return {"error": run["error"]}
        return {"step_s": run["step_s"], "cpu_s": run["cpu_s"], "load_average": reply["load_average"],
                "loss": run["loss"], "trainer_build_s": reply["build_s"],
                "rss_after_build_bytes": reply["rss_after_build_bytes"]}


def task_steps(task: str, args, shapes: Dict[str, List[List[int]]]) -> Steps:
    """The steps of ``task``; the seed recipe's learning rates cover every step a process
    takes (for each training shape, the first, the warm-up and the timed ones)."""
    if task != "train" or args.recipe != "seed":
        return Steps(task)
    from frameworks.spec.train import get_recipe, lr_schedule

    recipe = get_recipe()    # the seed's, dropout 0.5 included: a training step as it runs
    total = len(shapes["train"]) * (1 + args.warmup + args.iters)
    return Steps(task, {"recipe": recipe.to_dict(),
                        "lrs": [float(x) for x in lr_schedule(recipe, steps_per_epoch=total, total_steps=total)]})


# ----------------------------------------------------------------------------- measuring
def _ask(config: Config, **message) -> dict:
    """A request to a configuration's process; a failure is recorded, never raised."""
    from harness.runners import RunnerError

    try:
        return config.child.request(**message)
    except RunnerError as exc:
        return {"error": str(exc).split(": ", 1)[-1]}


def _start(config: Config, job_args: dict, tmp: str) -> None:
    from harness.runners import RunnerError
    from harness.runners.child import Job, WarmChild

    job = Job(config.framework, options=config.options, **job_args)
    try:
        config.child = WarmChild(job, tmp, config.label.replace("/", "-"))
    except RunnerError as exc:
        config.error = str(exc).split(": ", 1)[-1]
        print(f"{config.label}: did not start ({config.error})", file=sys.stderr, flush=True)
        return
    config.ready = config.child.ready
    settings = config.ready.get("settings", {})
    print(f"{config.label}: threads {settings.get('threads')}"
          + (f" (interop {settings['interop_threads']})" if "interop_threads" in settings else "")
          + f", build {config.ready.get('build_s', 0):.1f} s, load {config.ready.get('load_s', 0):.1f} s",
          flush=True)


def _stop(config: Config) -> None:
    if config.child is not None:
        config.child.close()
        config.child = None


def _probe(config: Config) -> None:
    reply = _ask(config, op="probe")
    if reply and "error" not in reply:
        config.probes.append(reply)


def available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_verdict(measured: Optional[Tuple[int, float]], shape: List[int], beside: float,
                   available: Optional[int]) -> Tuple[Optional[float], Optional[str]]:
    """(bytes a run of ``shape`` is estimated to need above its baseline, why it would not
    fit or None): the bytes its largest run so far took (``measured``: (clip elements,
    bytes)) scaled by the ratio of clip elements, beside ``beside`` bytes estimated for the
    runs beside it, against :data:`MEMORY_SHARE` of ``available``. No estimate for a shape
    no larger than one already run, nor without a run to scale from."""
    elements = int(np.prod(shape))
    if not measured or elements <= measured[0] or not measured[0]:
        return None, None
    need = measured[1] * elements / measured[0]
    if available is None or beside + need <= MEMORY_SHARE * available:
        return need, None
    others = f" beside {beside / 2**30:.1f} GiB for the runs beside it (--sequential runs one at a time)" \
        if beside else ""
    return need, (f"not tried: estimated {need / 2**30:.1f} GiB above its baseline ({'x'.join(map(str, shape))} "
                  f"scaled from its largest shape run, by clip elements){others} > {MEMORY_SHARE:.0%} of the "
                  f"{available / 2**30:.1f} GiB available")


def _memory_skips(configs: List[Config], task: str, shape: List[int]) -> Dict[str, dict]:
    """label -> the row fields of a configuration whose run of ``shape`` would not fit."""
    skips, beside, available = {}, 0.0, available_bytes()
    for c in configs:
        need, why = memory_verdict(c.measured.get(task), shape, beside, available)
        if why:
            skips[c.label] = {"error": why, "skipped": True, "estimated_bytes": need}
        elif need:
            beside += need
    return skips


def _remember_memory(config: Config, task: str, row: dict) -> None:
    """The bytes above its baseline a good run took, if its shape is the largest so far."""
    elements = int(np.prod(row["input_shape"]))
    base = config.baseline.get(task, config.baseline.get("start"))
    if "error" in row or base is None or "host_rss_peak_mib" not in row:
        return
    if elements > config.measured.get(task, (0, 0.0))[0]:
        config.measured[task] = (elements, max(row["host_rss_peak_mib"] * 2**20 - base, 0.0))


def _measure(configs: List[Config], task: str, shape: List[int], args, steps: Steps) -> None:
    """Prepare, warm up and time every live configuration at one shape, interleaved."""
    live_configs = [c for c in configs if c.child is not None]
    skips = _memory_skips(live_configs, task, shape)
    live = []
    for c in live_configs:
        row = {"batch_size": shape[0], "input_shape": list(shape)}
        c.runs.setdefault(task, []).append(row)
        row.update(skips.get(c.label, {}))
        why = row.get("error") or steps.refusal(c)
        if why:
            row["error"] = why
            print(f"{c.label} {task} batch {shape[0]}: {why}", file=sys.stderr, flush=True)
        elif _warm_up(c, row, shape, args, steps):
            live.append((c, row))
    _take_turns(live, shape, args, steps)
    for c, row in live:
        memory = _ask(c, op="memory") or {}
        row.update({k: v for k, v in memory.items() if k != "error"})
        _remember_memory(c, task, row)


def _warm_up(c: Config, row: dict, shape: List[int], args, steps: Steps) -> bool:
    """The first step alone, then ``--warmup`` steps; False (the row's error set) if either fails."""
    _ask(c, op="reset_memory")
    reply = steps.first(c, shape)
    if "error" not in reply and args.warmup:
        warm = steps.timed(c, shape, args.warmup)
        reply = warm if "error" in warm else {**reply, "warmup_s": warm["step_s"]}
    if "error" in reply:
        row["error"] = reply["error"]
        print(f"{c.label} {steps.task} batch {shape[0]}: {reply['error']}", file=sys.stderr, flush=True)
        return False
    row["first_call_s"] = reply["first_s"]
    row.update({k: reply[k] for k in ("warmup_s", "trainer_build_s", "loss") if k in reply})
    row.update(step_s=[], cpu_s=[], load_average=[])
    return True


def _take_turns(live: List[tuple], shape: List[int], args, steps: Steps) -> None:
    """``--iters`` timed steps of every live configuration, ``--iters-per-turn`` at a time,
    in turns whose first mover rotates."""
    done = turn = 0
    while done < args.iters and live:
        k = min(args.iters_per_turn, args.iters - done)
        order = live[turn % len(live):] + live[:turn % len(live)]   # rotate who goes first
        for c, row in order:
            if "error" in row:
                continue
            reply = steps.timed(c, shape, k)
            if "error" in reply:
                row["error"] = reply["error"]
                continue
            row["step_s"] += reply["step_s"]
            row["cpu_s"] += reply["cpu_s"]
            row["load_average"].append(reply["load_average"][0])
            if "loss" in reply:
                row["loss"] = reply["loss"]
        done += k
        turn += 1


def _cpuinfo_fields(text: str) -> Dict[str, str]:
    """The first processor's ``key : value`` lines of /proc/cpuinfo."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_peak(cores_used: int, cpuinfo: str = CPUINFO, cpufreq_max: str = CPUFREQ_MAX) -> dict:
    """The theoretical float32 FMA peak of ``cores_used`` cores: vector lanes x FMA units x 2
    (a fused multiply-add is two FLOPs) x clock x cores. The ISA comes from the cpuinfo
    flags and the clock from cpufreq's maximum (else cpuinfo's ``cpu MHz``); the number of
    FMA units per core is not in either file, so it is assumed (2: every Intel server core
    since Haswell, AMD since Zen 2), and each assumption is named in ``assumed``. AMD family
    25 (Zen 4) runs 512-bit instructions on 256-bit units: 8 lanes, not 16. Only an upper
    bound: a GEMM never reaches it (turbo limits, memory), so a share of it is never over 100%
    unless an assumption is wrong, which is then said, not printed as a percentage."""
    out = {"gflops": None, "cores": cores_used, "dtype": "float32", "assumed": [], "read": []}
    try:
        with open(cpuinfo) as f:
            fields = _cpuinfo_fields(f.read())
    except OSError as exc:
        out["error"] = f"cannot read {cpuinfo} ({exc.strerror or exc})"
        return out
    flags = set(fields.get("flags", "").split())
    isa = next((i for i in _ISA if i[0] in flags), None)
    if isa is None:
        out["error"] = f"no x86 vector flags in {cpuinfo} (another architecture): no peak computed"
        return out
    _, name, lanes, fma = isa
    vendor, family = fields.get("vendor_id", ""), fields.get("cpu family", "")
    if name == "AVX-512" and vendor == "AuthenticAMD" and family == "25":
        lanes, name = 8, "AVX-512 on 256-bit units (AMD Zen 4)"
    out.update(model=fields.get("model name"), isa=name, vector_lanes=lanes, fma=fma)
    out["read"].append(f"ISA {name} ({lanes} float32 lanes{', FMA' if fma else ', no FMA'}) from {cpuinfo} flags")
    units = 2
    out["fma_units"] = units
    out["assumed"].append(f"{units} {'FMA' if fma else 'multiply + add'} units per core (not in {cpuinfo})")
    ghz, source = None, None
    try:
        with open(cpufreq_max) as f:
            ghz, source = int(f.read().strip()) / 1e6, f"{cpufreq_max} (the maximum clock)"
    except (OSError, ValueError):
        try:
            ghz, source = float(fields["cpu MHz"]) / 1000, f"{cpuinfo} 'cpu MHz' (the clock now; a turbo may be higher)"
        except (KeyError, ValueError):
            pass
    if ghz is None or ghz <= 0:
        ghz = 3.0
        out["assumed"].append(f"clock {ghz:.2f} GHz (neither {cpufreq_max} nor {cpuinfo} says)")
    else:
        out["read"].append(f"clock {ghz:.2f} GHz from {source}")
    out["clock_ghz"] = ghz
    out["gflops_per_core"] = lanes * units * 2 * ghz
    out["gflops"] = out["gflops_per_core"] * cores_used
    out["formula"] = (f"{lanes} lanes x {units} units x 2 FLOPs x {ghz:.2f} GHz x {cores_used} "
                      f"core{'s' if cores_used != 1 else ''} = {out['gflops']:.1f} GFLOP/s")
    return out


def share_text(achieved: Optional[float], limit: Optional[float], what: str) -> str:
    """``41%`` of a limit, or ``above the <what>`` when the limit is exceeded (never a share
    above 100%), ``-`` when either number is missing."""
    if not achieved or not limit:
        return "-"
    if achieved > limit:
        return f"above the {what}"
    return f"{100 * achieved / limit:.0f}%"


def _summarise_row(row: dict, task: str, gflops: float, probe: Optional[float], cores: int,
                   peak: Optional[float] = None) -> dict:
    """A timed row's flat fields: latency, throughput, FLOP rate, its share of the GEMM probe
    and of the CPU's theoretical peak (``peak``; None on a GPU or another dtype), load, noise."""
    steps = row.get("step_s") or []
    if "error" in row or not steps:
        return row
    batch = row["batch_size"]
    median = statistics.median(steps)
    p90 = float(np.percentile(steps, 90))
    clips = batch / median
    out = dict(row)
    out.update(step_s_median=median, step_s_p90=p90, step_s_min=min(steps), step_s_max=max(steps),
               latency_ms_median=1000 * median, latency_ms_p90=1000 * p90,
               ms_per_clip=1000 * median / batch, clips_per_s=clips,
               cpu_s_median=statistics.median(row["cpu_s"]) if row.get("cpu_s") else None,
               gflops_per_clip=gflops, achieved_gflops=gflops * clips)
    if task == "train":
        out["train_ms_per_step"] = 1000 * median
    if probe:   # the probe is one 2048^2 GEMM, not a limit: a network's kernels may beat it
        out["gemm_probe_gflops"] = probe
        out["utilisation"] = gflops * clips / probe
        out["above_gemm_probe"] = gflops * clips > probe
    if peak:
        out["peak_gflops"] = peak
        out["utilisation_of_peak"] = gflops * clips / peak
        out["above_peak"] = gflops * clips > peak
    loads = row.get("load_average") or []
    if loads:
        out["load_average"] = {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
    reasons = []
    if min(steps) > 0 and max(steps) / min(steps) > NOISY_SPREAD:
        reasons.append(f"max/min latency {max(steps) / min(steps):.2f} > {NOISY_SPREAD}")
    if loads and max(loads) > cores:
        reasons.append(f"load average {max(loads):.2f} > {cores} cores")
    out["noisy"] = bool(reasons)
    if reasons:
        out["noise"] = "; ".join(reasons)
    return out


# ----------------------------------------------------------------------------- the command
def task_shapes(args, tasks) -> Dict[str, List[List[int]]]:
    """Per task, the batch shapes to time, in order; each checked for size."""
    infer = [[b] + list(args.input_shape[1:]) for b in (args.batch_sizes or [args.input_shape[0]])]
    train = [[b] + list(s[1:]) for s in (args.train_input_shape or [args.input_shape])
             for b in (args.train_batch_sizes or [s[0]])]
    shapes = {"infer": infer, "train": train}
    for task in tasks:
        for shape in shapes[task]:
            try:
                check_clip_size(shape)
            except argparse.ArgumentTypeError as exc:
                raise InputError(str(exc)) from None
    return shapes


def forward(args) -> int:
    from harness.runners import canonical_framework

    frameworks = list(dict.fromkeys(canonical_framework(f) for f in args.frameworks.split(",") if f))
    if not frameworks:
        raise InputError("no framework given")
    tasks = TASKS[args.mode]
    shapes = task_shapes(args, tasks)
    if args.json:
        check_output_path(args.json, "--json")
    configs = configurations(frameworks, args)
    cfg = get_preset(args.arch)
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    print(f"{len(configs)} configurations, {threads} threads each, "
          f"{'one at a time' if args.sequential else 'interleaved'}"
          + (f", training steps of the {args.recipe} recipe" if "train" in tasks else "")
          + f"; load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {cores} cores", flush=True)
    _run(configs, cfg, args, shapes, {task: task_steps(task, args, shapes) for task in tasks}, threads)
    doc = _document(cfg, configs, tasks, shapes, args, cores, threads)
    _print_table(doc)
    if not any("error" not in r and any("error" not in run for run in r["runs"]) for r in doc["results"]):
        # a failed run writes nothing: a good result file is never replaced by one holding only errors
        raise InputError("no configuration could run the benchmark"
                         + (f" (nothing written to {args.json})" if args.json else "") + ": "
                         + "; ".join(f"{r['label']}: {r.get('error') or r['runs'][0].get('error')}"
                                     for r in doc["results"][:3]))
    if args.json:
        atomic_write_json(args.json, result_doc("bench_forward", doc, runs={
            c.label: {"versions": c.ready.get("versions"), "hardware": c.ready.get("hardware")}
            for c in configs if c.ready}))
    return 0


def _run(configs: List[Config], cfg, args, shapes, steps: Dict[str, Steps], threads: int) -> None:
    """Every configuration's process, all at once (interleaved) or one at a time, on the
    same benchmark weights."""
    from harness.checkpoints.io import write_npz

    with tempfile.TemporaryDirectory(prefix="nlparity-bench-") as tmp:
        weights = os.path.join(tmp, "weights.npz")
        write_npz(weights, benchmark_weights(cfg, np.random.default_rng(0)))
        job_args = dict(config=cfg, device=args.device, threads=threads, weights=weights)
        try:
            for group in ([[c] for c in configs] if args.sequential else [configs]):
                _run_group(group, job_args, tmp, args, shapes, steps)
        finally:
            for c in configs:
                _stop(c)


def _run_group(group: List[Config], job_args: dict, tmp: str, args, shapes, steps: Dict[str, Steps]) -> None:
    for c in group:
        _start(c, job_args, tmp)
    for c in group:
        if c.child is not None:
            _probe(c)
            c.flops_counter = _ask(c, op="flops", shape=[1] + list(args.input_shape[1:])).get("flops")
            memory = _ask(c, op="memory")
            if "host_rss_peak_mib" in memory:
                c.baseline["start"] = memory["host_rss_peak_mib"] * 2**20
    for task, task_step in steps.items():
        for shape in shapes[task]:
            _measure(group, task, shape, args, task_step)
    for c in group:
        if c.child is not None:
            _probe(c)
        _stop(c)


def _results(cfg, configs: List[Config], tasks, args, cores: int, threads: int,
             peak: Optional[dict]) -> Tuple[List[dict], Dict[str, float]]:
    """One result per configuration and task (its rows summarised, its process's facts), and
    the best GEMM probe per dtype."""
    flops = {"infer": gflops_per_clip, "train": train_gflops_per_clip}
    results = []
    for c in configs:
        probe = max((p["gflops"] for p in c.probes), default=None)
        peak_gflops = peak.get("gflops") if peak and c.dtype == "float32" else None
        base = {"framework": c.framework, "mode": c.mode, "variant": c.variant, "dtype": c.dtype,
                "device": args.device, "label": c.label, "options": c.options}
        if c.error:
            results.append({**base, "task": tasks[0], "label": f"{c.label}/{tasks[0]}", "error": c.error,
                            "runs": []})
            continue
        for task in tasks:
            rows = [_summarise_row(r, task, flops[task](cfg, r["input_shape"][1:]), probe, cores, peak_gflops)
                    for r in c.runs.get(task, [])]
            results.append({**base, "task": task, "label": f"{c.label}/{task}", "runs": rows,
                            **({"recipe": args.recipe} if task == "train" else {}),
                            "build_s": c.ready.get("build_s"), "load_s": c.ready.get("load_s"),
                            "settings": c.ready.get("settings"), "threads": threads,
                            "gemm_probe": c.probes, "gemm_probe_gflops": probe,
                            "flops_torch_counter_per_clip": c.flops_counter,
                            "versions": c.ready.get("versions"), "hardware": c.ready.get("hardware")})
    best_probe = {}
    for r in results:
        if r.get("gemm_probe_gflops"):
            best_probe[r["dtype"]] = max(best_probe.get(r["dtype"], 0), r["gemm_probe_gflops"])
    for r in results:
        for run in r["runs"]:
            if "achieved_gflops" in run and best_probe.get(r["dtype"]):
                run["utilisation_vs_best_probe"] = run["achieved_gflops"] / best_probe[r["dtype"]]
    _withdraw_a_peak_below_the_probe(peak, best_probe.get("float32"), results)
    return results, best_probe


def _withdraw_a_peak_below_the_probe(peak: Optional[dict], probe: Optional[float], results: List[dict]) -> None:
    """A measured matrix product faster than the formula's peak proves the formula wrong on this
    CPU (its clock is the one read now, a turbo runs higher; its FMA units are assumed): no share
    of it is kept, and the peak says why (e.g. ONNX Runtime's MLAS at 235 GFLOP/s on one core of an
    AMD EPYC whose formula gave 166)."""
    if not (peak and peak.get("gflops") and probe and probe > peak["gflops"]):
        return
    peak["below_probe"] = probe
    for r in results:
        for run in r["runs"]:
            for key in ("peak_gflops", "utilisation_of_peak", "above_peak"):
                run.pop(key, None)


def _document(cfg, configs: List[Config], tasks, shapes, args, cores: int, threads: int) -> dict:
    peak = cpu_peak(min(threads, cores)) if args.device == "cpu" else None
    results, best_probe = _results(cfg, configs, tasks, args, cores, threads, peak)
    train_shape = shapes["train"][0]
    gflops = {"infer": gflops_per_clip(cfg, list(args.input_shape[1:])),
              "train": train_gflops_per_clip(cfg, train_shape[1:])}
    counter = next((c.flops_counter for c in configs if c.flops_counter), None)
    steps = task_steps("train", args, shapes)
    doc = {"benchmark": "forward", "arch": cfg.name, "arch_hash": arch_hash(cfg), "parameters": parameter_count(cfg),
           "input_shape": list(args.input_shape), "train_input_shape": list(train_shape),
           "train_input_shapes": [list(s) for s in shapes["train"]],
           "train_recipe": {"name": args.recipe, "recipe": (steps.seed or {}).get("recipe")},
           "tasks": list(tasks), "device": args.device, "warmup": args.warmup, "iters": args.iters,
           "iters_per_turn": args.iters_per_turn, "interleaved": not args.sequential, "threads": threads,
           "cores": cores, "date": utc_now(),
           "gflops_per_clip": gflops["infer"], "train_gflops_per_clip": gflops["train"],
           "flops_convention": "2 x multiply-accumulates of convolutions and matrix products (torch FlopCounterMode's)",
           "flops_torch_counter_per_clip": counter,
           "flops_spec_vs_counter": (gflops["infer"] * 1e9 / counter - 1) if counter else None,
           "gemm_probe_gflops_best": best_probe, "cpu_peak": peak,
           # what changes kernels or threading in every child (a capped oneDNN ISA, OpenMP waiting)
           "environment": {k: v for k, v in sorted(os.environ.items())
                           if k.startswith(("ONEDNN_", "DNNL_", "OMP_", "KMP_", "MKL_", "GOMP_"))},
           "results": results}
    doc["ratios"] = _ratios(results)
    doc["noise"] = noise_verdict(results, threads, cores)
    ok = [r for r in results if r["runs"] and "ms_per_clip" in r["runs"][0]]
    if len(ok) >= 2:
        first = ok[0]["runs"][0]["ms_per_clip"]
        doc["relative_to_first"] = {_short(r): r["runs"][0]["ms_per_clip"] / first for r in ok}
    return doc


def noise_verdict(results: List[dict], threads: int, cores: int) -> dict:
    """One verdict for the whole run: which runs were noisy, and (when frameworks ran more
    than one thread each) the suggestion to rerun with ``--threads 1``: on a busy machine an
    OpenMP team waits for its slowest thread, so a multi-threaded latency swings with the
    load while one thread per framework holds."""
    runs = [(r["label"], run) for r in results for run in r["runs"] if "step_s_median" in run]
    noisy = [(label, run) for label, run in runs if run.get("noisy")]
    out = {"noisy": bool(noisy), "noisy_runs": [f"{label} batch {run['batch_size']}" for label, run in noisy],
           "threads": threads, "cores": cores, "suggest_threads_1": bool(noisy) and threads > 1}
    if not noisy:
        out["verdict"] = (f"steady: every run's max/min latency <= {NOISY_SPREAD} and load average <= {cores} "
                          "cores")
        return out
    spread = max(run["step_s_max"] / run["step_s_min"] for _, run in noisy if run["step_s_min"] > 0)
    load = max((run.get("load_average") or {}).get("max", 0.0) for _, run in noisy)
    out["verdict"] = (f"noisy: {len(noisy)} of {len(runs)} runs had max/min latency > {NOISY_SPREAD} or load "
                      f"average > {cores} cores (worst max/min {spread:.2f}, load {load:.2f})"
                      + (f"; rerun with --threads 1: a team of {threads} threads per framework waits for its "
                         "slowest one on a busy machine, one thread swings far less" if out["suggest_threads_1"]
                         else "; rerun on a quieter machine"))
    return out


def _short(r: dict) -> str:
    """``torch/eager`` for the default configuration, longer where it differs."""
    parts = [r["framework"], r["mode"]] + ([r["variant"]] if r["variant"] != "exact" else []) \
        + ([r["dtype"]] if r["dtype"] != "float32" else []) + ([r["task"]] if r["task"] != "infer" else [])
    return "/".join(parts)


def _ratios(results: List[dict]) -> Dict[str, dict]:
    """Per task, batch and dtype: each configuration's latency and throughput against the
    baseline (the oracle, mmaction2, where it ran, else the first configuration)."""
    from harness.runners import ORACLE

    groups: Dict[str, List[tuple]] = {}
    first = _first_clips(results)
    for r in results:
        for run in r["runs"]:
            if "step_s_median" in run:
                key = f"{r['task']} batch {run['batch_size']} {r['dtype']}{_clip_note(r['task'], run, first)}"
                groups.setdefault(key, []).append((r, run))
    out = {}
    for key, members in groups.items():
        base = next((m for m in members if m[0]["framework"] == ORACLE), members[0])
        base_label = _short(base[0])
        out[key] = {"baseline": base_label, "latency_vs_baseline": {}, "throughput_vs_baseline": {}}
        for r, run in members:
            out[key]["latency_vs_baseline"][_short(r)] = run["step_s_median"] / base[1]["step_s_median"]
            out[key]["throughput_vs_baseline"][_short(r)] = run["clips_per_s"] / base[1]["clips_per_s"]
    return out


def _first_clips(results: List[dict]) -> Dict[str, list]:
    """Per task, the clip (C, T, H, W) of its first run."""
    first: Dict[str, list] = {}
    for r in results:
        for run in r["runs"]:
            if run.get("input_shape"):
                first.setdefault(r.get("task"), list(run["input_shape"][1:]))
    return first


def _clip_note(task: str, run: dict, first: Dict[str, list]) -> str:
    """`` clip 3x8x48x48`` for a run whose clip is not its task's first (a task timed on
    several clip shapes), else nothing."""
    clip = list(run.get("input_shape") or [None])[1:]
    return "" if clip == first.get(task, clip) else f" clip {'x'.join(map(str, clip))}"


def _print_table(doc: dict) -> None:
    first = _first_clips(doc["results"])
    head = (f"{'configuration':<44} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'min':>8} {'max':>8} "
            f"{'clips/s':>8} {'GFLOP/s':>8} {'of peak':>8} {'of GEMM probe':>20} {'load':>11}")
    print(head)
    print("-" * len(head))
    for r in doc["results"]:
        if "error" in r:
            print(f"{r['label']:<44} did not run: {r['error']}")
            continue
        for run in r["runs"]:
            label = r["label"] + _clip_note(r.get("task"), run, first)
            if "error" in run or "step_s_median" not in run:
                print(f"{label:<44} {run['batch_size']:>5} error: {run.get('error', 'no timed step')}")
                continue
            load = run.get("load_average") or {}
            achieved = run["achieved_gflops"]
            print(f"{label:<44} {run['batch_size']:>5} {run['latency_ms_median']:>10.1f} "
                  f"{run['latency_ms_p90']:>9.1f} {1000 * run['step_s_min']:>8.1f} {1000 * run['step_s_max']:>8.1f} "
                  f"{run['clips_per_s']:>8.2f} {achieved:>8.1f} "
                  f"{share_text(achieved, run.get('peak_gflops'), 'peak'):>8} "
                  f"{share_text(achieved, run.get('gemm_probe_gflops'), 'GEMM probe'):>20} "
                  f"{load.get('min', float('nan')):>5.2f}-{load.get('max', float('nan')):<5.2f}"
                  + (f"  NOISY ({run['noise']})" if run.get("noisy") else ""))
    for key, ratio in doc["ratios"].items():
        print(f"{key}, throughput vs {ratio['baseline']}: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratio["throughput_vs_baseline"].items()))
    counter = doc.get("flops_torch_counter_per_clip")
    print(f"GFLOPs per clip (spec): {doc['gflops_per_clip']:.3f}"
          + (f"; torch FlopCounterMode: {counter / 1e9:.3f}" if counter else ""))
    print(peak_line(doc.get("cpu_peak"), doc.get("gemm_probe_gflops_best", {}).get("float32")))
    print(doc["noise"]["verdict"], file=sys.stderr if doc["noise"]["noisy"] else sys.stdout)


def peak_line(peak: Optional[dict], probe: Optional[float]) -> str:
    """The limits the shares are taken against, and what in them is read and what assumed."""
    probe_text = f"GEMM probe (one 2048^2 float32 matmul, measured): {probe:.1f} GFLOP/s" if probe else "no GEMM probe"
    if not peak:
        return f"no CPU peak (device is not the CPU); {probe_text}"
    if not peak.get("gflops"):
        return f"no CPU peak ({peak.get('error')}); {probe_text}"
    text = (f"float32 peak {peak['formula']} ({peak.get('model') or 'CPU'}; read: {'; '.join(peak['read'])}; "
            f"assumed: {'; '.join(peak['assumed']) or 'nothing'}); {probe_text}")
    if peak.get("below_probe"):
        text += (f"; the peak is below a GEMM measured here ({peak['below_probe']:.1f} GFLOP/s): its clock or its "
                 "assumed FMA units do not hold on this CPU, so no share of it is given")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:   # the decode benchmark parses its own options
        from harness.data import bench as data_bench

        return data_bench.main(argv[1:])
    if argv[:1] not in (["forward"], ["-h"], ["--help"]):
        print("error: bench takes a subcommand first: forward (inference and training speed) or data (decoding); "
              "python -m harness.bench forward --help", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    return run_main(lambda: forward(args))


if __name__ == "__main__":
    sys.exit(main())
