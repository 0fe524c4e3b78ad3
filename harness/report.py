"""The caffe / pytorch / mindspore table, from measured runs only: published beside measured,
with throughput, parity and training, every number traced to the file it came from.

    python -m harness.report                                  # GitHub markdown from results/
    python -m harness.report --format html --out report.html  # one self-contained page
    python -m harness.report --results runs/ --format json --out report.json --plots plots/

Reads a results folder and the checkpoint registry, nothing else (see
:mod:`harness.report_inputs` for the kinds of file it reads). Every accuracy, count and
evaluation throughput is recomputed from the runs' saved per-video scores; a summary that
its scores contradict is flagged and its numbers are not used. Tables:

accuracy   one row per registered checkpoint x framework it ran in, on Kinetics-400: published numbers
           exactly as the registry holds them (with protocol, val count, denominator), measured ones on
           the same denominator, the difference, top-1 agreement with the same weights in the
           other framework, clips/s; a checkpoint never run shows as published only
accuracy_* runs on any other dataset (a generated one: its data root named by a make_dataset
           ``--json`` summary in the folder; or N != 400 classes): a table per dataset, measured
           only; top-5 is n/a with <= 5 classes (every label is in the top 5)
random     runs on seeded random weights: a framework comparison, kept out of the accuracy table
speed      benchmarks: latency, clips/s, GFLOPs, share of the CPU's peak and of the GEMM probe (never
           over 100%: "above the GEMM probe"), peak memory, training ms/step, ratios
parity     per comparison and stage, the layer nearest its tolerance: its error (a fraction of its max
           |reference|, absolute where that reference is zero up to rounding), its share of the
           tolerance, and "ok" only at or under 100%; the verdict
training   training runs: final loss, accuracy, ms/step

The text formats show a compact view (the columns a terminal has room for); ``--wide``, html,
csv and json hold every column.

Rows measured on different protocols, val sets, denominators or spec hashes are never
compared without a flag: a numbered note on the row and on the compared cell. Files that are
not read are listed with the reason. ``--plots DIR`` writes the PNG plots (``--format html``
embeds them). Exit 0; 2 on bad input: no, an empty, or a foreign results folder, an unwritable
output (one line).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import sys
from typing import Any, List, Optional, Tuple

from harness.errors import InputError
from harness.cli import OneLineParser, run_main
from harness.files import atomic_path, check_output_dir, check_output_path, json_safe
from harness.report_columns import SHORT_HEADERS, Notes, columns_of, other_notes, source_ids
from harness.report_tables import Flag, build_report

FORMATS = ("github", "markdown", "latex", "csv", "json", "html")
_TABULATE_FORMAT = {"github": "github", "markdown": "pipe", "latex": "latex_booktabs"}


def text_tables(report: dict, compact: bool = False) -> List[Tuple[str, str, List[str], List[List[str]], List[str]]]:
    """(key, title, header, body, notes) of every non-empty table, with note numbers and a
    ``source`` column (``S3``: the third file of the sources list)."""
    ids = source_ids(report)
    out = []
    for key, table in report["tables"].items():
        rows = table["rows"]
        if not rows:
            continue
        notes = Notes()
        cols = columns_of(key, rows, compact)
        header = [SHORT_HEADERS.get(c[0], c[0]) if compact else c[0] for c in cols] + ["source"]
        body = [[fn(r, notes) for _, fn in cols] + [" ".join(ids.get(s["path"], "") for s in r.get("sources", [])
                                                             if s["path"] in ids) or "registry"]
                for r in rows]
        out.append((key, table["title"], header, body, (notes.texts, other_notes(table, notes))))
    return out


def render_text(report: dict, fmt: str, wide: bool = False) -> str:
    try:
        from tabulate import tabulate
    except ImportError:
        raise InputError("the report's text tables need tabulate: pip install 'nlparity[report]'") from None
    tf = _TABULATE_FORMAT[fmt]
    latex = fmt == "latex"
    parts = []

    def heading(title: str) -> str:
        return f"\\paragraph{{{_tex(title)}}}\n" if latex else f"## {title}\n"

    def lines(items: List[str], numbered: bool = False) -> str:
        if not items:
            return ""
        if latex:
            env = "enumerate" if numbered else "itemize"
            return f"\\begin{{{env}}}\n" + "".join(f"\\item {_tex(t)}\n" for t in items) + f"\\end{{{env}}}\n"
        return "".join(f"{f'{i + 1}.' if numbered else '-'} {t}\n" for i, t in enumerate(items))

    for key, title, header, body, (numbered, rest) in text_tables(report, compact=not wide):
        if not wide and len(header) < len(columns_of(key, report["tables"][key]["rows"])) + 1:
            rest = rest + ["compact view: --wide (or --format html, csv, json) shows every column"]
        notes = lines(numbered, numbered=True) + lines(rest)
        parts.append(heading(title) + "\n" + tabulate(body, header, tablefmt=tf, disable_numparse=True) + "\n"
                     + ("\n" + notes if notes else ""))
    if report["not_read"]:
        parts.append(heading("Not read") + "\n" + lines([f"{n['path']}: {n['reason']}" for n in report["not_read"]]))
    ids = source_ids(report)
    parts.append(heading("Sources") + "\n" + lines(
        [f"{ids[s['path']]} {s['path']} (sha256 {s['sha256'][:16]})" for s in report["sources"]]
        + [f"registry {report['registry']['path']} (sha256 {report['registry']['sha256'][:16]})"]))
    return "\n".join(parts)


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                 ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\x00")
    return text.replace("\x00", "\\textbackslash{}")


def render_csv(report: dict) -> str:
    """Each table's flat fields, one block per table (``# table: name`` first)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for key, table in report["tables"].items():
        rows = table["rows"]
        if not rows:
            continue
        fields: List[str] = []
        for r in rows:
            fields += [k for k, v in r.items() if k not in fields and k not in ("flags", "sources", "stages")]
        writer.writerow([f"# table: {key}"])
        writer.writerow(fields + (["stages"] if key == "parity" else []) + ["flags", "sources"])
        for r in rows:
            extra = ([json.dumps(json_safe(r["stages"]))] if key == "parity" else [])
            writer.writerow([_csv_value(r.get(k)) for k in fields] + extra
                            + ["; ".join(fl.text for fl in r.get("flags", [])),
                               "; ".join(f"{s['path']}@{s['sha256']}" for s in r.get("sources", []))])
        writer.writerow([])
    return out.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return ""
    return "" if v is None else v


