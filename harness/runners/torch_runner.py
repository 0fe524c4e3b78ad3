"""The PyTorch runner (``RUNNERS["torch"]``), and the torch plumbing it shares with the
mmaction2 runner (:class:`TorchDevice`)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names
from harness.runners import Runner, RunnerError


class TorchDevice:
    """torch on one device: threads, numerics policy, tensors in and out, sync, versions.

    Correctness first: TF32 is off on GPU (a 1e-3 error would hide real bugs) and cuDNN's
    autotuner is off, so that GPU results are repeatable; ``benchmark=True`` turns the
    autotuner on for timing runs.
    """

    def __init__(self, device: str, threads: int, benchmark: bool = False):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = benchmark
        if device == "gpu" and not torch.cuda.is_available():
            raise RunnerError("--device gpu asked for, but torch sees no CUDA device")
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")

    def tensor(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.dev)

    @staticmethod
    def numpy(t) -> np.ndarray:
        return t.detach().cpu().numpy()

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def versions(self) -> Dict[str, str]:
        out = {"torch": self.torch.__version__}
        if self.dev.type == "cuda":
            out.update(cuda=str(self.torch.version.cuda), cudnn=str(self.torch.backends.cudnn.version()))
        return out

    def hardware(self) -> Dict[str, str]:
        return {"gpu": self.torch.cuda.get_device_name(0)} if self.dev.type == "cuda" else {}


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, benchmark: bool = False):
        super().__init__(device, threads)
        self.backend = TorchDevice(device, self.threads, benchmark)
        self.model = None

    def build(self, cfg: I3DNLConfig) -> None:
        from frameworks.torch.model import I3DNL

        self.cfg = cfg
        self.model = I3DNL(cfg).eval().to(self.backend.dev)

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from frameworks.torch.weights import load_canonical

        load_canonical(self.model, arrays, self.cfg)
        self.model.to(self.backend.dev)

    def forward(self, clip: np.ndarray) -> np.ndarray:
        with self.backend.torch.no_grad():
            return self.backend.numpy(self.model(self.backend.tensor(clip)))

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        with self.backend.torch.no_grad():
            out = self.model.forward_intermediates(self.backend.tensor(clip))
        return {k: self.backend.numpy(v) for k, v in out.items()}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out, previous = {}, clip
        with self.backend.torch.no_grad():
            for name in layer_names(self.cfg):
                out[name] = self.backend.numpy(self.model.forward_stage(name, self.backend.tensor(previous)))
                previous = reference[name]
        return out

    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        from frameworks.torch.subops import trace

        with self.backend.torch.no_grad():
            return {k: self.backend.numpy(v) for k, v in trace(self.model, name, self.backend.tensor(x)).items()}

    def forward_intermediates_float64(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        torch = self.backend.torch
        model = self.model.double()
        try:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float64)).to(self.backend.dev)
                return {k: self.backend.numpy(v) for k, v in model.forward_intermediates(x).items()}
        finally:
            self.model.float()

    def sync(self) -> None:
        self.backend.sync()

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), **self.backend.versions()}

    def hardware(self) -> Dict[str, str]:
        return {**super().hardware(), **self.backend.hardware()}


def seeded_weights(cfg: I3DNLConfig, clip: np.ndarray, seed: int) -> Dict[str, np.ndarray]:
    """The project's seeded random weights: every test and command that compares
    frameworks on random weights uses these (see :func:`frameworks.torch.weights.randomize`
    for why they are well conditioned), with BN statistics calibrated on ``clip``."""
    import torch

    from frameworks.torch.model import I3DNL
    from frameworks.torch.weights import randomize, to_canonical

    torch.manual_seed(seed)
    model = I3DNL(cfg)
    randomize(model, torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)), seed)
    return to_canonical(model)
