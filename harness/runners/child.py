"""The one child-process protocol: a framework runs in a process of its own.

Commands never hold two frameworks in one process (MindSpore caps oneDNN's ISA for its
whole process, and aborts if decord came first), so parity, evaluate's seeded weights,
training parity, bench, the GPU check and the demo all run a framework through this module.

A child is started with a :class:`Job` (``python -m harness.runners.child JOB.json``, in a
work folder of its own, where MindSpore leaves its ``rank_0/`` and ``kernel_meta/``): its
runner prepares the process (:meth:`harness.runners.Runner.prepare_process`), the weights
are loaded (or, ``seed``, made and calibrated on the job's clip by the runner that makes
seeded weights), and the child says it is ready (versions, hardware). It then answers one
JSON request per line on its stdin with one JSON line on its stdout (the framework's own
prints go to stderr, the log), until ``quit``; a failed request answers ``{"error": one
line}`` and the child stays up. The network is built and loaded at the first request that
needs it. Arrays travel as ``.npz`` / ``.npy`` files, never through the pipe.

Requests (``op``), each a :class:`Task`:

``build``          build and load the network now (its seconds and settings)
``intermediates``  every canonical layer's output, ``logits`` and the ``input`` (the job's clip,
                   or the clip file ``input``) to ``out``; ``float64``: torch in float64
``forward``        the network's output for the clip file ``input``, to ``out``
``isolated``       each layer on the input the ``reference`` outputs give it, to ``out``
``subops``         canonical ``layer``'s sub-operations on ``layer_input``, to ``out``
``candidate``      the user's own network (``plugin``, :mod:`harness.runners.plugin`) on the clip:
                   its hooked layers and ``logits`` to ``out``
``train_parity``   training parity's measurements (:mod:`harness.runners.training`)
``train_time``     training steps timed per batch size (:mod:`harness.runners.training`)
``prepare`` / ``time``   make the ``task``'s step for ``shape`` and run it once (compile /
                   autotune), then ``iters`` steps each ended by a device sync (the bench:
                   one warm child per configuration, asked in turn so that frameworks
                   interleave A B A B and a machine's noise falls on all of them)
``probe``, ``flops``, ``memory``, ``reset_memory``   the GEMM probe, the framework's FLOP
                   counter, peak memory
``export``         the network as an ONNX graph for ``shape`` (``opset``: the exporter's own if
                   unset) to ``out``, every canonical layer a graph output (the runner's
                   ``export_onnx``; :mod:`harness.runners.onnx_runner` asks the torch or MindSpore child)

:func:`run_job` is a child that answers its job's tasks in order and quits; :class:`WarmChild`
keeps one up for as many requests as the caller makes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig
from harness.checkpoints.io import read_arrays
from harness.runners import RunnerError

TASKS = ("build", "intermediates", "forward", "isolated", "subops", "candidate", "train_parity", "train_time",
         "prepare", "time", "probe", "flops", "memory", "reset_memory", "export")
# the fields of a Task or Job that name a file: sent as absolute paths, since a child runs in its work folder
PATH_FIELDS = ("out", "input", "reference", "layer_input", "batches", "candidate_outputs", "weights", "save_weights")


@dataclass
class Task:
    op: str
    out: Optional[str] = None            # .npz written by intermediates / isolated / subops / candidate / forward
    input: Optional[str] = None          # forward, intermediates: a clip file (.npy) instead of the job's
    reference: Optional[str] = None      # isolated: the reference's outputs (.npz); train_parity: its arrays
    batch_sizes: List[int] = field(default_factory=lambda: [1])   # train_time
    input_shape: Optional[List[int]] = None                       # train_time: (N, C, T, H, W), N replaced
    warmup: int = 1                                               # train_time: untimed steps first
    layer: Optional[str] = None          # subops: the canonical layer to trace
    layer_input: Optional[str] = None    # subops: that layer's input (.npy)
    float64: bool = False                # intermediates in float64 (torch): the float32 noise floor
    plugin: Optional[str] = None         # candidate: "module:function" building the user's network
    steps: int = 0                       # train_*: steps; time: -
    batches: Optional[str] = None        # train_parity: .npz of x0, y0, x1, y1, ... and its probes
    recipe: Optional[dict] = None        # train_*: frameworks.spec.train.TrainRecipe.to_dict()
    lrs: Optional[List[float]] = None    # train_time: the learning rate of every step
    parts: List[str] = field(default_factory=list)   # train_parity: harness.runners.training.PARTS
    candidate_outputs: Optional[str] = None          # train_parity judge: the candidate's arrays (.npz)
    tolerance: Optional[float] = None                # train_parity judge: the step check's scaled tolerance
    task: Optional[str] = None           # prepare / time: "infer" or "train"
    shape: Optional[List[int]] = None    # prepare / time / flops: the batch shape
    iters: int = 1                       # time: timed steps
    opset: Optional[int] = None          # export: the ONNX opset (None: the exporter's own)

    def __post_init__(self) -> None:
        if self.op not in TASKS:
            raise ValueError(f"unknown child task {self.op!r}; one of {TASKS}")

    def to_request(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return _absolute(d)


@dataclass
class Job:
    framework: str
    config: I3DNLConfig
    device: str = "cpu"
    threads: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)     # the runner's own (mode, benchmark)
    weights: Optional[str] = None        # canonical .npz to load
    seed: Optional[int] = None           # instead: seeded weights calibrated on ``input``
    save_weights: Optional[str] = None   # where the seeded weights are written (.npz)
    input: Optional[str] = None          # float32 (N, C, T, H, W) .npy
    tasks: List[Task] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["tasks"] = [t.to_request() for t in self.tasks]
        return _absolute(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        d = dict(d)
        d["config"] = I3DNLConfig.from_dict(d["config"])
        d["tasks"] = [Task(**t) for t in d.get("tasks", [])]
        return cls(**d)


def _absolute(d: dict) -> dict:
    return {k: (os.path.abspath(v) if k in PATH_FIELDS and isinstance(v, str) else v) for k, v in d.items()}


def seeded_weights_job(cfg: I3DNLConfig, seed: int, save_weights: str, clip: str) -> Job:
    """The job that makes the project's seeded weights, calibrated on ``clip`` (.npy), into
    ``save_weights`` (the runner that makes them: :data:`harness.runners.SEEDED_BY`)."""
    from harness.runners import SEEDED_BY

    return Job(SEEDED_BY, cfg, seed=seed, save_weights=save_weights, input=clip)


# ----------------------------------------------------------------------------- parent side
def run_job(job: Job, workdir: str, name: str = "") -> dict:
    """Run ``job``'s tasks in a child process, in order; its record (``framework``,
    ``versions``, ``hardware``, the seconds it took to make weights or build, and ``tasks``:
    each task's reply), or :class:`RunnerError` with the child's one line."""
    with WarmChild(job, workdir, name or f"{job.framework}-job", build=False) as child:
        record = {k: v for k, v in child.ready.items() if k != "ready"}
        record["tasks"] = [child.request(**task.to_request()) for task in job.tasks]
        record.update(child.timings())
    return record


class WarmChild:
    """Parent side: one child process answering requests; ``build``: its network built and
    loaded before the first request (``ready`` then holds the seconds it took and the runner's
    settings: the bench and the GPU check print them).

        with WarmChild(job, workdir, "torch") as child:
            child.request(op="prepare", task="infer", shape=[1, 3, 8, 64, 64])
            child.request(op="time", task="infer", shape=[1, 3, 8, 64, 64], iters=3)["step_s"]
    """

    def __init__(self, job: Job, workdir: str, name: str, build: bool = True):
        from harness.provenance import REPO_ROOT

        os.makedirs(workdir, exist_ok=True)
        stem = os.path.join(os.path.abspath(workdir), name)
        self.framework, self.name = job.framework, name
        with open(stem + ".json", "w") as f:
            json.dump({"job": job.to_dict()}, f)
        self.log_path = stem + ".log"
        self._log = open(self.log_path, "w")
        # in the work folder, with the repository and the caller's folder (a plug-in's module) importable
        path = [REPO_ROOT, os.getcwd(), os.environ.get("PYTHONPATH")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.runners.child", stem + ".json"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=os.path.abspath(workdir), env=env)
        try:
            self.ready = self._reply()   # framework, versions, hardware, seed_s
            if build:
                self.ready.update(self.request(op="build"))
        except RunnerError:
            self.close()
            raise

    def request(self, **message) -> dict:
        if self.proc.poll() is not None:
            raise RunnerError(f"{self.framework}: {self._last_log_line()}")
        self.proc.stdin.write(json.dumps(_absolute(message)) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def timings(self) -> Dict[str, float]:
        """How long the child took to build and load its network (if it did)."""
        return {k: v for k, v in self.request(op="memory").items() if k in ("build_s", "load_s")}

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RunnerError(f"{self.framework}: {self._last_log_line()}")
        reply = json.loads(line)
        if "error" in reply:
            error = RunnerError(f"{self.framework}: {reply['error']}")
            error.errno = reply.get("errno")   # an OSError in the child: its errno
            raise error
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


def save_clip(path: str, clip: np.ndarray) -> str:
    np.save(path, np.ascontiguousarray(clip, dtype=np.float32))
    return path


# ----------------------------------------------------------------------------- child side
class _Child:
    """A child's state: the job, its weights and clip, its runner (built on first need), the
    bench's prepared steps."""

    def __init__(self, job: Job):
        from harness.runners import make_runner

        self.job = job
        self.clip = np.load(job.input, allow_pickle=False).astype(np.float32, copy=False) if job.input else None
        self.runner = make_runner(job.framework, device=job.device, threads=job.threads, **job.options)
        self.ready: Dict[str, Any] = {"ready": True, "framework": job.framework, "versions": self.runner.versions(),
                                      "hardware": self.runner.hardware()}
        self.weights = self._weights()
        self.built: Dict[str, float] = {}
        self.steps: Dict[str, Callable[[], Any]] = {}

    def _weights(self) -> Optional[Dict[str, np.ndarray]]:
        job = self.job
        if job.seed is None:
            return read_arrays(job.weights) if job.weights else None
        if self.clip is None:
            raise RunnerError("seeded weights are calibrated on the job's input clip; none given")
        from harness.checkpoints.io import write_npz

        t0 = time.perf_counter()
        weights = self.runner.seeded_weights(job.config, self.clip, job.seed)
        self.ready["seed_s"] = time.perf_counter() - t0
        if job.save_weights:
            write_npz(job.save_weights, weights)
        return weights

    def network(self):
        """The runner, its network built and loaded (once)."""
        if not self.built:
            if self.weights is None:
                raise RunnerError("this request needs weights: the job gave neither weights nor a seed")
            t0 = time.perf_counter()
            self.runner.build(self.job.config)
            t1 = time.perf_counter()
            try:
                self.runner.load(self.weights)
            except (ValueError, TypeError) as exc:
                raise RunnerError(str(exc)) from None
            self.built = {"build_s": t1 - t0, "load_s": time.perf_counter() - t1}
            self.ready["settings"] = self.runner.settings()
        return self.runner

    def clip_of(self, task: Task) -> np.ndarray:
        if task.input:
            return np.load(task.input, allow_pickle=False).astype(np.float32, copy=False)
        if self.clip is None:
            raise RunnerError(f"{task.op} needs a clip: the job's input or the request's")
        return self.clip

    def answer(self, task: Task) -> dict:
        t0 = time.perf_counter()
        reply = HANDLERS[task.op](self, task)
        reply.setdefault("op", task.op)
        if task.out and "out" not in reply:
            reply["out"] = task.out
        reply.setdefault("forward_s", time.perf_counter() - t0)
        return reply


