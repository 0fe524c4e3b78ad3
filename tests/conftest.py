"""Shared fixtures. Tests run from the repository root (``frameworks`` is a package there)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")


def run_cli(module: str, *args: str, timeout: float = 900, env: dict = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` from the repository root, capturing text output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env={**os.environ, **(env or {})})


def make_videos(root, classes: int, train: int, val: int, size: str = "128x96", faults: bool = False):
    """A generated Kinetics-style dataset under ``root`` (harness.data.synthetic): ``train`` and
    ``val`` two-second videos per class, and one video of each planted fault with ``faults``."""
    proc = run_cli("harness.data.synthetic", root, "--classes", classes, "--videos-per-class", train,
                   "--val-videos-per-class", val, "--seconds", "2", "--size", size, "--no-progress",
                   *(["--faults"] if faults else []))
    assert proc.returncode == 0, proc.stderr
    return root


def kill_when(module: str, *args, ready, timeout: float) -> None:
    """Start ``python -m module args`` (output discarded) and SIGKILL it as soon as ``ready()``
    holds, it has ended, or ``timeout`` seconds have passed; the caller asserts where it landed."""
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def cli():
    return run_cli
