"""``python -m harness`` (or ``nlparity``): the commands, and a way to run them.

    nlparity                      # this list
    nlparity parity --help        # the same as python -m harness.parity --help
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import List, Optional

# command -> what it does (in the order a new user meets them)
COMMANDS = {
    "demo": "the main job on embedded defaults: parity, conversion, evaluation in both frameworks, report",
    "parity": "layer-by-layer parity of frameworks, or of your own port, with an explanation of failures",
    "diff": "two weight files, parameter by parameter, across formats and naming schemes",
    "convert": "weights between formats (torch, MindSpore, npz, safetensors, mmaction2, Caffe2, mindvideo)",
    "checkpoints": "the public checkpoints: list, fetch, verify",
    "evaluate": "Kinetics-400 validation in one framework: resumable, shardable; merge and compare runs",
    "train": "fine-tune in torch or MindSpore with the seed's recipe",
    "align": "training alignment: torch and MindSpore fine-tuned alike, judged against torch's own noise band",
    "infer": "top-5 classes of videos, and a GIF of what the network saw",
    "drift": "which protocol or graph difference costs how much accuracy",
    "bench": "speed: inference and training steps per framework (forward; --recipe seed: the seed's whole "
             "step), and decoding (data)",
    "report": "the caffe / pytorch / mindspore table from results/, with plots and a page",
    "make_dataset": "a small labelled video dataset in the seed's Kinetics layout",
    "device_check": "the GPU session's one script: GPU against CPU, and GPU speed",
}
# a command whose module is not harness.<command>
MODULES = {"make_dataset": "harness.data.synthetic"}


def module_of(command: str) -> str:
    """The module that runs ``command`` (``python -m`` it for the same command)."""
    return MODULES.get(command, f"harness.{command}")


def available() -> List[str]:
    return [name for name in COMMANDS if importlib.util.find_spec(module_of(name)) is not None]


def usage() -> str:
    names = available()
    width = max(map(len, names))
    lines = ["usage: nlparity COMMAND [options]   (or: python -m harness.COMMAND [options]; make_dataset: "
             "python -m harness.data.synthetic)", "", "commands:"]
    lines += [f"  {name:<{width}}  {COMMANDS[name]}" for name in names]
    lines += ["", "Every command has --help and exits 0 (ok), 1 (a check failed) or 2 (bad input, one line)."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in available():
        print(f"error: unknown command {command!r}; choose from {', '.join(available())}", file=sys.stderr)
        return 2
    spec = importlib.util.find_spec(module_of(command))
    module = importlib.import_module(module_of(command) + (".__main__" if spec.submodule_search_locations else ""))
    sys.argv = [f"nlparity {command}", *rest]
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