def _write(path: str, arrays: Dict[str, np.ndarray]) -> None:
    from harness.checkpoints.io import write_npz

    write_npz(path, arrays)


def _intermediates(child: _Child, task: Task) -> dict:
    clip = child.clip_of(task)
    runner = child.network()
    outputs = runner.forward_intermediates_float64(clip) if task.float64 else runner.forward_intermediates(clip)
    outputs["input"] = clip
    _write(task.out, outputs)
    return {"float64": task.float64} if task.float64 else {}


def _forward(child: _Child, task: Task) -> dict:
    _write(task.out, {"logits": np.asarray(child.network().forward(child.clip_of(task)))})
    return {}


def _isolated(child: _Child, task: Task) -> dict:
    clip = child.clip_of(task)
    outputs = child.network().forward_isolated(clip, read_arrays(task.reference))
    outputs["input"] = clip
    _write(task.out, outputs)
    return {}


def _subops(child: _Child, task: Task) -> dict:
    _write(task.out, child.network().forward_subops(task.layer, np.load(task.layer_input, allow_pickle=False)))
    return {"layer": task.layer}


def _candidate(child: _Child, task: Task) -> dict:
    """The user's own network, built by their function and read through hooks (not ours)."""
    clip = child.clip_of(task)
    outputs = child.runner.run_plugin(task.plugin, child.job.config, child.weights, clip)
    outputs["input"] = clip
    _write(task.out, outputs)
    return {}


