"""What every command shares: the bad-input error, a one-line argparse, and running a
command module in a process of its own."""
from __future__ import annotations

import argparse
import subprocess
import sys
from typing import List


class InputError(Exception):
    """Bad input (missing file, bad checkpoint, unknown option): one line on stderr, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def run_module(module: str, argv: List[str]) -> subprocess.CompletedProcess:
    """``python -m module argv`` in a fresh process (one framework per process), captured."""
    return subprocess.run([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def failure_line(proc: subprocess.CompletedProcess, fallback: str) -> str:
    """The one-line reason a command printed last on stderr (without its ``error:``)."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip().removeprefix("error: ") if lines else fallback
