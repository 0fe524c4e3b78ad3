"""The one child-process protocol: a framework runs in a process of its own.

Commands never hold two frameworks in one process (MindSpore caps oneDNN's ISA for its
whole process, and aborts if decord came first), so parity, evaluate's seeded weights,
bench, the GPU check and the demo all run a framework through this module::

    result = run_job(Job(framework="ms", config=cfg, weights="w.npz", input="clip.npy",
                         tasks=[Task("intermediates", out="ms.npz")]), workdir)

The parent writes a job record (JSON) into ``workdir`` and starts
``python -m harness.runners.child JOB.json``; the child builds the network, loads (or, in
torch, makes) the weights, runs the tasks in order and writes ``result.json``: versions,
hardware, timings and each task's result. Arrays travel as ``.npz`` files, never through
a pipe. A child that fails prints one line and exits 2; the parent raises that line as a
:class:`harness.runners.RunnerError`.

Tasks:

``intermediates``  every canonical layer's output, ``logits`` and the ``input``, to ``out``
``isolated``       each layer on the input the ``reference`` outputs give it, to ``out``
``time``           ``iters`` timed forward passes per batch size after ``warmup`` untimed
                   ones, on seeded normal clips of ``input_shape`` (batch replaced)
``subops``         canonical ``layer``'s sub-operations on ``layer_input``, to ``out``
``candidate``      the user's own network (``plugin``, see :mod:`harness.runners.plugin`) on the
                   input, its hooked layers and ``logits`` to ``out``
                   (``intermediates`` with ``float64``: torch in float64, the noise floor)
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.runners import RunnerError

TASKS = ("intermediates", "isolated", "time", "subops", "candidate")


@dataclass
class Task:
    op: str
    out: Optional[str] = None            # .npz written by intermediates / isolated
    reference: Optional[str] = None      # isolated: the reference's outputs (.npz)
    batch_sizes: List[int] = field(default_factory=lambda: [1])   # time
    input_shape: Optional[List[int]] = None                       # time: (N, C, T, H, W), N replaced
    warmup: int = 1
    iters: int = 3
    layer: Optional[str] = None          # subops: the canonical layer to trace
    layer_input: Optional[str] = None    # subops: that layer's input (.npy)
    float64: bool = False                # intermediates in float64 (torch): the float32 noise floor
    plugin: Optional[str] = None         # candidate: "module:function" building the user's network

    def __post_init__(self) -> None:
        if self.op not in TASKS:
            raise ValueError(f"unknown child task {self.op!r}; one of {TASKS}")


@dataclass
class Job:
    framework: str
    config: I3DNLConfig
    device: str = "cpu"
    threads: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)     # the runner's own (mode, benchmark)
    weights: Optional[str] = None        # canonical .npz to load
    seed: Optional[int] = None           # instead: seeded weights calibrated on ``input`` (torch)
    save_weights: Optional[str] = None   # where the seeded weights are written (.npz)
    input: Optional[str] = None          # float32 (N, C, T, H, W) .npy
    tasks: List[Task] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        d = dict(d)
        d["config"] = I3DNLConfig.from_dict(d["config"])
        d["tasks"] = [Task(**t) for t in d.get("tasks", [])]
        return cls(**d)


# ----------------------------------------------------------------------------- parent side
def run_job(job: Job, workdir: str, name: str = "") -> dict:
    """Run ``job`` in a child process; its result record, or :class:`RunnerError`."""
    os.makedirs(workdir, exist_ok=True)
    stem = os.path.join(workdir, name or f"{job.framework}-job")
    job_path, result_path = stem + ".json", stem + ".result.json"
    with open(job_path, "w") as f:
        json.dump({"job": job.to_dict(), "result": result_path}, f)
    proc = subprocess.run([sys.executable, "-m", "harness.runners.child", job_path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not os.path.isfile(result_path):
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {proc.returncode}"
        raise RunnerError(f"{job.framework}: {reason}")
    with open(result_path) as f:
        return json.load(f)


def save_clip(path: str, clip: np.ndarray) -> str:
    np.save(path, np.ascontiguousarray(clip, dtype=np.float32))
    return path


def load_arrays(path: str) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- child side
def _execute(job: Job) -> dict:
    from harness.checkpoints.io import write_npz
    from harness.runners import make_runner

    clip = np.load(job.input, allow_pickle=False).astype(np.float32, copy=False) if job.input else None
    runner = make_runner(job.framework, device=job.device, threads=job.threads, **job.options)
    record: Dict[str, Any] = {"framework": job.framework, "versions": runner.versions(),
                              "hardware": runner.hardware(), "tasks": []}
    if job.seed is not None:
        if job.framework != "torch":
            raise RunnerError("seeded weights are made by the torch runner only")
        if clip is None:
            raise RunnerError("seeded weights are calibrated on the job's input clip; none given")
        from harness.runners.torch_runner import seeded_weights

        t0 = time.perf_counter()
        weights = seeded_weights(job.config, clip, job.seed)
        record["seed_s"] = time.perf_counter() - t0
        if job.save_weights:
            write_npz(job.save_weights, weights)
    elif job.weights:
        weights = load_arrays(job.weights)
    else:
        weights = None
    if not job.tasks:
        return record
    if weights is None:
        raise RunnerError("a job with tasks needs weights or a seed")
    if all(task.op == "candidate" for task in job.tasks):   # the user's network, not ours
        from harness.runners import plugin

        run = plugin.run_mindspore if job.framework == "ms" else plugin.run_torch
        for task in job.tasks:
            t0 = time.perf_counter()
            outputs = run(task.plugin, job.config, weights, clip)
            outputs["input"] = clip
            write_npz(task.out, outputs)
            record["tasks"].append({"op": "candidate", "out": task.out, "forward_s": time.perf_counter() - t0})
        return record
    t0 = time.perf_counter()
    runner.build(job.config)
    record["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        runner.load(weights)
    except (ValueError, TypeError) as exc:
        raise RunnerError(str(exc)) from None
    record["load_s"] = time.perf_counter() - t0
    for task in job.tasks:
        record["tasks"].append(_run_task(runner, task, clip))
    return record


def _run_task(runner, task: Task, clip: Optional[np.ndarray]) -> dict:
    from harness.checkpoints.io import write_npz

    t0 = time.perf_counter()
    if task.op == "subops":
        steps = runner.forward_subops(task.layer, np.load(task.layer_input, allow_pickle=False))
        write_npz(task.out, steps)
        return {"op": task.op, "out": task.out, "layer": task.layer, "forward_s": time.perf_counter() - t0}
    if task.op == "intermediates" and task.float64:
        outputs = runner.forward_intermediates_float64(clip)
        outputs["input"] = clip
        write_npz(task.out, outputs)
        return {"op": task.op, "out": task.out, "float64": True, "forward_s": time.perf_counter() - t0}
    if task.op in ("intermediates", "isolated"):
        if clip is None:
            raise RunnerError(f"task {task.op} needs the job's input clip")
        if task.op == "isolated":
            outputs = runner.forward_isolated(clip, load_arrays(task.reference))
        else:
            outputs = runner.forward_intermediates(clip)
        seconds = time.perf_counter() - t0
        outputs["input"] = clip
        write_npz(task.out, outputs)
        return {"op": task.op, "out": task.out, "forward_s": seconds}
    rows = []
    rng = np.random.default_rng(0)
    for batch in task.batch_sizes:
        x = rng.standard_normal([batch] + list(task.input_shape[1:])).astype(np.float32)
        warm = []
        for _ in range(task.warmup):
            t = time.perf_counter()
            runner.forward(x)
            runner.sync()
            warm.append(time.perf_counter() - t)
        try:
            times = runner.time_forward(x, warmup=0, iters=task.iters)
        except RuntimeError as exc:  # out of memory at a large batch: recorded, and larger ones skipped
            rows.append({"batch_size": batch, "error": str(exc).splitlines()[0]})
            break
        rows.append({"batch_size": batch, "warmup_s": warm, "step_s": times})
    return {"op": "time", "runs": rows}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("error: usage: python -m harness.runners.child JOB.json (an internal protocol; see its docstring)",
              file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            spec = json.load(f)
        job = Job.from_dict(spec["job"])
        if job.framework == "ms":
            from harness.runners.mindspore_runner import configure_onednn_isa

            configure_onednn_isa()  # before anything imports MindSpore
        record = _execute(job)
        with open(spec["result"], "w") as f:
            json.dump(record, f, indent=2, default=str)
    except (RunnerError, ValueError, KeyError, TypeError, OSError) as exc:
        text = str(exc).strip().splitlines()
        print(f"error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
