"""Pickle payloads for tests/test_checkpoint_safety.py, importable by the commands the tests
run in subprocesses (as ``tests.safety_payloads``). Each writes a marker file when, and
only when, something unpickles it fully."""
from __future__ import annotations


class Call:
    """Pickles as ``func(*args)``: whoever unpickles it fully calls ``func``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_marker(path: str) -> str:
    """A harmless function that leaves a trace: the proof that full unpickling happened."""
    with open(path, "w") as f:
        f.write("unpickled\n")
    return path


class TrustedNote:
    """An object of a class unknown to the harness, as a training framework might keep in a
    checkpoint's ``meta``: unpickling it fully calls :func:`write_marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (self.marker,)
