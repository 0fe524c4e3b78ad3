"""Measure the floors behind harness.train_parity.TOLERANCES: the training-parity command on
the unmutated code at several seeds and thread counts, and per tolerance the worst error
seen (torch float32 against float64 where a check has a floor; each framework against the
float64 definition where it has none), written to one JSON.

    python scripts/measure_train_floors.py --out results/train_parity_floors.json   # seeds 0-4 x threads 1, 2
    python scripts/measure_train_floors.py --from runs/floors/*.json --out ...       # only aggregate

A tolerance is set at a few times the worst value measured here; the margin of each planted
bug (tests/test_train_parity_mutants.py) is then its error over that tolerance.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# tolerance key -> (check, quantities); None: every quantity of the check
KEYS = {"loss": ("components", ["cross_entropy"]), "bn": ("components", ["train_output", "running_mean",
                                                                          "running_var", "eval_output"]),
        "dropout_p": ("components", ["p"]), "dropout_scale": ("components", ["kept_scale"]),
        "optimizer": ("optimizer", ["buf", "param"]), "decay": ("optimizer", ["decay"]),
        "lr": ("optimizer", ["schedule"]), "step_loss": ("step", ["loss"]), "step_grad": ("step", ["grad"]),
        "step_stat": ("step", ["stat"])}


def run_one(seed: int, threads: int, out: str, shape: str) -> dict:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "harness.parity", "--train-steps", "3", "--frameworks", "torch,ms",
                           "--num-classes", "4", "--input-shape", shape, "--seed", str(seed), "--threads",
                           str(threads), "--json", out, "-q"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    print(f"seed {seed} threads {threads}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
    if not os.path.exists(out):
        raise SystemExit(proc.stderr[-2000:])
    return json.load(open(out))


def entries(doc: dict, check: str) -> List[dict]:
    block = doc["rungs"][check]["entries"]
    return [dict(zip(block["columns"], row)) for row in block["rows"]]


def aggregate(docs: List[dict]) -> dict:
    out: Dict[str, dict] = {}
    for key, (check, quantities) in KEYS.items():
        rows = [e for d in docs for e in entries(d, check) if e["quantity"] in quantities]
        floors = [e["floor"] for e in rows if e["floor"] is not None]
        worst = {}
        for fw in sorted({e["framework"] for e in rows}):
            mine = [e for e in rows if e["framework"] == fw]
            top = max(mine, key=lambda e: e["error"])
            worst[fw] = {"error": top["error"], "name": top["name"], "step": top["step"]}
        out[key] = {"tolerance": rows[0]["tolerance"] if rows else None, "floor": max(floors) if floors else None,
                    "worst": worst}
    band = []
    for d in docs:
        for e in entries(d, "trajectory"):
            if e["floor"]:
                band.append((e["error"] / e["floor"], e["name"], e["quantity"], e["framework"]))
    top = max(band) if band else None
    out["band"] = {"worst_ratio_to_floor": top[0] if top else None, "where": top[1:] if top else None}
    out["worst_share"] = {}   # per check: the largest error / tolerance any entry of any run had
    for check in ("components", "optimizer", "step", "trajectory"):
        rows = [e for d in docs for e in entries(d, check) if e["tolerance"]]
        top = max(rows, key=lambda e: e["error"] / e["tolerance"], default=None)
        out["worst_share"][check] = None if top is None else {
            "share": top["error"] / top["tolerance"], "name": top["name"], "quantity": top["quantity"],
            "framework": top["framework"], "step": top["step"], "tolerance": top["tolerance"]}
    out["verdicts"] = [{"seed": d["seed"], "threads": d["threads"], "verdict": d["verdict"],
                        "first_failure": d["first_failure"]} for d in docs]
    out["flips"] = [n for d in docs for r in ("step", "trajectory") for n in d["rungs"][r]["notes"]
                    if "the other way" in n]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the floors JSON")
    p.add_argument("--from", dest="sources", nargs="+", help="aggregate these training-parity JSONs instead of running")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("--shape", default="2,3,8,64,64", help="batch shape (default 2,3,8,64,64)")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "floors"), help="where each run's JSON goes")
    args = p.parse_args()
    if args.sources:
        docs = [json.load(open(f)) for pattern in args.sources for f in sorted(glob.glob(pattern))]
    else:
        os.makedirs(args.workdir, exist_ok=True)
        docs = [run_one(seed, int(t), os.path.join(args.workdir, f"seed{seed}-threads{t}.json"), args.shape)
                for t in args.threads.split(",") for seed in range(args.seeds)]
    from harness.provenance import result_doc
    from harness.files import atomic_write_json

    commits = sorted({(d.get("provenance") or {}).get("git", {}).get("commit") or "unknown" for d in docs})
    body = {"runs": len(docs), "run_commits": commits, "shape": args.shape, "floors": aggregate(docs),
            "versions": docs[0]["runs"]["candidate"]["versions"] if docs else None}
    atomic_write_json(args.out, result_doc("train_parity_floors", body))
    print(json.dumps(body["floors"], indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
