"""python -m harness.checkpoints list | fetch NAME | verify PATH [--name NAME]

list     the public checkpoints the registry knows, with their published accuracy
fetch    download one into the cache (progress bar) and verify its hash
verify   check a file you already have: its own integrity check (a MindSpore CRC, a zip's
         CRC-32s; a file that carries none is said to), its sha256 against the registry (by
         --name, else by file name or digest), then that it loads strictly onto the entry's
         arch preset

Exit status: 0 ok, 1 an integrity, hash or structure check failed, 2 bad input (one line).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from frameworks.spec.arch import get_preset
from harness.checkpoints import WeightsDoNotFit, load_weights
from harness.cli import OneLineParser, run_main
from harness.checkpoints.io import CheckpointError, DamagedFile, describe_integrity, sha256_file
from harness.checkpoints.formats import integrity_of
from harness.checkpoints.registry import cached_path, fetch, load_registry
from harness.files import check_input_file
from harness.text import printable


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m harness.checkpoints", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registry entries")
    f = sub.add_parser("fetch", help="download NAME into the cache and verify it")
    f.add_argument("name", help="a registry entry (see list)")
    v = sub.add_parser("verify", help="check the hash and structure of a file you have")
    v.add_argument("path", help="the weights file to check")
    v.add_argument("--name", help="registry entry to check against (default: match by file name or digest)")
    v.add_argument("--hash-only", action="store_true", help="skip loading the weights onto the arch")
    from harness.checkpoints.safe_pickle import TRUST_HELP
    v.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP.replace("the weights file", "PATH"))
    return p


UNREADABLE_WORDS = {"counted_wrong": "an unreadable video counted wrong",
                    "stops_run": "an unreadable video stops the run", "skipped": "unreadable videos skipped"}


def _pct(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _list() -> int:
    """Every entry: what it is, what it was published at and how, where it comes from."""
    registry = load_registry()
    for e in registry.values():
        path = cached_path(e)
        count = f"{e.val_videos:,} val videos" if e.val_videos else "val videos not stated"
        how = f"; {e.denominator} denominator" if e.denominator else ""
        how += f", {UNREADABLE_WORDS.get(e.unreadable, e.unreadable)}" if e.unreadable else ""
        print(printable(f"{e.name}  [{e.framework_row} row, {e.format}]"))
        print(f"  published: top1 {_pct(e.published.get('top1'))}, top5 {_pct(e.published.get('top5'))} on "
              f"{printable(count)}{printable(how)}")
        print(printable(f"  protocol:  {e.published.get('protocol', '-')} (arch {e.arch}, data preset {e.data_preset})"))
        print(printable(f"  file:      {e.filename} ({'cached at ' + path if os.path.isfile(path) else 'not fetched'})"))
        print(printable(f"  url:       {e.url}") + ("" if e.direct_download else "  (a web page: download by hand)"))
        if e.aliases:
            print(printable(f"  aliases:   {', '.join(e.aliases)}"))
    return 0


def _verify(path: str, name: Optional[str], hash_only: bool, trust: bool = False) -> int:
    check_input_file(path, "checkpoint")
    registry = load_registry()
    try:               # the file's own check first: a damaged file fails verification (exit 1)
        print(f"{printable(path)}: integrity: {describe_integrity(integrity_of(path))}")
        damaged = ""
    except DamagedFile as exc:
        damaged = exc.reason
        print(f"FAILED: integrity: {printable(path)} is damaged: {printable(damaged)}")
    digest = sha256_file(path)
    if name:
        if name not in registry:
            raise CheckpointError(f"unknown registry name {printable(repr(name))}; see: python -m harness.checkpoints list")
        entry = registry[name]
    else:
        by_name = [e for e in registry.values() if e.filename == os.path.basename(path)]
        by_hash = [e for e in registry.values() if e.check_digest(digest)]
        candidates = by_name or by_hash
        if not candidates:
            print(f"sha256 {digest}: matches no registry entry by file name or digest")
            return 1
        entry = candidates[0]
    verdict = entry.check_digest(digest)
    print(f"{printable(path)}: sha256 {digest}")
    if verdict is False:
        print(f"FAILED: {entry.name} expects {entry.sha256 or entry.sha256_prefix + '...'}")
        return 1
    print(f"hash: {'matches ' + entry.name if verdict else 'not pinned by ' + entry.name + ' (recorded above)'}")
    if damaged:
        return 1
    if not hash_only:
        try:
            loaded = load_weights(path, get_preset(entry.arch), trust=trust)
        except WeightsDoNotFit as exc:
            print(f"FAILED: structure: {printable(exc)}")
            return 1
        print(f"structure: {len(loaded.arrays)} tensors load strictly onto {entry.arch} ({loaded.scheme} names)")
    print("OK")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.command == "list":
            return _list()
        if args.command == "fetch":
            print(fetch(args.name))
            return 0
        return _verify(args.path, args.name, args.hash_only, args.trust_checkpoint)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