def _train(child: _Child, task: Task) -> dict:
    from harness.runners import training

    if child.weights is None:
        raise RunnerError(f"{task.op} needs weights: the job gave neither weights nor a seed")
    run = training.run if task.op == "train_parity" else training.time_training
    return run(child.job, task, child.weights, child.runner)


def _prepare(child: _Child, task: Task) -> dict:
    key = f"{task.task}:{task.shape}"
    child.steps.pop(key, None)
    runner = child.network()
    t0 = time.perf_counter()
    step = runner.timing_step(task.shape, task.task)
    step()
    runner.sync()
    child.steps[key] = step
    return {"first_s": time.perf_counter() - t0}


def _time(child: _Child, task: Task) -> dict:
    step, wall, cpu = child.steps[f"{task.task}:{task.shape}"], [], []
    for _ in range(int(task.iters)):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        child.runner.sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"step_s": wall, "cpu_s": cpu, "load_average": list(os.getloadavg())}


def _memory(child: _Child, task: Task) -> dict:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"host_rss_peak_mib": usage.ru_maxrss / 1024, **child.runner.memory(), **child.built}


def _reset_memory(child: _Child, task: Task) -> dict:
    child.runner.reset_memory()
    return {"ok": True}


def _export(child: _Child, task: Task) -> dict:
    """The network as an ONNX graph for ``task.shape``: the runner's ``export_onnx`` (its provenance)."""
    runner = child.network()
    export = getattr(runner, "export_onnx", None)
    if export is None:
        raise RunnerError(f"{child.job.framework} exports no ONNX graph")
    if not task.out or not task.shape:
        raise RunnerError("export needs out (the .onnx to write) and shape (the input's N,C,T,H,W)")
    return dict(export(task.out, [int(d) for d in task.shape], task.opset))


