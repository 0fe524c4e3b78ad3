"""Shared fixtures. Tests run from the repository root (``frameworks`` is a package there)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")


def run_cli(module: str, *args: str, timeout: float = 900, env: dict = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` from the repository root, capturing text output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def cli():
    return run_cli
