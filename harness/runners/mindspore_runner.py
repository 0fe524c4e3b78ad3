"""The MindSpore runner (``RUNNERS["ms"]``): build, load, forward with named intermediates.

oneDNN trap: MindSpore 2.10's bundled oneDNN picks a *reference* (unvectorised)
convolution on AVX-512 CPUs, about 100x slower than its AVX2 kernels (a 1x3x32x224x224
forward: 96 s against 1.5 s in graph mode). oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when
MindSpore loads it, so :func:`configure_onednn_isa` must run before ``import mindspore``:
the runner calls it itself, caps the ISA at AVX2 on an AVX-512 CPU unless the user set the
variable, and reports what it did in :meth:`MindSporeRunner.versions` and ``hardware``.
The cap is for the MindSpore process only (one framework per process, see
:mod:`harness.runners.child`): in a process that also runs torch, torch's oneDNN is capped too.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names
from harness.runners import Runner, RunnerError

log = logging.getLogger(__name__)

ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
_ISA_STATE: Dict[str, str] = {}
_THREADS_SET: List[int] = []   # threads_num() may be called once per process


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_cpu_isa(flags: Optional[set] = None) -> str:
    """The widest x86 vector ISA the CPU reports, in oneDNN's vocabulary."""
    flags = cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512_CORE"
    if "avx2" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    if "sse4_1" in flags:
        return "SSE41"
    return "unknown"


def configure_onednn_isa() -> Dict[str, str]:
    """Cap oneDNN at AVX2 on AVX-512 CPUs, unless the user chose an ISA; call before
    ``import mindspore``. Returns (and remembers) what was decided and why."""
    if _ISA_STATE:
        return dict(_ISA_STATE)
    cpu_isa = detect_cpu_isa()
    user = os.environ.get(ISA_VARIABLE) or os.environ.get("DNNL_MAX_CPU_ISA")
    if user:
        isa, how = user, "set by the user"
    elif "mindspore" in sys.modules:
        isa, how = "oneDNN default", "mindspore was imported before the runner could set it"
    elif cpu_isa == "AVX512_CORE":
        os.environ[ISA_VARIABLE] = "AVX2"
        isa, how = "AVX2", "set by the runner: MindSpore's oneDNN runs reference convolutions on AVX-512"
    else:
        isa, how = "oneDNN default", f"left to oneDNN on a {cpu_isa} CPU"
    _ISA_STATE.update(cpu_isa=cpu_isa, onednn_max_cpu_isa=isa, onednn_isa_source=how)
    if how.startswith("mindspore was imported"):
        log.warning("%s not set before mindspore was imported: convolutions may be ~100x slower "
                    "on this %s CPU", ISA_VARIABLE, cpu_isa)
    return dict(_ISA_STATE)


class MindSporeRunner(Runner):
    """Our MindSpore I3D-NL in ``graph`` (GRAPH_MODE) or ``pynative`` mode, on cpu or gpu."""

    name = "ms"
    MODES = ("graph", "pynative")

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, mode: str = "graph"):
        super().__init__(device, threads)
        if mode not in self.MODES:
            raise RunnerError(f"unknown MindSpore mode {mode!r}; use graph or pynative")
        self.mode = mode
        self.isa = configure_onednn_isa()
        try:
            import mindspore as ms
        except ImportError as exc:
            raise RunnerError(f"MindSpore is not installed ({exc})") from None
        self.ms = ms
        self._set_device()
        self._activate()
        if device == "cpu":
            self._set_threads(self.threads)
        self.net = self._intermediates = self._isolated = None

    # ------------------------------------------------------------------ context
    def _set_device(self) -> None:
        """Choose the device once: MindSpore refuses a change after its first kernel ran."""
        ms = self.ms
        target = "GPU" if self.device == "gpu" else "CPU"
        if ms.get_context("device_target") != target:
            try:
                ms.set_device(target)
            except (RuntimeError, ValueError) as exc:
                raise RunnerError(f"MindSpore cannot use {target} here ({str(exc).splitlines()[0]})") from None
        if ms.get_context("device_target") != target:
            raise RunnerError(f"--device {self.device} asked for, but MindSpore runs on "
                               f"{ms.get_context('device_target')} in this process")

    def _activate(self) -> None:
        """Make this runner's mode current (several runners may share a process)."""
        ms = self.ms
        ms.set_context(mode=ms.GRAPH_MODE if self.mode == "graph" else ms.PYNATIVE_MODE)

    def _set_threads(self, n: int) -> None:
        if _THREADS_SET:
            if _THREADS_SET[0] != n:
                log.warning("MindSpore CPU threads already set to %d in this process; %d ignored", _THREADS_SET[0], n)
            self.threads = _THREADS_SET[0]
            return
        try:
            self.ms.device_context.cpu.op_tuning.threads_num(n)
        except (RuntimeError, AttributeError) as exc:  # set elsewhere in this process, or an older API
            log.warning("could not set MindSpore CPU threads to %d (%s)", n, exc)
            return
        _THREADS_SET.append(n)

    def _tensor(self, x: np.ndarray):
        return self.ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))

    # ------------------------------------------------------------------ Runner API
    def build(self, cfg: I3DNLConfig) -> None:
        from frameworks.mindspore.model import IntermediatesNet, IsolatedStagesNet, build_model

        self._activate()
        self.cfg = cfg
        self.net = build_model(cfg)
        self._intermediates = IntermediatesNet(self.net)
        self._isolated = IsolatedStagesNet(self.net)

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from frameworks.mindspore.weights import load_canonical

        if self.net is None:
            raise RunnerError("build() the network before loading weights")
        load_canonical(self.net, arrays, self.cfg)

    def weights(self) -> Dict[str, np.ndarray]:
        """The network's weights as canonical arrays."""
        from frameworks.mindspore.weights import to_canonical

        return to_canonical(self.net, self.cfg)

    def forward(self, clip: np.ndarray) -> np.ndarray:
        self._activate()
        return self.net(self._tensor(clip)).asnumpy()

    def sync(self) -> None:
        # asnumpy() already waits for its result; this covers a caller that keeps Tensors
        synchronize = getattr(getattr(self.ms, "runtime", None), "synchronize", None)
        if synchronize is not None:
            synchronize()

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        self._activate()
        outputs = self._intermediates(self._tensor(clip))
        return {name: out.asnumpy() for name, out in zip(layer_names(self.cfg), outputs)}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = layer_names(self.cfg)
        missing = [n for n in names[:-1] if n not in reference]
        if missing:
            raise RunnerError(f"isolated mode needs the reference's outputs; missing {', '.join(missing[:4])}")
        self._activate()
        inputs = [self._tensor(clip)] + [self._tensor(reference[n]) for n in names[:-1]]
        outputs = self._isolated(*inputs)
        return {name: out.asnumpy() for name, out in zip(names, outputs)}

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), "mindspore": self.ms.__version__, "ms_mode": self.mode,
                "onednn_max_cpu_isa": self.isa["onednn_max_cpu_isa"]}

    def hardware(self) -> Dict[str, str]:
        hw = super().hardware()
        hw.update(self.isa)
        return hw
    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        """In PyNative, one step at a time (each step is a kernel of its own either way)."""
        from frameworks.mindspore.subops import trace

        ms = self.ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
        try:
            return {k: v.asnumpy() for k, v in trace(self.net, name, self._tensor(x)).items()}
        finally:
            self._activate()

