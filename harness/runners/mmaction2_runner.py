"""mmaction2's own ``Recognizer3D``, built from mmaction2's own config files: the oracle
(``RUNNERS["mmaction2"]``). It shares the torch plumbing (:class:`TorchDevice`), not the
torch runner: the network, the loading and the way intermediates are read are mmaction2's."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from frameworks.spec.arch import I3DNLConfig, layer_names
from harness.runners import RunnerError
from harness.runners.torch_runner import OnTorchDevice, TorchDevice

# preset -> (config under mmaction2's configs/recognition/i3d, backbone overrides)
CONFIGS = {
    "i3d_nl_dot_product_r50": ("i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
    "i3d_nl_embedded_gaussian_r50": ("i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
    "i3d_nl_gaussian_r50": ("i3d_imagenet-pretrained-r50-nl-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
    "i3d_r50": ("i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py", {}),
    # C2D: mmaction2's ResNet3d with no temporal kernel anywhere.
    "c2d_r50": ("i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py",
                {"conv1_kernel": (1, 7, 7),
                 "inflate": ((0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0, 0), (0, 0, 0))}),
}


class MMAction2Runner(OnTorchDevice):
    name = "mmaction2"
    title = "mmaction2"
    evaluates = False   # the oracle: parity compares with it; evaluate, infer and drift run on ours

    @classmethod
    def bench_variants(cls, variants: list) -> list:
        """mmaction2 always runs its own model: one configuration, whatever ``--variants`` says
        (only the torch run options given for every run apply)."""
        return ["exact"]

    def __init__(self, device: str = "cpu", threads: Optional[int] = None, benchmark: bool = False,
                 dtype: str = "float32", channels_last: bool = False, compile: Optional[str] = None,
                 cuda_graphs: bool = False):
        super().__init__(device, threads)
        self.backend = TorchDevice(device, self.threads, benchmark, dtype, channels_last, compile, cuda_graphs)
        self.model = None
        self._optimizer = None

    def build(self, cfg: I3DNLConfig) -> None:
        import warnings

        warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
        try:
            import mmaction
            from mmaction.registry import MODELS
            from mmaction.utils import register_all_modules
            from mmengine.config import Config
        except ImportError as exc:
            raise RunnerError(f"the mmaction2 reference needs mmaction2/mmengine/mmcv-lite ({exc})") from None
        if cfg.name not in CONFIGS:
            raise RunnerError(f"arch {cfg.name!r} has no mmaction2 counterpart (mmaction2 builds: {', '.join(CONFIGS)})")
        if cfg.depth != 50:
            raise RunnerError("the mmaction2 reference is wired for depth 50 only")
        filename, overrides = CONFIGS[cfg.name]
        path = os.path.join(os.path.dirname(mmaction.__file__), ".mim", "configs", "recognition", "i3d", filename)
        register_all_modules()
        model_cfg = Config.fromfile(path).model
        model_cfg.backbone.update(pretrained=None, pretrained2d=False, **overrides)
        model_cfg.cls_head.num_classes = cfg.num_classes
        self.cfg = cfg
        self.model = MODELS.build(model_cfg).eval().to(self.backend.dev)

    def load(self, arrays: Dict[str, np.ndarray]) -> None:
        from harness.checkpoints.mmaction2 import from_canonical

        torch = self.backend.torch
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in from_canonical(arrays, self.cfg).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RunnerError(f"mmaction2 model rejected the weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model.to(self.backend.dev)

    def _hook_table(self):
        """canonical layer -> (module, 'in' | 'out'); a block with a non-local block
        returns the non-local output, so the bare block is the non-local's input."""
        bb = self.model.backbone
        table = {"stem": (bb.conv1, "out"), "pool1": (bb.maxpool, "out"), "pool2": (bb.pool2, "out")}
        for s in range(4):
            for b, block in enumerate(getattr(bb, f"layer{s + 1}")):
                name = f"res{s + 2}.{b}"
                if getattr(block, "non_local", False):
                    table[name] = (block.non_local_block, "in")
                    table[f"{name}.non_local"] = (block.non_local_block, "out")
                else:
                    table[name] = (block, "out")
        return table

    def forward_intermediates(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
        out: Dict[str, np.ndarray] = {}
        keep = lambda name, t: out.__setitem__(name, self.backend.numpy(t).copy())  # noqa: E731
        wanted = set(layer_names(self.cfg))
        handles = []
        for name, (module, where) in self._hook_table().items():
            if name not in wanted:
                continue
            if where == "in":
                handles.append(module.register_forward_pre_hook(lambda m, args, name=name: keep(name, args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, result, name=name: keep(name, result)))
        head = self.model.cls_head
        handles.append(head.avg_pool.register_forward_hook(lambda m, args, result: keep("pool", result.flatten(1))))
        try:
            with self.backend.torch.no_grad():
                logits = head(self.model.backbone(self.backend.tensor(clip)))
        finally:
            for h in handles:
                h.remove()
        out["logits"] = self.backend.numpy(logits)
        return {k: out[k] for k in layer_names(self.cfg)}

    def forward_isolated(self, clip: np.ndarray, reference: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise RunnerError("mmaction2 runs its blocks with their non-local blocks inside, so it has no isolated "
                          "mode; use it as the reference of a propagated comparison")

    def forward_subops(self, name: str, x: np.ndarray) -> Dict[str, np.ndarray]:
        raise RunnerError("mmaction2 has no sub-operation trace; drill down between our two frameworks")

    def forward(self, clip: np.ndarray) -> np.ndarray:
        with self.backend.torch.no_grad(), self.backend.autocast():
            return self.backend.numpy(self.model.cls_head(self.model.backbone(self.backend.tensor(clip))))

    def sync(self) -> None:
        self.backend.sync()

    # ------------------------------------------------------------------ timing (harness.bench)
    def timing_step(self, shape, task: str = "infer"):
        """mmaction2's backbone and head as its test and train steps run them: the baseline.
        Training: the same loss and SGD (momentum 0.9, weight decay 1e-4) as ours."""
        torch = self.backend.torch
        net = _backbone_head(self.model.backbone, self.model.cls_head)
        if task == "infer":
            return self.backend.inference_step(net.eval(), shape, self.cfg.num_classes)
        net.train()
        if self._optimizer is None:
            self._optimizer = torch.optim.SGD(net.parameters(), lr=3e-4, momentum=0.9, weight_decay=1e-4)
        return self.backend.training_step(net, self._optimizer, shape, self.cfg.num_classes)

    def flop_count(self, shape) -> Optional[int]:
        from frameworks.torch import fast

        return fast.count_flops(_backbone_head(self.model.backbone, self.model.cls_head).eval(), shape)

    def settings(self) -> Dict[str, object]:
        return self.backend.settings()

    def versions(self) -> Dict[str, str]:
        import mmaction
        import mmcv
        import mmengine

        return {**super().versions(), **self.backend.versions(), "mmaction2": mmaction.__version__,
                "mmcv": mmcv.__version__, "mmengine": mmengine.__version__}


def _backbone_head(backbone, head):
    """mmaction2's inference path (``head(backbone(x))``) as one module, made on first use
    so that importing this runner imports no torch."""
    from torch import nn

    class BackboneHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, x):
            return self.head(self.backbone(x))
    return BackboneHead()
