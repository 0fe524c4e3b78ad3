"""Every function in ``harness/`` and ``frameworks/`` fits on a screen: at most 60 lines from
its ``def`` line through the last line of its body (the design's rule: "a function fits on a
screen"). A nested function counts on its own and inside its parent.

Functions that were longer when this test was written, in modules whose owners have not split
them yet, are listed in :data:`ALLOWED` with their length then. The list can only shrink: an
allowed function may not grow, and one that fits (or is gone) must leave the list."""
from __future__ import annotations

import ast
import os
from typing import Dict, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("harness", "frameworks")
LIMIT = 60

# "path::qualified name": its length in lines when it was allowed. Remove an entry when its
# function is split; never add one.
ALLOWED: Dict[str, int] = {
}


def function_lengths() -> Dict[str, Tuple[int, int]]:
    """``{"path::qualified name": (lines, first line)}`` of every function of the packages."""
    found: Dict[str, Tuple[int, int]] = {}

    def walk(node: ast.AST, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{path}::{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                found[key] = max(found.get(key, (0, 0)), (length, child.lineno))
                walk(child, path, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, path, f"{prefix}{child.name}.")
            else:
                walk(child, path, prefix)

    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                full = os.path.join(folder, name)
                with open(full, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), filename=full)
                walk(tree, os.path.relpath(full, ROOT).replace(os.sep, "/"), "")
    return found


def test_no_function_is_longer_than_a_screen():
    offenders = {key: (n, line) for key, (n, line) in function_lengths().items()
                 if n > ALLOWED.get(key, LIMIT)}
    assert not offenders, f"functions over {LIMIT} lines (or over their allowed length); split them:\n" + "\n".join(
        f"  {key} (line {line}): {n} lines" + (f", allowed {ALLOWED[key]}" if key in ALLOWED else "")
        for key, (n, line) in sorted(offenders.items()))


def test_the_allow_list_only_shrinks():
    lengths = function_lengths()
    fits = [key for key in ALLOWED if lengths.get(key, (0, 0))[0] <= LIMIT]
    assert not fits, "these now fit on a screen (or are gone): remove them from ALLOWED:\n" + "\n".join(
        f"  {key}" for key in fits)
