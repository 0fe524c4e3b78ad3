"""The caffe / pytorch / mindspore table: published beside measured, with throughput.

    python -m harness.report                       # GitHub markdown from results/
    python -m harness.report --format latex --out table.tex

Reads only ``results/``: evaluation summaries (``harness.evaluate``), whose accuracy is
recomputed from their saved per-video scores, and forward benchmarks (``harness.bench``,
``harness.device_check``). Published numbers and protocols come from the checkpoint
registry. A checkpoint with no evaluation in ``results/`` shows "not measured"; runs on
seeded random weights are listed apart (they compare frameworks, not accuracy).
Exit 0, or 2 on bad input (one line).
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from harness import metrics
from harness.cli import InputError, OneLineParser, run_main
from harness.files import atomic_path, check_output_path

ROWS = ("caffe", "pytorch", "mindspore")
FRAMEWORK_NAMES = {"torch": "PyTorch", "ms": "MindSpore"}


def _load_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


# result files written before every command stamped its ``kind``: told apart by their fields
_LEGACY_KINDS = (("evaluation", lambda d: "summary_version" in d and "scores" in d),
                 ("bench_forward", lambda d: d.get("benchmark") == "forward"),
                 ("device_check", lambda d: d.get("benchmark") == "device_check"),
                 ("bench_data", lambda d: d.get("benchmark") == "data_decode"),
                 ("parity", lambda d: "layers" in d or "comparisons" in d))


def kind_of(doc: dict) -> Optional[str]:
    """What a result file is: its ``kind``, or (older files) what its fields say."""
    if isinstance(doc.get("kind"), str):
        return doc["kind"]
    return next((kind for kind, test in _LEGACY_KINDS if test(doc)), None)


def collect(results_dir: str) -> Dict[str, list]:
    """Evaluation summaries (accuracy recomputed from scores) and benchmark files."""
    from harness.cli import InputError
    from harness.scores import read_scores

    evals, benches, skipped = [], [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)):
        doc = _load_json(path)
        if not isinstance(doc, dict):
            skipped.append(f"{path}: not a JSON object")
            continue
        kind = kind_of(doc)
        if kind == "evaluation":
            shard = doc.get("shard", [0, 1])
            if not (isinstance(shard, list) and len(shard) == 2 and shard[1] == 1):
                continue  # a shard: its merged summary speaks for it
            missing = [k for k in ("framework", "arch", "data_preset") if not isinstance(doc.get(k), str)]
            if missing:
                skipped.append(f"{path}: lacks {', '.join(missing)}")
                continue
            scores_dir = os.path.join(os.path.dirname(path), str(doc["scores"]))
            if os.path.isdir(scores_dir):
                try:
                    saved = read_scores(scores_dir)
                except InputError as exc:
                    skipped.append(str(exc))
                    continue
                if len(saved.labels) and (saved.labels >= 0).all() and np.isfinite(saved.scores).all():
                    doc.update(metrics.accuracy_summary(saved.scores, saved.labels))
            doc["_path"] = path
            evals.append(doc)
        elif kind in ("bench_forward", "device_check"):
            doc["_path"] = path
            benches.append(doc)
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    return {"evaluations": evals, "benchmarks": benches}


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def build_table(results_dir: str) -> dict:
    from harness.checkpoints.registry import load_registry

    found = collect(results_dir)
    registry = load_registry()
    rows = []
    for row in ROWS:
        for entry in (e for e in registry.values() if e.framework_row == row):
            runs = [d for d in found["evaluations"] if isinstance(d.get("checkpoint_sha256"), str)
                    and d.get("arch") == entry.arch and entry.check_digest(d["checkpoint_sha256"])]
            base = {"type": f"i3d_nlnet_{row}", "checkpoint": entry.name, "arch": entry.arch,
                    "published_top1": entry.published.get("top1"), "published_top5": entry.published.get("top5"),
                    "published_protocol": entry.published.get("protocol", ""),
                    "published_val_videos": entry.published.get("val_videos", "")}
            if not runs:
                rows.append({**base, "measured_in": "not measured", "top1": None, "top5": None,
                             "data_preset": entry.data_preset, "n_videos": None, "clips_per_s": None})
            for d in runs:
                rows.append({**base, "measured_in": FRAMEWORK_NAMES.get(d["framework"], d["framework"]),
                             "top1": d.get("top1"), "top5": d.get("top5"), "data_preset": d["data_preset"],
                             "n_videos": d.get("n_videos"), "clips_per_s": d.get("clips_per_s"),
                             "source": d["_path"]})
    random_runs = [{"framework": d["framework"], "data_preset": d["data_preset"], "n_videos": d.get("n_videos"),
                    "clips_per_s": d.get("clips_per_s"), "model_clips_per_s": d.get("model_clips_per_s"),
                    "source": d["_path"]}
                   for d in found["evaluations"] if str(d.get("checkpoint", "")).startswith("random")]
    throughput = []
    for b in found["benchmarks"]:
        try:
            throughput += _throughput_rows(b)
        except (KeyError, TypeError, AttributeError) as exc:
            print(f"warning: skipped {b['_path']}: not a benchmark this report reads ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
    return {"accuracy": rows, "random_weight_runs": random_runs, "throughput": throughput}


def _throughput_rows(b: dict) -> List[dict]:
    rows = []
    if kind_of(b) == "bench_forward":
        for r in b["results"]:
            if "error" in r:
                continue
            for run in r["runs"]:
                rows.append({"framework": FRAMEWORK_NAMES.get(r["framework"], r["framework"]),
                             "mode": r["mode"], "device": r["hardware"].get("gpu") or r["hardware"]["cpu"],
                             "batch": run["batch_size"], "ms_per_clip": float(run["ms_per_clip"]),
                             "clips_per_s": float(run["clips_per_s"]), "source": b["_path"]})
    else:
        for run in b.get("gpu", []):
            if "error" in run:
                continue
            rows.append({"framework": "PyTorch", "mode": "eager", "device": b["hardware"].get("gpu"),
                         "batch": run["batch_size"], "ms_per_clip": float(run["ms_per_clip"]),
                         "clips_per_s": float(run["clips_per_s"]), "source": b["_path"]})
    return rows


def _num(x, fmt: str = "{:.2f}") -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else fmt.format(x)


def render(table: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(table, indent=2)
    head = ["type", "checkpoint", "arch", "published top1", "published top5", "measured in", "top1", "top5",
            "data preset", "videos", "clips/s"]
    body = [[r["type"], r["checkpoint"], r["arch"], _num(r["published_top1"]), _num(r["published_top5"]),
             r["measured_in"], _pct(r["top1"]), _pct(r["top5"]), r["data_preset"],
             "-" if r["n_videos"] is None else str(r["n_videos"]),
             _num(r["clips_per_s"])] for r in table["accuracy"]]
    thead = ["framework", "mode", "device", "batch", "ms/clip", "clips/s"]
    tbody = [[t["framework"], t["mode"], t["device"], str(t["batch"]), f"{t['ms_per_clip']:.1f}",
              f"{t['clips_per_s']:.2f}"] for t in table["throughput"]]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(head)
        writer.writerows(body)
        writer.writerow([])
        writer.writerow(thead)
        writer.writerows(tbody)
        return out.getvalue()
    if fmt == "latex":
        def tex(rows, header):
            lines = ["\\begin{tabular}{" + "l" * len(header) + "}", "\\hline",
                     " & ".join(header) + " \\\\", "\\hline"]
            lines += [" & ".join(c.replace("_", "\\_") for c in row) + " \\\\" for row in rows]
            return "\n".join(lines + ["\\hline", "\\end{tabular}"])
        return tex(body, head) + "\n\n" + tex(tbody, thead) + "\n"

    def md(rows, header):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    text = "## Accuracy on Kinetics-400 (published beside measured)\n\n" + md(body, head) + "\n"
    if table["throughput"]:
        text += "\n## Forward throughput (1x3x32x224x224 float32)\n\n" + md(tbody, thead) + "\n"
    if table["random_weight_runs"]:
        text += ("\n## Runs on seeded random weights (framework comparison only)\n\n"
                 + md([[r["framework"], r["data_preset"], str(r["n_videos"]),
                        "-" if r["clips_per_s"] is None else f"{r['clips_per_s']:.2f}", r["source"]]
                       for r in table["random_weight_runs"]],
                      ["framework", "data preset", "videos", "clips/s", "summary"]) + "\n")
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m harness.report", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="folder of result JSON files (default results/)")
    p.add_argument("--format", choices=["github", "markdown", "latex", "csv", "json"], default="github")
    p.add_argument("--out", help="write here instead of standard output")
    args = p.parse_args(argv)

    def body() -> int:
        if not os.path.isdir(args.results):
            raise InputError(f"no results folder {args.results}")
        if args.out:
            check_output_path(args.out, "--out")
        text = render(build_table(args.results), args.format)
        if args.out:
            with atomic_path(args.out) as tmp:
                with open(tmp, "w") as f:
                    f.write(text)
        else:
            print(text)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
