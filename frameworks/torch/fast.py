"""How the PyTorch network is *run* for timing: numerics (float32, TF32, autocast), memory
layout, ``torch.compile``, CUDA graphs, the training step, the GEMM probe and the FLOP
counter. Nothing here changes what the network computes beyond the dtype asked for.

timm's ``benchmark.py`` is the model: the input lives on the device before the clock
starts, every step is one call, and the caller synchronises the device before it stops
the clock. Parity runs never come here: they run float32 with TF32 and cuDNN's autotuner
off (:class:`harness.runners.torch_runner.TorchDevice`).
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = ("float32", "tf32", "bfloat16", "float16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_dtype(dtype: str, device: torch.device) -> None:
    """Refuse what the device cannot run, in one line."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    if dtype == "tf32" and device.type != "cuda":
        raise ValueError("tf32 is a CUDA (Ampere and later) mode of float32 matmuls and convolutions; "
                         "the CPU has none: use float32")


def set_numerics(dtype: str, device: torch.device, benchmark: bool) -> None:
    """TF32 on only for ``tf32``; cuDNN's autotuner as asked (on for timing)."""
    check_dtype(dtype, device)
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark


def autocast(dtype: str, device: torch.device, cache: bool = True):
    """``torch.autocast`` for the reduced dtypes, a no-op for float32 and TF32."""
    if dtype in ("bfloat16", "float16"):
        return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype), cache_enabled=cache)
    return contextlib.nullcontext()


def to_layout(module: nn.Module, x: torch.Tensor, channels_last: bool):
    """``channels_last_3d`` for the weights and the input (NTHWC in memory), or as they are."""
    if channels_last:
        return module.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)
    return module, x


def compiled(module: nn.Module, mode: Optional[str]) -> Callable:
    if not mode:
        return module
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; one of {', '.join(COMPILE_MODES)}")
    return torch.compile(module, mode=None if mode == "default" else mode)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphed(step: Callable[[], torch.Tensor], device: torch.device, warmup: int = 3) -> Callable[[], torch.Tensor]:
    """``step`` captured once as a CUDA graph (after a few eager runs on a side stream, which
    also let cuDNN's autotuner choose); each call then replays it."""
    if device.type != "cuda":
        raise ValueError("CUDA graphs need --device gpu")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def inference_step(model: nn.Module, x: torch.Tensor, *, dtype: str = "float32", channels_last: bool = False,
                   compile_mode: Optional[str] = None, cuda_graphs: bool = False) -> Callable[[], torch.Tensor]:
    """One forward pass on the device-resident batch ``x``, as a zero-argument callable."""
    model, x = to_layout(model, x, channels_last)
    fn = compiled(model, compile_mode)
    cast = autocast(dtype, x.device, cache=not cuda_graphs)

    def step() -> torch.Tensor:
        with torch.inference_mode(), cast:
            return fn(x)
    return _graphed(step, x.device) if cuda_graphs else step


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                  dtype: str = "float32", channels_last: bool = False, compile_mode: Optional[str] = None
                  ) -> Callable[[], torch.Tensor]:
    """One SGD step (forward, cross entropy, backward, optimiser), the body of
    :meth:`frameworks.torch.train.TorchTrainer.step` on device-resident data; float16
    scales the loss (``GradScaler``), as float16 training must."""
    model, x = to_layout(model, x, channels_last)
    fn = compiled(model, compile_mode)
    scaler = torch.amp.GradScaler(x.device.type) if dtype == "float16" else None

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(dtype, x.device):
            loss = F.cross_entropy(fn(x).float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss
    return step


def gemm_probe(dtype: str, device: torch.device, size: Optional[int] = None, repeats: int = 3) -> Dict[str, float]:
    """GFLOP/s of one square matrix product in ``dtype`` on ``device``, now: the attainable
    rate that utilisation is measured against (best of ``repeats``)."""
    check_dtype(dtype, device)
    size = size or (8192 if device.type == "cuda" else 2048)
    torch_dtype = getattr(torch, dtype) if dtype in ("bfloat16", "float16") else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch_dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=torch_dtype, generator=gen)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        torch.mm(a, b)
        sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"gflops": 2 * size ** 3 / best / 1e9, "size": size, "dtype": dtype}


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass by ``torch.utils.flop_counter.FlopCounterMode``, run on a
    copy of ``model`` on the meta device (shapes only: no arithmetic, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    x = torch.empty(tuple(input_shape), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return int(counter.get_total_flops())


def memory(device: torch.device) -> Dict[str, float]:
    """Peak device memory since the last :func:`reset_memory` (GPU only), in MiB."""
    if device.type != "cuda":
        return {}
    return {"device_mem_peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
            "device_mem_reserved_peak_mib": torch.cuda.max_memory_reserved(device) / 2 ** 20}


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
