"""The report's training sections: training parity (``kind: train_parity``) by check and
parameter family, and training alignment (``kind: train_alignment``); and their plot.

A training-parity file holds, per check and family, the worst error as a share of its
tolerance and torch float32's own (the floor) as a share of the same tolerance; its rows are
shown as they are, never re-judged: a share over 100% is a failure whatever the file says,
and the two are checked against each other (a row marked PASS with a share over 100% is
flagged and shown as FAIL). Files written before the four checks (``rungs``) existed are
listed as not read, with the reason.
"""
from __future__ import annotations

from typing import List

from harness.report_inputs import Scan, Source, framework_name

CHECKS = ("components", "optimizer", "step", "trajectory")


def training_parity_rows(found: Scan, guarded, flag) -> List[dict]:
    rows: List[dict] = []
    for src in found.of("train_parity"):
        doc = src.doc
        if not isinstance(doc.get("rungs"), dict) or not isinstance(doc.get("summary"), list):
            found.skip(src.path, "a training-parity file from before the four checks (no 'rungs'): rerun "
                                 "python -m harness.parity --train-steps 3")
            continue
        got = guarded(found, src, lambda: _rows_of(src, flag))
        rows.extend(got or [])
    return rows


def _rows_of(src: Source, flag) -> List[dict]:
    doc = src.doc
    label = (f"{framework_name(doc['candidate'])} vs {framework_name(doc['reference'])}, "
             f"{doc.get('steps')} steps, batch {'x'.join(map(str, doc.get('input_shape') or []))}")
    shares = _shares_by_framework(doc)
    out = []
    for row in sorted(doc["summary"], key=lambda r: (CHECKS.index(r["rung"]) if r["rung"] in CHECKS else 9)):
        judged = row.get("worst") is not None or not row.get("not_judged")
        share = float(row["worst_share"]) if judged else None   # nothing judged: no share to show
        status = row["status"]
        flags = []
        if status == "PASS" and (share or 0.0) > 1.0:
            flags.append(flag(f"{row['rung']} / {row['family']} needed {100 * share:.0f}% of its tolerance and the "
                              "file marks it passed: shown as FAIL", "status"))
            status = "FAIL"
        worst = row.get("worst") or {}
        out.append({"comparison": label, "arch": doc.get("arch"), "seed": doc.get("seed"),
                    "check": row["rung"], "family": row["family"], "n": row["n"], "worst_share": share,
                    "floor_share": row.get("floor_share"), "status": status,
                    "worst": (f"{worst.get('name')} {worst.get('quantity')} ({worst.get('framework')}"
                              + (f", step {worst['step']})" if worst.get("step") else ")")) if worst else "-",
                    "verdict": doc.get("verdict"), "candidate": framework_name(doc["candidate"]),
                    "reference": framework_name(doc["reference"]),
                    "shares": {framework_name(fw): v for (check, family, fw), v in shares.items()
                               if (check, family) == (row["rung"], row["family"])},
                    "flags": flags, "sources": [src.ref()]})
    return out


def _shares_by_framework(doc: dict) -> dict:
    """(check, family, framework) -> the largest judged error as a share of its tolerance."""
    out: dict = {}
    for check, rung in doc["rungs"].items():
        columns = rung["entries"]["columns"]
        for values in rung["entries"]["rows"]:
            e = dict(zip(columns, values))
            if not e["judged"] or not e["tolerance"]:
                continue
            key = (check, e["family"], e["framework"])
            out[key] = max(out.get(key, 0.0), float(e["error"]) / float(e["tolerance"]))
    return out


def alignment_rows(found: Scan, guarded) -> List[dict]:
    rows = []
    for src in found.of("train_alignment"):
        got = guarded(found, src, lambda: _alignment_row(src))
        if got:
            rows.append(got)
    return rows


def _alignment_row(src: Source) -> dict:
    doc = src.doc
    losses, held = doc["losses"], doc.get("held_out") or {}
    pair = (held.get("pairs") or {}).get(f"{doc['candidate']} vs {doc['reference']}") or {}
    return {"comparison": f"{doc['candidate']} vs {doc['reference']}", "band": ", ".join(doc.get("band_runs", [])),
            "steps": losses.get("steps"), "worst_of_band": losses.get("max_error_over_band"),
            "limit": losses.get("multiple"), "first_step_outside": losses.get("first_step_outside"),
            "held_out_top1_diff_pp": None if pair.get("top1_diff") is None else 100 * pair["top1_diff"],
            "held_out_agreement_pct": None if pair.get("top1_agreement") is None else 100 * pair["top1_agreement"],
            "verdict": doc.get("verdict"), "reason": doc.get("reason"), "flags": [], "sources": [src.ref()]}
