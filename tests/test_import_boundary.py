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


# ----------------------------------------------------------------------------- the module graph
# Floors: the spec at the bottom; the errors, files and provenance every library may use; the
# formats, data, scores and comparison above them; the runners (the only rooms where a
# framework lives) above those; commands on top. Nothing imports upward, nothing in a cycle
# (a function-level import counts: it is how a cycle hides). A module run as a command (it has
# a ``__main__`` block or is a package's ``__main__``) is on the top floor wherever it lives,
# but for the runners' child, which is the runner layer's own process.
FLOORS = ((0, ("frameworks.spec",)),
          (1, ("harness.errors", "harness.files", "harness.text", "harness.provenance")),
          (2, ("harness.checkpoints", "harness.data", "harness.scores", "harness.comparator", "harness.outputs",
               "harness.metrics", "harness.train_compare")),
          (3, ("harness.runners", "frameworks.torch", "frameworks.mindspore")))


def _modules() -> dict:
    mods = {}
    for path in list((ROOT / "harness").rglob("*.py")) + list((ROOT / "frameworks").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: pathlib.Path, mods: dict) -> set:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
    out = set()
    for target in found:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def module_graph() -> dict:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def floor_of(name: str, path: pathlib.Path) -> int:
    floor = next((f for f, prefixes in FLOORS if name == prefixes or name.startswith(prefixes)), 4)
    if floor < 3 and (path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text()):
        return 4   # a command that lives in a library package (the runners' child is their own process)
    return floor


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(module_graph()) == []


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_upward():
    mods = _modules()
    graph = module_graph()
    up = [(a, b) for a, deps in graph.items() for b in deps
          if floor_of(b, mods[b]) > floor_of(a, mods[a])]
    assert not up, up


def _framework_words() -> set:
    from harness.runners import RUNNERS, runner_class

    return {word for name in RUNNERS for word in (name, *runner_class(name).aliases)}


def name_branches(path: pathlib.Path, words: set) -> list:
    """Lines that compare something with a framework's name (``== "ms"``, ``in ("torch", ...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            if any(isinstance(v, ast.Constant) and v.value in words for v in values):
                found.append(node.lineno)
    return found


def test_no_command_branches_on_a_frameworks_name():
    """A command asks the runner (harness.runners: require, runner_class); only a framework's own
    package, the runner layer and the weight readers (whose container is called "torch") may
    compare a framework's name."""
    words = _framework_words()
    allowed = ("harness/runners/", "harness/checkpoints/", "frameworks/")
    offenders = {}
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(allowed):
            lines = name_branches(path, words)
            if lines:
                offenders[rel] = lines
    assert not offenders, offenders


def test_the_branch_check_sees_a_branch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('if fw == "ms":\n    pass\nok = fw in ("torch", "pt")\nfine = fw == "graph"\n')
    assert name_branches(probe, {"ms", "torch", "pt"}) == [1, 3]
