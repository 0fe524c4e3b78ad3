"""``python -m harness.report --format html``: one self-contained page (no script, no
external file): the tables with their notes, the plots inline as base64 PNG, and for every
row the files its numbers came from, as links with their sha256 (a number's tooltip names
them too).
"""
from __future__ import annotations

import base64
import html
import os
import re
from typing import List, Optional

from harness.report_columns import Notes, columns_of, other_notes, source_ids

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
div.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border: 1px solid #c8c8c8; padding: 3px 6px; vertical-align: top; max-width: 22em; }
th { background: #eef1f5; text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flagged { background: #fff4d6 !important; }
.notes { font-size: 12px; color: #444; } .meta { font-size: 12px; color: #555; }
.sha { font-family: ui-monospace, monospace; font-size: 11px; color: #666; }
figure { margin: 1em 0; } figcaption { font-size: 12px; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; }
"""
NUMBER = re.compile(r"[-+\d.e/ ,]+(\[[\d,]+\])?")   # "74.90 / 91.60", "+0.20 / -1.10 [2]", "12 / 19 / 7"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _href(path: str, out_path: Optional[str]) -> str:
    """A link to a source file that works from where the page is written."""
    base = os.path.dirname(os.path.abspath(out_path)) if out_path else os.getcwd()
    rel = os.path.relpath(os.path.abspath(path), base)
    return html.escape(rel.replace(os.sep, "/"), quote=True)


def render_html(report: dict, plots: List, out_path: Optional[str] = None) -> str:
    ids = source_ids(report)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>nlparity report</title><style>{CSS}</style></head><body>",
             "<h1>I3D Non-local: published beside measured, PyTorch and MindSpore</h1>",
             f"<p class=\"meta\">From the results folder <code>{_e(report['results'])}</code> and the registry "
             f"<code>{_e(report['registry']['path'])}</code> (sha256 <span class=\"sha\">"
             f"{_e(report['registry']['sha256'])}</span>), generated {_e(report['generated'])}. Every accuracy is "
             "recomputed from the runs' saved per-video scores; hover a number for the file it came from.</p>"]
    for key, table in report["tables"].items():
        rows = table["rows"]
        if not rows:
            continue
        notes = Notes()
        cols = columns_of(key, rows)
        parts.append(f"<h2 id=\"{_e(key)}\">{_e(table['title'])}</h2><div class=\"wide\"><table><thead><tr>"
                     + "".join(f"<th>{_e(h)}</th>" for h, _ in cols) + "<th>source</th></tr></thead><tbody>")
        for r in rows:
            srcs = r.get("sources", [])
            tip = "; ".join(f"{s['path']} (sha256 {s['sha256']})" for s in srcs) or "the checkpoint registry"
            cells = []
            marks = {notes.mark(r, fl.on) for fl in r.get("flags", []) if fl.on != "row"} - {""}
            for header, fn in cols:
                text = fn(r, notes)
                classes = (["num"] if NUMBER.fullmatch(text) else []) + (
                    ["flagged"] if any(text.endswith(m) for m in marks) else [])
                cls = f" class=\"{' '.join(classes)}\"" if classes else ""
                cells.append(f"<td{cls} title=\"{_e(tip)}\">{_e(text)}</td>")
            links = "<br>".join(
                f"<a href=\"{_href(s['path'], out_path)}\">{_e(ids.get(s['path'], os.path.basename(s['path'])))}"
                f"</a> <span class=\"sha\">{_e(s['sha256'][:12])}</span>" for s in srcs) or "registry"
            parts.append("<tr>" + "".join(cells) + f"<td>{links}</td></tr>")
        parts.append("</tbody></table></div>")
        if notes.texts:
            parts.append("<ol class=\"notes\">" + "".join(f"<li>{_e(t)}</li>" for t in notes.texts) + "</ol>")
        rest = other_notes(table, notes)
        if rest:
            parts.append("<ul class=\"notes\">" + "".join(f"<li>{_e(t)}</li>" for t in rest) + "</ul>")
    if plots:
        parts.append("<h2 id=\"plots\">Plots</h2>")
        for plot in plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f"<figure><img alt=\"{_e(plot.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{_e(plot.caption)}</figcaption></figure>")
    if report["not_read"]:
        parts.append("<h2 id=\"not-read\">Not read</h2><ul class=\"notes\">" + "".join(
            f"<li><a href=\"{_href(n['path'], out_path)}\">{_e(n['path'])}</a>: {_e(n['reason'])}</li>"
            for n in report["not_read"]) + "</ul>")
    parts.append("<h2 id=\"sources\">Sources</h2><table><thead><tr><th>id</th><th>file</th><th>sha256</th></tr>"
                 "</thead><tbody>" + "".join(
                     f"<tr><td>{_e(ids[s['path']])}</td><td><a href=\"{_href(s['path'], out_path)}\">"
                     f"{_e(s['path'])}</a></td><td class=\"sha\">{_e(s['sha256'])}</td></tr>"
                     for s in report["sources"]) + "</tbody></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
