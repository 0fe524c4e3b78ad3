"""The layout's one rule, checked on the source: only a framework's own package and its runner
import the framework. The spec is framework-free; the harness reaches a framework through
``harness/runners`` (plus torch in the two checkpoint readers, to read ``.pth`` files)."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "mindspore", "mmaction", "mmengine", "mmcv")
ALLOWED = {
    "harness/runners/torch_runner.py": {"torch"},
    "harness/runners/mindspore_runner.py": {"mindspore"},
    "harness/runners/mmaction2_runner.py": {"torch", "mmaction", "mmengine", "mmcv"},
    "harness/runners/plugin.py": {"torch", "mindspore"},   # builds the user's own network
    "harness/checkpoints/io.py": {"torch"},                # reads .pth files (weights_only, allowlisted)
    "harness/checkpoints/safe_pickle.py": {"torch"},
}


def imported_frameworks(path: pathlib.Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in FRAMEWORKS}
    return found


def test_only_runners_and_framework_packages_import_a_framework():
    offenders = {}
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        extra = imported_frameworks(path) - ALLOWED.get(rel, set())
        if extra:
            offenders[rel] = sorted(extra)
    assert not offenders, offenders


def test_the_spec_is_framework_free_and_each_framework_imports_only_itself():
    for path in (ROOT / "frameworks" / "spec").rglob("*.py"):
        assert not imported_frameworks(path), path
    for own, other in (("torch", "mindspore"), ("mindspore", "torch")):
        for path in (ROOT / "frameworks" / own).rglob("*.py"):
            assert other not in imported_frameworks(path), path


def test_the_check_sees_a_nested_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mindspore import nn\n    import torch.distributed as dist\n")
    assert imported_frameworks(probe) == {"mindspore", "torch"}