HANDLERS: Dict[str, Callable[[_Child, Task], dict]] = {
    "build": lambda child, task: {"settings": child.network().settings(), **child.built},
    "intermediates": _intermediates, "forward": _forward, "isolated": _isolated, "subops": _subops,
    "candidate": _candidate, "train_parity": _train, "train_time": _train, "prepare": _prepare, "time": _time,
    "probe": lambda child, task: child.network().gemm_probe(),
    "flops": lambda child, task: {"flops": child.network().flop_count(task.shape)},
    "memory": _memory, "reset_memory": _reset_memory, "export": _export,
}


def _serve(job: Job, channel) -> None:
    """Say ready, then answer requests until ``quit``; a failed request answers its error in
    one line and the child stays up (out of memory at one batch size must not end the others)."""
    def send(message: dict) -> None:
        channel.write(json.dumps(message, default=str) + "\n")
        channel.flush()

    try:
        child = _Child(job)
    except Exception as exc:  # noqa: BLE001 - the first answer says why the child cannot serve, then it ends
        send(_error_reply(exc))
        return
    send(child.ready)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            send({"ok": True})
            return
        try:
            reply = child.answer(Task(**request))
        except Exception as exc:  # noqa: BLE001 - one request's failure is its answer, not the child's end
            reply = _error_reply(exc)
        send(reply)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("error: usage: python -m harness.runners.child JOB.json (an internal protocol; see its docstring)",
              file=sys.stderr)
        return 2
    # the protocol owns the real stdout; whatever a framework prints goes to stderr (the log)
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        with open(argv[0]) as f:
            job = Job.from_dict(json.load(f)["job"])
        from harness.runners import runner_class

        runner_class(job.framework).prepare_process()   # before anything imports the framework
        _serve(job, channel)
    except (RunnerError, ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _error_reply(exc: BaseException) -> dict:
    reply = {"error": _one_line(exc)}
    if isinstance(exc, OSError) and exc.errno:
        reply["errno"] = exc.errno   # the parent can name the reason for its own file
    return reply


def _one_line(exc: BaseException) -> str:
    """A failure in words: a bad-input error's own message, an OS error's file and reason,
    anything else with its type (an unexpected failure says what it was)."""
    from harness.files import describe_os_error

    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, (RunnerError, ValueError, KeyError, TypeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}".strip(": ")


if __name__ == "__main__":
    sys.exit(main())
