"""What every command shares: the error families and their exit codes, a one-line
argparse, argument types that refuse nonsense before any work, the ``main`` wrapper, and
running a command module in a process of its own.

Exit codes (the contract of every command): 0 ok, 1 a check failed (:class:`CheckFailed`),
2 bad input (:class:`InputError`, and the library errors listed in :data:`BAD_INPUT`),
one line on stderr and never a traceback; 130 when interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
from typing import Callable, List, Optional, Sequence

from harness.errors import CheckFailed, InputError  # noqa: F401 - the exit-code families, re-raised here
from harness.files import OutputPathError
from harness.text import printable as _printable


def bad_input_types() -> tuple:
    """The library errors that mean bad input (imported lazily: a command that never
    touches checkpoints does not import their readers). The runners' error is an
    :class:`InputError` itself."""
    from harness.checkpoints.io import CheckpointError
    from harness.data.index import DatasetError

    return (InputError, OutputPathError, CheckpointError, DatasetError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def one_line(exc: BaseException) -> str:
    """An error's first line, safe to print: a path or key holding a terminal escape is shown
    escaped (names already escaped by the message's author keep their backslashes)."""
    from harness.text import printable

    text = str(exc).strip().strip("'\"")
    return printable(text.splitlines()[0], backslashes=False) if text else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that its temporaries are removed and its
    framework processes stopped on the way out, as on Ctrl-C (exit 143)."""


def _terminated(signum, frame) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second TERM ends the process at once
    raise Terminated()


def run_main(body: Callable[[], Optional[int]], verbose: bool = False) -> int:
    """Run a command's body and map its errors to the exit-code contract. A write that
    fails (full disk, file-size limit, permissions) or an allocation that cannot be met is
    one line and exit 2, as bad input is: the files written are atomic, so nothing
    half-written is left behind."""
    import signal

    if hasattr(signal, "SIGXFSZ"):   # past `ulimit -f`, a write fails with EFBIG instead of killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)   # `kill`, `timeout`: clean up as Ctrl-C does
    try:
        code = body()
        return 0 if code is None else int(code)
    except CheckFailed as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated)
        print("error: terminated" if term else "error: interrupted", file=sys.stderr)
        return 143 if term else 130
    except BrokenPipeError:  # `... | head`: the reader has gone, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MemoryError:
        print("error: out of memory (the input or the run is larger than this machine's memory)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only the bad-input family is mapped; the rest re-raises
        if isinstance(exc, OSError) and not isinstance(exc, bad_input_types()):
            from harness.files import describe_os_error

            if verbose:
                logging.getLogger("harness").exception("operating-system error")
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, bad_input_types()):
            if verbose:
                logging.getLogger("harness").exception("bad input")
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        raise


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    _one_line_warnings()


def _one_line_warnings() -> None:
    """A command prints a library warning (the spec's caveats, e.g. the seed's std typo) as one
    ``warning: ...`` line, once per message, instead of a file path and a source line."""
    import warnings

    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip()
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


# ------------------------------------------------------------------ shared options
# One wording for the options every command shares (tests/test_cli_vocabulary.py holds
# every command to it: each option has help, each default is stated).
def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log each step to stderr (and a traceback with a bad-input error)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", choices=["cpu", "gpu"], default=default,
                   help=f"where the network runs: cpu, or gpu (CUDA; MindSpore's GPU target) (default {default})")


def add_allow_outside_root(group) -> None:
    group.add_argument("--allow-outside-root", action="store_true",
                       help="read videos that lie outside --data-root (an id with '..', an absolute list-file path, "
                            "a symbolic link out of the root); without it each is an outside_root fault, never opened")


def say(text: str = "") -> None:
    """A line of what the command does or found (stdout: stderr is kept for the error line)."""
    print(text, flush=True)


def caveats_to_stdout() -> None:
    """Library warnings (a preset's known quirk) print as one ``warning:`` line each, once, on
    stdout with the rest of what the run is, so that a refused run's stderr is its error line alone."""
    import warnings

    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = _printable(str(message).strip())
        if text not in shown:
            shown.add(text)
            say(f"warning: {text}")

    warnings.showwarning = show


# ------------------------------------------------------------------ argument types
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# more classes than any video dataset has: a bigger number is a typo, refused before the
# classifier (classes x 2048 floats) is allocated
MAX_CLASSES = 100_000


def num_classes(text: str) -> int:
    """A classifier size: 1..MAX_CLASSES."""
    value = positive_int(text)
    if value > MAX_CLASSES:
        raise argparse.ArgumentTypeError(f"{value} classes is more than any dataset has (the limit is {MAX_CLASSES:,})")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def tolerance(text: str) -> float:
    """A finite, non-negative float (``nan`` would make every comparison pass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def int_list(text: str) -> List[int]:
    """``1,4,8``: positive integers."""
    values = [positive_int(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return values


# A clip larger than this (elements) would need > 8 GiB of float32 per input alone.
MAX_CLIP_ELEMENTS = 2 ** 31


def clip_shape(text: str) -> tuple:
    """``N,C,T,H,W`` with positive sizes and a sane total (checked before any allocation)."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated shape: {text!r}") from None
    if len(shape) != 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError("input shape must be N,C,T,H,W with positive sizes")
    check_clip_size(shape)
    return shape


def check_clip_size(shape: Sequence[int]) -> None:
    total = 1
    for d in shape:
        total *= int(d)
    if total > MAX_CLIP_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"shape {'x'.join(map(str, shape))} is {total:.3g} elements ({4 * total / 2 ** 30:.0f} GiB "
            f"as float32); the limit is {MAX_CLIP_ELEMENTS:.3g}")