def to_json(report: dict) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, Flag):
            return o.to_dict()
        return str(o)

    return json.dumps(json_safe(json.loads(json.dumps(report, default=default))), indent=2)


def render(report: dict, fmt: str, plots: Optional[list] = None, out_path: Optional[str] = None,
           wide: bool = False) -> str:
    """``report`` as ``fmt``; the text formats show the compact columns unless ``wide``."""
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        from harness.report_html import render_html

        return render_html(report, plots or [], out_path)
    return render_text(report, fmt, wide)


# ============================================================================ command
def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m harness.report", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="folder of result JSON files (default results/)")
    p.add_argument("--format", choices=FORMATS, default="github",
                   help="github (default), markdown, latex, csv, json, or html (one self-contained page)")
    p.add_argument("--out", help="write here instead of standard output")
    p.add_argument("--plots", metavar="DIR", help="also write the plots as PNG files into DIR")
    p.add_argument("--wide", action="store_true",
                   help="text formats: every column (default: the few a terminal has room for; html, csv and json "
                        "always hold every column)")
    args = p.parse_args(argv)

    def body() -> int:
        if not os.path.isdir(args.results):
            raise InputError(f"no results folder {args.results}")
        if args.out:
            check_output_path(args.out, "--out")
        if args.plots:
            check_output_dir(args.plots, "--plots folder")
        if args.format in _TABULATE_FORMAT:
            if importlib.util.find_spec("tabulate") is None:  # checked before any work
                raise InputError("the report's text tables need tabulate: pip install 'nlparity[report]'")
        report = build_report(args.results)
        for n in report["not_read"]:
            print(f"warning: skipped {n['path']} (not read): {n['reason']}", file=sys.stderr)
        plots: list = []
        if args.plots or args.format == "html":
            from harness import plots as plotting

            plots = plotting.make_plots(report)
        if args.plots:
            plotting.write_plots(plots, args.plots)
        text = render(report, args.format, plots, args.out, wide=args.wide)
        if args.out:
            with atomic_path(args.out) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text if text.endswith("\n") else text + "\n")
            print(f"report: {args.out}")
        else:
            print(text)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
