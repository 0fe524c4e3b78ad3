"""One vocabulary across the commands: every option says what it does and what it
defaults to, the shared options mean the same everywhere, and every listed command exists.

The parsers are captured in this process (``parse_args`` intercepted before any work), so
the test reads exactly what ``--help`` prints without starting a framework.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util

import pytest

from harness.__main__ import COMMANDS, module_of

# every module a user runs with `python -m`: the listed commands' and the decode benchmark's own
MODULES = sorted({module_of(c) for c in COMMANDS} | {"harness.data.bench"})


class _Captured(BaseException):
    pass


def _parser(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    spec = importlib.util.find_spec(module_name)
    name = module_name + (".__main__" if spec.submodule_search_locations else "")
    module = importlib.import_module(name)
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured):
        module.main(["--help"])
    return seen[0]


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix}{name} ")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix + "/".join(action.option_strings or [action.dest]), action


def _states_default(action: argparse.Action) -> bool:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                           argparse._CountAction, argparse._VersionAction)):
        return True
    if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
        return True
    text = (action.help or "").lower()
    return "default" in text or "%(default)" in text


@pytest.mark.parametrize("module_name", MODULES)
def test_every_option_says_what_it_does_and_its_default(module_name, monkeypatch):
    parser = _parser(module_name, monkeypatch)
    actions = list(_actions(parser))
    assert actions, f"{module_name}: no options at all"
    no_help = [name for name, a in actions if not (a.help or "").strip()]
    assert not no_help, f"{module_name}: options without help: {no_help}"
    silent = [f"{name} (default {a.default!r})" for name, a in actions
              if a.help != argparse.SUPPRESS and not _states_default(a)]
    assert not silent, f"{module_name}: help does not state the default of {silent}"


@pytest.mark.parametrize("module_name", MODULES)
def test_shared_short_options_mean_the_same_everywhere(module_name, monkeypatch):
    meaning = {"-v": "--verbose", "-q": "--quiet", "-h": "--help"}
    parser = _parser(module_name, monkeypatch)
    for action in parser._actions:
        for short, long in meaning.items():
            if short in action.option_strings:
                assert long in action.option_strings, f"{module_name}: {short} is not {long}"
        if "--device" in action.option_strings:
            assert set(action.choices) == {"cpu", "gpu"}, f"{module_name}: --device {action.choices}"
        if "--ms-mode" in action.option_strings and action.choices:
            assert set(action.choices) == {"graph", "pynative"}
        if "--json" in action.option_strings:  # a file the command writes, never a flag
            assert action.nargs is None and not isinstance(action, argparse._StoreTrueAction), module_name


def test_the_command_list_names_every_runnable_command():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "harness"
    runnable = {p.stem for p in root.glob("*.py")
                if p.stem not in ("__main__", "__init__") and 'if __name__ == "__main__"' in p.read_text()}
    assert runnable <= set(COMMANDS), runnable - set(COMMANDS)
    elsewhere = {c for c in COMMANDS if module_of(c) != f"harness.{c}"}   # make_dataset: harness.data.synthetic
    assert set(COMMANDS) <= runnable | {"checkpoints"} | elsewhere
    for command in elsewhere:
        assert importlib.util.find_spec(module_of(command)) is not None, command
