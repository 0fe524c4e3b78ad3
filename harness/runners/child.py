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
``subops``         canonical ``layer``'s sub-operations on ``layer_input``, to ``out``
``candidate``      the user's own network (``plugin``, see :mod:`harness.runners.plugin`) on the
                   input, its hooked layers and ``logits`` to ``out``
                   (``intermediates`` with ``float64``: torch in float64, the noise floor)
``train_parity``   training parity's measurements (``parts``: components, optimizer,
                   trajectory, isolated, judge) on ``batches`` with ``recipe``
                   (:mod:`harness.runners.training`)
``train_time``     training steps timed per batch size on seeded clips of ``input_shape``
                   (:mod:`harness.runners.training`, for :mod:`harness.train_bench`)

Warm mode (:class:`WarmChild`, ``python -m harness.runners.child --serve JOB.json``): the
child builds and loads once, then answers one JSON request per line on its stdin with one
JSON line on its stdout (the framework's own prints go to stderr), until ``quit``. The
benchmark keeps one warm child per framework and asks each in turn to time ``k`` steps,
so that frameworks interleave (A B A B ...) and a machine's noise falls on all of them.
Requests (``op``): ``prepare`` (make the ``task``'s step for ``shape``, run it once: the
compile / autotune time), ``time`` (``iters`` steps, each ended by a device sync),
``probe`` (the GEMM probe), ``flops`` (the framework's FLOP counter), ``memory``,
``reset_memory``, ``forward`` / ``intermediates`` (of the clip in file ``input``, to the
``.npz`` file ``out``), ``quit``. A failed request answers ``{"error": one line}`` and the
child stays up.
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

TASKS = ("intermediates", "isolated", "subops", "candidate", "train_parity", "train_time")
TRAIN_TASKS = ("train_parity", "train_time")   # a trainer builds its own network (harness.runners.training)


@dataclass
class Task:
    op: str
    out: Optional[str] = None            # .npz written by intermediates / isolated
    reference: Optional[str] = None      # isolated: the reference's outputs (.npz)
    batch_sizes: List[int] = field(default_factory=lambda: [1])   # train_time
    input_shape: Optional[List[int]] = None                       # train_time: (N, C, T, H, W), N replaced
    warmup: int = 1                                               # train_time: untimed steps first
    layer: Optional[str] = None          # subops: the canonical layer to trace
    layer_input: Optional[str] = None    # subops: that layer's input (.npy)
    float64: bool = False                # intermediates in float64 (torch): the float32 noise floor
    plugin: Optional[str] = None         # candidate: "module:function" building the user's network
    steps: int = 0                       # train_steps: SGD steps; train_time: timed steps per batch size
    batches: Optional[str] = None        # train_steps: .npz of x0, y0, x1, y1, ...
    recipe: Optional[dict] = None        # train_*: frameworks.spec.train.TrainRecipe.to_dict()
    lrs: Optional[List[float]] = None    # train_time: the learning rate of every step
    parts: List[str] = field(default_factory=list)   # train_parity: harness.runners.training.PARTS
    candidate_outputs: Optional[str] = None          # train_parity judge: the candidate's arrays (.npz)
    tolerance: Optional[float] = None                # train_parity judge: the step check's scaled tolerance

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
    if all(task.op in TRAIN_TASKS for task in job.tasks):   # a trainer builds its own network
        from harness.runners import training

        record["tasks"] = [training.run(job, task, weights) if task.op == "train_parity" else
                           training.time_training(job, task, weights) for task in job.tasks]
        return record
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
    record.update(_build_and_load(runner, job.config, weights))
    for task in job.tasks:
        record["tasks"].append(_run_task(runner, task, clip))
    return record


def _build_and_load(runner, config, weights) -> Dict[str, float]:
    """Build the network and load its weights (a shape or name the runner refuses is a
    RunnerError); the seconds each took."""
    t0 = time.perf_counter()
    runner.build(config)
    built = time.perf_counter()
    try:
        runner.load(weights)
    except (ValueError, TypeError) as exc:
        raise RunnerError(str(exc)) from None
    return {"build_s": built - t0, "load_s": time.perf_counter() - built}


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
    if task.op not in ("intermediates", "isolated"):
        raise RunnerError(f"task {task.op} runs only in a job whose tasks are all of its kind")
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


# ----------------------------------------------------------------------------- warm mode
class WarmChild:
    """Parent side of warm mode: one child process holding a built, loaded runner.

        with WarmChild(job, workdir, "torch") as child:
            child.request(op="prepare", task="infer", shape=[1, 3, 8, 64, 64])
            child.request(op="time", task="infer", shape=[1, 3, 8, 64, 64], iters=3)["step_s"]
    """

    def __init__(self, job: Job, workdir: str, name: str):
        os.makedirs(workdir, exist_ok=True)
        stem = os.path.join(workdir, name)
        self.framework, self.name = job.framework, name
        with open(stem + ".json", "w") as f:
            json.dump({"job": job.to_dict()}, f)
        self.log_path = stem + ".log"
        self._log = open(self.log_path, "w")
        # run in the work folder (MindSpore leaves rank_0/, kernel_meta/ ... in its working
        # directory), with the repository importable from there
        from harness.cli import REPO_ROOT

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.runners.child", "--serve", os.path.abspath(stem + ".json")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=workdir, env=env)
        try:
            self.ready = self._reply()   # versions, hardware, build_s, load_s, settings
        except RunnerError:
            self.close()
            raise

    def request(self, **message) -> dict:
        if self.proc.poll() is not None:
            raise RunnerError(f"{self.name}: {self._last_log_line()}")
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RunnerError(f"{self.name}: {self._last_log_line()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RunnerError(f"{self.name}: {reply['error']}")
        return reply

    def _last_log_line(self) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        return (errors or lines or [f"exit code {self.proc.returncode}"])[-1].removeprefix("error: ")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "WarmChild":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(job: Job, channel) -> None:
    """Child side of warm mode: build and load, say ready, answer requests until ``quit``."""
    import resource

    def send(message: dict) -> None:
        channel.write(json.dumps(message, default=str) + "\n")
        channel.flush()

    from harness.runners import make_runner

    if not job.weights:
        raise RunnerError("warm mode loads its weights from a file (Job.weights)")
    weights = load_arrays(job.weights)
    runner = make_runner(job.framework, device=job.device, threads=job.threads, **job.options)
    record: Dict[str, Any] = {"framework": job.framework, "versions": runner.versions(),
                              "hardware": runner.hardware()}
    record.update(_build_and_load(runner, job.config, weights))
    record["settings"] = runner.settings()
    send({"ready": True, **record})
    steps: Dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        if op == "quit":
            send({"ok": True})
            return
        try:
            key = f"{request.get('task')}:{request.get('shape')}"
            if op == "prepare":
                steps.pop(key, None)
                t0 = time.perf_counter()
                step = runner.timing_step(request["shape"], request["task"])
                step()
                runner.sync()
                steps[key] = step
                reply = {"first_s": time.perf_counter() - t0}
            elif op == "time":
                step, wall, cpu = steps[key], [], []
                for _ in range(int(request["iters"])):
                    c0, t0 = time.process_time(), time.perf_counter()
                    step()
                    runner.sync()
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                reply = {"step_s": wall, "cpu_s": cpu, "load_average": list(os.getloadavg())}
            elif op in ("forward", "intermediates"):   # on a clip file, to a file (the GPU check's dtypes)
                from harness.checkpoints.io import write_npz

                clip = np.load(request["input"], allow_pickle=False).astype(np.float32, copy=False)
                outputs = runner.forward_intermediates(clip) if op == "intermediates" else \
                    {"logits": runner.forward(clip)}
                write_npz(request["out"], {k: np.asarray(v, np.float32) for k, v in outputs.items()})
                reply = {"out": request["out"]}
            elif op == "probe":
                reply = runner.gemm_probe()
            elif op == "flops":
                reply = {"flops": runner.flop_count(request["shape"])}
            elif op == "memory":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                reply = {"host_rss_peak_mib": usage.ru_maxrss / 1024, **runner.memory()}
            elif op == "reset_memory":
                runner.reset_memory()
                reply = {"ok": True}
            else:
                raise RunnerError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - out of memory at one batch size must not end the others
            text = str(exc).strip().splitlines()
            reply = {"error": f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")}
        send(reply)


def _serve_main(path: str) -> int:
    # the protocol owns the real stdout; whatever a framework prints goes to stderr (the log)
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        with open(path) as f:
            job = Job.from_dict(json.load(f)["job"])
        if job.framework == "ms":
            from harness.runners.mindspore_runner import configure_onednn_isa

            configure_onednn_isa()  # before anything imports MindSpore
        _serve(job, channel)
    except (RunnerError, ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()
        print(f"error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        return _serve_main(argv[1])
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
