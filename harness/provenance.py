"""What every result JSON carries about where it came from: when, from which code (commit,
dirty or not), on what machine (CPU model, cores, load), the command as typed, and each
framework process's versions and hardware (:func:`result_doc`)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_SCHEMA = 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def git_state() -> dict:
    """The commit the code ran from, and whether the working tree differed from it."""
    def git(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(["git", "-C", REPO_ROOT, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def command_line() -> str:
    """How this process was started, as a user would type it: ``python -m harness.align ...``
    for a module (``sys.argv[0]`` would be the module's absolute path)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return " ".join(head + sys.argv[1:])


def utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(runs: Optional[dict] = None) -> dict:
    """The block every result JSON carries: when, from which code, on what machine, under
    which load, and (``runs``) each framework process's versions and hardware."""
    import platform

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = None
    doc = {"date": utc_now(),
           "command": command_line(),
           "git": git_state(), "host": platform.node(), "python": platform.python_version(),
           "cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load}
    if runs is not None:
        doc["runs"] = runs
    return doc


def result_doc(kind: str, body: dict, runs: Optional[dict] = None) -> dict:
    """A result JSON: its ``kind`` (what the report dispatches on), one provenance block,
    and the command's own fields."""
    return {"kind": kind, "schema": RESULT_SCHEMA, **body, "provenance": provenance(runs)}
