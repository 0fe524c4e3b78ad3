"""What the report's tables hold, as data: rows built from :mod:`harness.report_inputs`,
each with its flags (why a number is not what it seems) and its sources (path + sha256).

:func:`build_report` is the whole report as one JSON-able dict; :mod:`harness.report`
renders it as text, CSV or JSON, :mod:`harness.report_html` as a page, :mod:`harness.plots`
draws its ``plots_data``.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from harness.files import sha256_file
from harness.report_training import alignment_rows, training_parity_rows
from harness.report_inputs import (STAGES, Evaluation, Scan, Source, agreement, bench_records, device_label,
                                   framework_name, generated_roots, is_training, layer_error, loss_curve,
                                   median_step_s, near_zero_reference, number, p90_step_s, parity_blocks,
                                   peak_memory_gib, per_class_top1, read_evaluation, scan, stage_of,
                                   train_record)

ROWS = ("caffe", "pytorch", "mindspore")


# ============================================================================ flags
@dataclass
class Flag:
    """A reason a row's numbers are not what they seem: ``on`` names the compared cell it
    qualifies (``delta``: measured vs published, ``agreement``: the two frameworks,
    ``ratio``: a speed ratio) or ``row`` for the row as a whole."""

    text: str
    on: str = "row"

    def to_dict(self) -> dict:
        return {"text": self.text, "on": self.on}


def _pct(fraction: Optional[float]) -> Optional[float]:
    return None if fraction is None else 100.0 * fraction


def _describe_override(override: Any) -> str:
    if not isinstance(override, dict) or not override:
        return ""
    return ", ".join(f"{k}={v}" for k, v in override.items())


def _expected_spec_hash(doc: dict) -> Optional[str]:
    """The spec hash today's presets give for a run's arch, data preset and overrides
    (None when they cannot be rebuilt: an unknown preset, an override this code lacks)."""
    try:
        from frameworks.spec.arch import get_preset
        from frameworks.spec.data_presets import PRESETS, spec_hash

        cfg = get_preset(doc["arch"], **({"num_classes": doc["num_classes"]}
                                         if isinstance(doc.get("num_classes"), int) else {}))
        preset = PRESETS[doc["data_preset"]]  # not get_data_preset: its warnings are for runs, not for reading
        override = {k: tuple(v) if isinstance(v, list) else v for k, v in (doc.get("data_override") or {}).items()}
        if override:
            preset = preset.replace(**override)
        return spec_hash(cfg, preset)
    except Exception:  # noqa: BLE001 - any failure means "cannot say", never a crash of the report
        return None


MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def guarded(found: Scan, src: Source, work: Callable[[], Any]) -> Any:
    """``work()`` for one source; a file of a known kind whose fields are not what that kind
    writes goes on the not-read list (with the error), never stops the report."""
    try:
        return work()
    except MALFORMED as exc:
        found.skip(src.path, f"a {src.kind} file this report cannot read ({type(exc).__name__}: {exc})")
        return None


# ============================================================================ accuracy
def _label(ev: Evaluation) -> str:
    return os.path.basename(str(ev.doc.get("checkpoint") or "?"))


def _pick_counterpart(ev: Evaluation, evals: Sequence[Evaluation]) -> Tuple[Optional[Evaluation], List[Flag]]:
    """The same weights run in another framework, preferring the same spec and val set."""
    key = ev.doc.get("weights_sha256") or ev.doc.get("checkpoint_sha256")
    others = [o for o in evals if o is not ev and o.framework != ev.framework and key
              and (o.doc.get("weights_sha256") or o.doc.get("checkpoint_sha256")) == key]
    if not others:
        return None, []

    def closeness(o: Evaluation) -> tuple:
        return (o.doc.get("spec_hash") == ev.doc.get("spec_hash"), o.val_set() == ev.val_set(),
                o.doc.get("data_preset_hash") == ev.doc.get("data_preset_hash"))

    best = max(others, key=closeness)
    flags = []
    if best.doc.get("spec_hash") != ev.doc.get("spec_hash"):
        flags.append(Flag(f"agreement with {framework_name(best.framework)} is across spec hashes "
                          f"{ev.doc.get('spec_hash')} and {best.doc.get('spec_hash')} (different graph or protocol)",
                          "agreement"))
    if best.val_set() != ev.val_set():
        flags.append(Flag(f"agreement with {framework_name(best.framework)} is across different val sets "
                          f"({ev.val_set()[0]} vs {best.val_set()[0]})", "agreement"))
    return best, flags


def _agreement_fields(ev: Evaluation, evals: Sequence[Evaluation]) -> Tuple[dict, List[Flag], List[dict]]:
    other, flags = _pick_counterpart(ev, evals)
    if other is None:
        return {"agreement_top1": None, "agreement_videos": None, "agreement_with": None,
                "agreement_max_abs_delta": None}, [], []
    result = agreement(ev, other)
    if result is None:
        return {"agreement_top1": None, "agreement_videos": None,
                "agreement_with": framework_name(other.framework), "agreement_max_abs_delta": None}, flags, []
    n_a, n_b = len(ev.video_ids), len(other.video_ids)
    if result["n_common"] < max(n_a, n_b):
        flags.append(Flag(f"agreement with {framework_name(other.framework)} covers the {result['n_common']} videos "
                          f"both runs scored ({n_a} and {n_b})", "agreement"))
    return {"agreement_top1": _pct(result["top1_agreement"]), "agreement_videos": result["n_common"],
            "agreement_with": framework_name(other.framework),
            "agreement_max_abs_delta": result["max_abs_delta"]}, flags, other.refs()


def _published_fields(entry) -> dict:
    pub = entry.published if entry is not None else {}
    return {"published_top1": pub.get("top1"), "published_top5": pub.get("top5"),
            "published_protocol": pub.get("protocol"), "published_val_videos": pub.get("val_videos"),
            "published_denominator": pub.get("denominator"), "published_unreadable": pub.get("unreadable"),
            "published_data_preset": entry.data_preset if entry is not None else None,
            "registry_arch": entry.arch if entry is not None else None}


def _measured_row(ev: Evaluation, entry, evals: Sequence[Evaluation], extra_flags: List[Flag],
                  registered: bool = True) -> dict:
    d, m = ev.doc, ev.measured
    flags = list(extra_flags) + [Flag(p) for p in ev.problems]
    unlisted = "" if not registered else " (not in the registry)"
    row = {"type": f"i3d_nlnet_{entry.framework_row}" if entry is not None else "-",
           "checkpoint": entry.name if entry is not None else f"{_label(ev)}{unlisted}",
           "run_in": framework_name(ev.framework), "arch": d.get("arch"), "data_preset": d.get("data_preset"),
           "data_override": _describe_override(d.get("data_override")), "protocol": d.get("protocol"),
           "spec_hash": d.get("spec_hash"), "val_set": _val_set(ev), "videos_scored": m.get("n_videos"),
           "videos_listed": m.get("n_listed"), "videos_missing": m.get("n_missing"), **_published_fields(entry)}
    denominator = row["published_denominator"] or "scored"
    if entry is not None and not row["published_denominator"]:
        flags.append(Flag("the registry does not say what the published percentages divide by: measured shown "
                          "over the scored videos", "delta"))
    suffix = "_listed" if denominator == "listed" else ""
    row.update(measured_on=denominator if m else None,
               measured_top1=_pct(m.get("top1" + suffix)), measured_top5=_pct(m.get("top5" + suffix)),
               measured_videos=(m.get("n_listed") if denominator == "listed" else m.get("n_videos")))
    n_classes = class_count(ev)
    row["classes"] = n_classes
    if n_classes is not None and n_classes <= 5 and row["measured_top5"] is not None:
        row.update(measured_top5=None, measured_top5_note=TOP5_NA)   # every label is in the top 5
    for k in ("top1", "top5"):
        pub, got = row[f"published_{k}"], row[f"measured_{k}"]
        row[f"delta_{k}"] = got - pub if isinstance(pub, (int, float)) and got is not None else None
    if entry is not None and m:
        if d.get("data_preset") != entry.data_preset:
            flags.append(Flag(f"measured with data preset {d.get('data_preset')}, published with "
                              f"{entry.data_preset}: not the published protocol", "delta"))
        if row["data_override"]:
            flags.append(Flag(f"data preset {d.get('data_preset')} overridden ({row['data_override']}): "
                              "not the published protocol", "delta"))
        if d.get("limit"):
            flags.append(Flag(f"limited to the first {d['limit']} of {d.get('n_index')} videos (--limit)", "delta"))
        val = row["published_val_videos"]
        if val is None:
            flags.append(Flag("the registry does not say how many videos the published numbers cover", "delta"))
        elif val != m.get("n_listed"):
            flags.append(Flag(f"published on {val} listed videos, measured on {m.get('n_listed')} listed here: "
                              "not the same val set", "delta"))
    expected = _expected_spec_hash(d)
    if expected and d.get("spec_hash") and expected != d.get("spec_hash"):
        flags.append(Flag(f"spec hash {d.get('spec_hash')} is not what today's presets give ({expected}): the "
                          "graph or protocol changed since this run"))
    agree, agree_flags, other_refs = _agreement_fields(ev, evals)
    row.update(agree)
    row.update(clips_per_s=m.get("clips_per_s"), model_clips_per_s=m.get("model_clips_per_s"),
               device=device_label(d, d.get("hardware")), checkpoint_sha256=d.get("checkpoint_sha256"),
               weights_sha256=d.get("weights_sha256"), flags=flags + agree_flags,
               sources=ev.refs() + [dict(r, role="agreement") for r in other_refs])
    return row


def _val_set(ev: Evaluation) -> str:
    """The list a run's videos came from, in words."""
    where, split, n_index, limit = ev.val_set()
    return f"{where} ({split}, {n_index} rows" + (f", first {limit}" if limit else "") + ")"


def _match(ev: Evaluation, registry) -> Tuple[Optional[Any], List[Flag]]:
    """The registry entry a run's checkpoint is, and how sure that is."""
    digest = ev.doc.get("checkpoint_sha256")
    for entry in registry.values():
        if isinstance(digest, str) and entry.check_digest(digest):
            if entry.arch != ev.doc.get("arch"):
                return None, [Flag(f"the file of registry entry {entry.name} (published on arch {entry.arch}) "
                                   f"run on arch {ev.doc.get('arch')}: not a measurement of the published model")]
            return entry, []
    for entry in registry.values():
        if (entry.check_digest(digest or "") is None and _label(ev) == entry.filename
                and entry.arch == ev.doc.get("arch")):
            return entry, [Flag(f"identified as {entry.name} by its file name only: the registry pins no digest "
                                "for it")]
    return None, []


KINETICS_CLASSES = 400
TOP5_NA = "n/a (<= 5 classes)"


def class_count(ev: Evaluation) -> Optional[int]:
    """How many classes a run scored: its saved scores' width, else the summary's num_classes."""
    if ev.scores is not None and ev.scores.ndim == 2:
        return int(ev.scores.shape[1])
    n = ev.doc.get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def dataset_group(ev: Evaluation, generated: Dict[str, dict]) -> Optional[Tuple[str, int]]:
    """Where a run's accuracy belongs: None for Kinetics-400 (400 classes, not generated),
    ``("generated", N)`` for a data root a make_dataset summary here names, ``("other", N)``
    for any other dataset of N != 400 classes."""
    root = ev.doc.get("data_root")
    n = class_count(ev)
    if isinstance(root, str) and os.path.realpath(root) in generated:
        return "generated", n if n is not None else generated[os.path.realpath(root)]["classes"]
    if n is not None and n != KINETICS_CLASSES:
        return "other", n
    return None


def accuracy_tables(evals: List[Evaluation], registry,
                    generated: Optional[Dict[str, dict]] = None) -> Tuple[List[dict], List[dict], List[str], dict]:
    """(Kinetics-400 accuracy rows, random-weight rows, table notes, the tables of other
    datasets: key -> {title, rows, notes}, one per generated or other dataset size)."""
    generated = generated or {}
    measured = [e for e in evals if not e.random_weights and dataset_group(e, generated) is None]
    others: Dict[Tuple[str, int], List[Evaluation]] = {}
    for ev in evals:
        group = None if ev.random_weights else dataset_group(ev, generated)
        if group is not None:
            others.setdefault(group, []).append(ev)
    matched: Dict[str, List[Tuple[Evaluation, List[Flag]]]] = {}
    unregistered: List[Tuple[Evaluation, List[Flag]]] = []
    for ev in measured:
        entry, flags = _match(ev, registry)
        (matched.setdefault(entry.name, []) if entry is not None else unregistered).append((ev, flags))
    order = {"torch": 0, "ms": 1}
    rows = []
    row_names = list(ROWS) + sorted({e.framework_row for e in registry.values()} - set(ROWS))
    for row_name in row_names:
        for entry in (e for e in registry.values() if e.framework_row == row_name):
            runs = sorted(matched.get(entry.name, []), key=lambda r: (order.get(r[0].framework, 9), r[0].source.path))
            if not runs:
                rows.append({"type": f"i3d_nlnet_{row_name}", "checkpoint": entry.name, "run_in": "published only",
                             "arch": entry.arch, "data_preset": entry.data_preset, **_published_fields(entry),
                             "flags": [], "sources": []})
            rows += [_measured_row(ev, entry, evals, flags) for ev, flags in runs]
    rows += [_measured_row(ev, None, evals, flags) for ev, flags in unregistered]
    notes = _mixed(rows)
    random_rows = [_random_row(ev, evals) for ev in evals if ev.random_weights]
    return rows, random_rows, notes + _mixed(random_rows, what="runs"), _other_tables(others, evals)


def _other_tables(others: Dict[Tuple[str, int], List[Evaluation]], evals: List[Evaluation]) -> dict:
    """One table per dataset that is not Kinetics-400: measured only, nothing published beside it."""
    order = {"torch": 0, "ms": 1}
    tables = {}
    for (what, n), group in sorted(others.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        group = sorted(group, key=lambda e: (order.get(e.framework, 9), e.source.path))
        rows = [_measured_row(ev, None, evals, [], registered=False) for ev in group]
        title = (f"Accuracy on a generated dataset (harness.make_dataset, {n} classes): not Kinetics-400"
                 if what == "generated" else f"Accuracy on a {n}-class dataset: not Kinetics-400")
        notes = _mixed(rows)
        if n is not None and n <= 5:
            notes.append(f"top-5 is {TOP5_NA}: with {n} classes every label is among the top 5, so it is 100% "
                         "whatever the network does")
        chance = f"chance top-1 is {100 / n:.1f}% ({n} classes)" if n else None
        tables[f"accuracy_{what}_{n}"] = {"title": title, "rows": rows, "notes": notes + ([chance] if chance else [])}
    return tables


def _mixed(rows: List[dict], what: str = "measured rows") -> List[str]:
    """A note (and a flag on every measured row) where the table mixes protocols, spec
    hashes, val sets or denominators: such rows are not comparable with one another."""
    measured = [r for r in rows if r.get("sources")]
    notes = []
    for key, name in (("spec_hash", "spec hashes"), ("data_preset", "data presets"),
                      ("measured_on", "denominators"), ("val_set", "val sets")):
        values = sorted({str(r.get(key)) for r in measured if r.get(key) is not None})
        if len(values) > 1:
            text = (f"these {what} mix {len(values)} {name} ({', '.join(values)}): compare a row with its own "
                    "published numbers, not with another row")
            notes.append(text)
            for r in measured:
                r["flags"].append(Flag(text))
    return notes


def _random_row(ev: Evaluation, evals: Sequence[Evaluation]) -> dict:
    d, m = ev.doc, ev.measured
    agree, flags, other_refs = _agreement_fields(ev, evals)
    return {"run_in": framework_name(ev.framework), "weights": d.get("checkpoint"), "arch": d.get("arch"),
            "data_preset": d.get("data_preset"), "data_override": _describe_override(d.get("data_override")),
            "spec_hash": d.get("spec_hash"), "val_set": _val_set(ev), "videos_scored": m.get("n_videos"),
            "videos_listed": m.get("n_listed"),
            "videos_missing": m.get("n_missing"), **agree, "clips_per_s": m.get("clips_per_s"),
            "model_clips_per_s": m.get("model_clips_per_s"), "device": device_label(d, d.get("hardware")),
            "weights_sha256": d.get("weights_sha256"), "flags": [Flag(p) for p in ev.problems] + flags,
            "sources": ev.refs() + [dict(r, role="agreement") for r in other_refs]}


# ============================================================================ speed
def _dtype(rec: dict, kind: str) -> Tuple[Optional[str], List[Flag]]:
    for k in ("dtype", "precision"):
        if isinstance(rec.get(k), str):
            return rec[k], []
    if kind in ("bench_forward", "device_check", "bench_train"):
        return "float32", [Flag("dtype not recorded: this benchmark had no dtype option and ran float32"
                                + (" with TF32 off" if rec.get("tf32") is False else ""))]
    return None, []


def _variant(rec: dict) -> str:
    parts = [str(rec[k]) for k in ("ms_mode", "variant") if isinstance(rec.get(k), str) and rec.get(k)]
    mode = rec.get("mode")
    if isinstance(mode, str) and mode.lower() not in ("train", "training", "infer", "inference") and mode not in parts:
        parts.insert(0, mode)
    for k in ("channels_last", "channels_last_3d", "compile", "torch_compile", "cuda_graphs", "fast"):
        if rec.get(k) is True:
            parts.append(k)
    return "+".join(parts) or "-"


def speed_table(found: Scan) -> Tuple[List[dict], List[str]]:
    rows, notes = [], []
    for src in found.of("bench_forward", "bench_train", "device_check"):
        got = guarded(found, src, lambda: _speed_rows(src))
        if got is None:
            continue
        if not got[0]:
            found.skip(src.path, "a benchmark file with no timed run in it")
        rows += got[0]
        notes += got[1]
    _ratios(rows)
    return rows, notes


def _speed_rows(src: Source) -> Tuple[List[dict], List[str]]:
    rows, notes = [], []
    for rec in bench_records(src):
        f = rec.fields
        if rec.error:
            notes.append(f"{src.path}: {framework_name(f.get('framework', '?'))} {_variant(f)} did not run "
                         f"({rec.error})")
            continue
        row = _speed_row(src, f, rec.hardware)
        if row is not None:
            rows.append(row)
    return rows, notes


def _speed_row(src: Source, f: dict, hardware: Optional[dict]) -> Optional[dict]:
    training = is_training(f, src.kind)
    batch = number(f, "batch_size", "batch")
    step = median_step_s(f)
    latency_ms = 1000 * step if step is not None else number(f, "latency_ms_median", "latency_ms", "median_ms")
    p90 = p90_step_s(f)
    latency_p90_ms = 1000 * p90 if p90 is not None else number(f, "latency_ms_p90", "p90_ms")
    flags: List[Flag] = []
    clips = batch / (latency_ms / 1000) if batch and latency_ms else None
    stored = number(f, "clips_per_s", "throughput")
    if clips is None:
        clips = stored
    elif stored is not None and abs(stored - clips) > 1e-6 * clips:
        flags.append(Flag(f"the file says {stored:.6g} clips/s, its timings give {clips:.6g}: the table shows the "
                          "timings' value"))
    train_ms = number(f, "train_ms_per_step", "ms_per_step", "step_ms") if training else None
    if training and train_ms is None and latency_ms is not None:
        train_ms = latency_ms
    if clips is None and train_ms is None:
        return None
    dtype, dflags = _dtype(f, src.kind)
    shape = f.get("input_shape")
    clip = "x".join(str(x) for x in shape[1:]) if isinstance(shape, list) and len(shape) == 5 else None
    util = number(f, "utilisation", "utilization", "mfu")      # fractions, as harness.bench writes them
    util = 100.0 * util if util is not None else number(f, "utilisation_pct", "utilization_pct")
    peak_share = number(f, "utilisation_of_peak")
    mem = peak_memory_gib(f)
    if f.get("noisy") is True:
        flags.append(Flag(f"noisy timing ({f.get('noise') or 'the benchmark says so'})", "ratio"))
    return {"bench": "training" if training else "inference", "framework": framework_name(f.get("framework", "?")),
            "variant": _variant(f), "device": device_label(f, hardware), "dtype": dtype, "arch": f.get("arch"),
            "clip": clip, "batch": int(batch) if batch else None, "latency_ms": None if training else latency_ms,
            "latency_p90_ms": None if training else latency_p90_ms,
            "ms_per_clip": 1000 / clips if clips else None, "clips_per_s": clips,
            "gflops_per_clip": number(f, "gflops_per_clip", "gflops") or (
                number(f, "flops_per_clip", "flops") / 1e9 if number(f, "flops_per_clip", "flops") else None),
            "gflop_per_s": number(f, "achieved_gflops", "achieved_gflop_per_s", "gflop_per_s", "gflops_per_s"),
            "interleaved": f.get("interleaved"), "noisy": f.get("noisy") is True,
            "load_average_max": number(f.get("load_average") if isinstance(f.get("load_average"), dict) else {},
                                       "max"),
            "utilisation_pct": util, "peak_pct": None if peak_share is None else 100.0 * peak_share,
            "peak_gflops": number(f, "peak_gflops"), "peak_host_gib": mem.get("host"), "peak_device_gib": mem.get("device"),
            "train_ms_per_step": train_ms, "ratio": None, "ratio_to": None, "flags": flags + dflags,
            "sources": [src.ref()]}


def _ratios(rows: List[dict]) -> None:
    """Each row's speed relative to PyTorch (eager where there is one) on the same device,
    dtype, arch, clip and batch: clips/s for inference, steps/s for training."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["bench"], r["device"], r["dtype"], r["arch"], r["clip"], r["batch"]), []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        ref = next((r for r in group if r["framework"] == "PyTorch" and r["variant"] in ("eager", "-")),
                   next((r for r in group if r["framework"] == "PyTorch"), group[0]))
        across = len({r["sources"][0]["path"] for r in group}) > 1
        sequential = not across and group[0].get("interleaved") is not True
        for r in group:
            if r["bench"] == "training" and r["train_ms_per_step"] and ref["train_ms_per_step"]:
                r["ratio"] = ref["train_ms_per_step"] / r["train_ms_per_step"]
            elif r["clips_per_s"] and ref["clips_per_s"]:
                r["ratio"] = r["clips_per_s"] / ref["clips_per_s"]
            r["ratio_to"] = f"{ref['framework']} {ref['variant']}".replace(" -", "")
            if across:
                r["flags"].append(Flag("ratio across benchmark files timed at different moments (not interleaved)",
                                       "ratio"))
            elif sequential:
                r["flags"].append(Flag("frameworks timed one after another, not interleaved: the ratio drifts with "
                                       "the machine's load", "ratio"))


# ============================================================================ parity
def _weights_label(doc: dict) -> str:
    ck = doc.get("checkpoint") or doc.get("weights")
    if not ck:
        return f"seeded random (seed {doc.get('seed', 0)})"
    text = str(ck)
    return text.split(" with ")[0] if " " in text else os.path.basename(text)


def parity_table(found: Scan) -> Tuple[List[dict], List[dict]]:
    """(rows, per-layer series for the plot)."""
    rows, series = [], []
    for src in found.of("parity", "train_parity", "device_check"):
        if src.kind == "train_parity" and isinstance(src.doc.get("rungs"), dict):
            continue   # the four-check format has a table of its own (harness.report_training)
        blocks = parity_blocks(src)
        if not blocks and src.kind != "device_check":
            found.skip(src.path, "no comparison (reference, candidate, layers) in it")
        got = guarded(found, src, lambda: [_parity_row(src, block) for block in blocks])
        for row, line in got or []:
            rows.append(row)
            series.append(line)
    return rows, series


def _share(layer: dict) -> Optional[float]:
    """The share of its tolerance a layer needed: smallest passing atol / atol (over 1 fails)."""
    needed, atol = number(layer, "min_atol"), number(layer, "atol")
    needed = layer_error(layer) if needed is None else needed
    return needed / atol if needed is not None and atol else None


def _stage_cells(layers: List[dict]) -> Dict[str, dict]:
    """Per stage: its worst scaled error (over layers whose reference is not zero up to
    rounding), the layer that came nearest its tolerance with that layer's own error and
    share, the verdict, and the layers that needed over 100% of their tolerance yet are
    marked passed in the file (passed by an allowance of its own, never shown as ok)."""
    stages: Dict[str, dict] = {}
    for layer in layers:
        st = stages.setdefault(stage_of(layer["name"]), {
            "worst": None, "worst_layer": None, "passed": True, "layers": 0, "of_tolerance": None,
            "nearest_layer": None, "nearest_error": None, "nearest_error_kind": None, "over_tolerance": []})
        st["layers"] += 1
        passed = layer.get("passed") is True
        st["passed"] = st["passed"] and passed
        near_zero = near_zero_reference(layer)
        err = number(layer, "max_abs") if near_zero else layer_error(layer)
        if not near_zero and err is not None and (st["worst"] is None or err > st["worst"]):
            st["worst"], st["worst_layer"] = err, layer["name"]
        share = _share(layer)
        if share is not None and (st["of_tolerance"] is None or share > st["of_tolerance"]):
            st.update(of_tolerance=share, nearest_layer=layer["name"], nearest_error=err,
                      nearest_error_kind="absolute" if near_zero else "scaled")
        if passed and share is not None and share > 1.0:
            st["over_tolerance"].append({"layer": layer["name"], "share": share, "note": str(layer.get("note") or "")})
    for st in stages.values():
        if st["nearest_layer"] is None:   # no share anywhere: the worst error stands alone
            st.update(nearest_error=st["worst"], nearest_error_kind="scaled" if st["worst"] is not None else None)
    return stages


def _over_tolerance_flags(stages: Dict[str, dict]) -> List[Flag]:
    flags = []
    for stage, st in stages.items():
        for over in st["over_tolerance"]:
            flags.append(Flag(f"{over['layer']} needed {100 * over['share']:.0f}% of its tolerance and the file "
                              f"marks it passed" + (f" ({over['note']})" if over["note"] else " (no reason given)")
                              + ": not counted as ok", f"stage:{stage}"))
    return flags


def _parity_row(src: Source, block) -> Tuple[dict, dict]:
    """A comparison's row (per stage: the worst error, the layer nearest its tolerance, the
    verdict) and its per-layer line for the plot."""
    rep, doc = block.report, src.doc
    layers = [x for x in rep["layers"] if isinstance(x, dict) and isinstance(x.get("name"), str)]
    stages = _stage_cells(layers)
    passed = all(x.get("passed") is True for x in layers) and bool(layers)
    flags = _over_tolerance_flags(stages)
    if isinstance(rep.get("passed"), bool) and rep["passed"] != passed:
        flags.append(Flag(f"the file's verdict ({'PASS' if rep['passed'] else 'FAIL'}) is not what its "
                          "layers say: the table shows the layers' verdict"))
    training = src.kind == "train_parity" or "train" in block.where.lower()
    # a file's place ("graph", "pynative") says which run; a list index ("comparisons[1]") does not
    where = re.sub(r"comparisons\[\d+\]", "", block.where.replace("parity", "")).strip(".")
    kind = "training step" if training else "forward"
    row = {"kind": kind, "comparison": f"{rep.get('candidate')} vs {rep.get('reference')}",
           "mode": "+".join(x for x in (rep.get("mode"), where) if x) or "-",
           "arch": doc.get("arch"), "input": _input_label(doc), "weights": _weights_label(doc),
           "device": doc.get("device") or "-",
           "stages": {k: v for k, v in sorted(stages.items(), key=lambda kv: stage_rank(kv[0]))},
           "logits_top1_agreement": _pct(number(rep.get("logits") or {}, "top1_agreement")),
           "passed": passed, "over_tolerance": [o["layer"] for st in stages.values() for o in st["over_tolerance"]],
           "first_failure": next((x["name"] for x in layers if x.get("passed") is not True), None),
           "flags": flags, "sources": [src.ref()]}
    line = {"label": f"{rep.get('candidate')} vs {rep.get('reference')}" + (f" ({where})" if where else "")
                     + f" [{os.path.basename(src.path)}]",
            "layers": [x["name"] for x in layers],
            "error": [None if near_zero_reference(x) else layer_error(x) for x in layers],
            "atol": [number(x, "atol") for x in layers], "share": [_share(x) for x in layers], "kind": kind,
            "arch": doc.get("arch"), "shape": _input_label(doc) if isinstance(doc.get("input_shape"), list) else None,
            "source": src.ref()}
    return row, line


def stage_rank(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def _input_label(doc: dict) -> str:
    shape = doc.get("input_shape")
    if isinstance(shape, list) and shape:
        return "x".join(map(str, shape))
    return os.path.basename(str(doc["input"])) if doc.get("input") else "-"


# ============================================================================ training
def train_table(found: Scan) -> Tuple[List[dict], List[dict]]:
    """(rows, loss curves)."""
    rows, curves = [], []
    for src in found.of("train"):
        rec = guarded(found, src, lambda: train_record(src))
        if rec is None:
            continue
        curve = rec.pop("curve")
        if all(rec[k] is None for k in ("final_loss", "accuracy_pct", "ms_per_step")):
            found.skip(src.path, "a training record with no loss, accuracy or step time this report reads")
            continue
        override = _describe_override(src.doc.get("data_override"))
        rows.append({**rec, "flags": [Flag(f"data preset overridden ({override})")] if override else [],
                     "sources": [src.ref()]})
        if curve:
            curves.append({"label": f"{rec['framework']} [{os.path.basename(src.path)}]", "steps": curve[0],
                           "loss": curve[1], "source": src.ref()})
    for src in found.of("train_parity"):   # the loss at every step of both frameworks, if kept
        for key in ("losses", "loss", "loss_curves"):
            per = src.doc.get(key)
            if isinstance(per, dict):
                for fw, seq in per.items():
                    curve = loss_curve({"losses": seq}) if isinstance(seq, list) else None
                    if curve:
                        curves.append({"label": f"{framework_name(fw)} [{os.path.basename(src.path)}]",
                                       "steps": curve[0], "loss": curve[1], "source": src.ref()})
    return rows, curves


# ============================================================================ the report
def _per_class(evals: List[Evaluation]) -> List[dict]:
    """Per-class top-1 difference of each pair of runs of the same weights in two frameworks."""
    pairs, seen = [], set()
    for a in evals:
        for b in evals:
            key = a.doc.get("weights_sha256")
            if (a is b or a.framework >= b.framework or not key or b.doc.get("weights_sha256") != key
                    or a.doc.get("spec_hash") != b.doc.get("spec_hash") or a.val_set() != b.val_set()
                    or (a.source.path, b.source.path) in seen):
                continue  # only runs of the same weights, spec and val set are compared class by class
            seen.add((a.source.path, b.source.path))
            ca, cb = per_class_top1(a), per_class_top1(b)
            classes = sorted(set(ca) & set(cb))
            if classes:
                pairs.append({"a": f"{framework_name(a.framework)} [{os.path.basename(a.source.path)}]",
                              "b": f"{framework_name(b.framework)} [{os.path.basename(b.source.path)}]",
                              "classes": classes, "diff_pp": [100 * (cb[c] - ca[c]) for c in classes],
                              "sources": a.refs() + b.refs()})
    return pairs


def training_tables(training_parity: List[dict], alignment: List[dict]) -> dict:
    """The training-parity table (by check and family) and the training-alignment one."""
    notes = ["worst: the family's largest error as a share of its tolerance (over 100% fails); floor: torch "
             "float32's own error against float64 as a share of the same tolerance; checks: components (loss, "
             "first BN, dropout alone), optimizer (the optimiser alone on given gradients), step (each step from "
             "the reference's state, against float64, the kinks a run flipped named), trajectory (K steps, "
             "against the float32 floor band)"]
    return {"training_parity": {"title": "Training parity: per check and parameter family "
                                         "(python -m harness.parity --train-steps)",
                                "rows": training_parity, "notes": notes if training_parity else []},
            "alignment": {"title": "Training alignment: fine-tuned in both frameworks, against torch's own band "
                                   "(python -m harness.align)", "rows": alignment, "notes": []}}


def build_report(results_dir: str) -> dict:
    """Everything the report shows, as data (the JSON format is exactly this)."""
    from harness.checkpoints.registry import load_registry, registry_path

    found = scan(results_dir)
    registry = load_registry()
    evals = []
    for src in found.of("evaluation"):
        missing = [k for k in ("framework", "arch", "data_preset", "scores") if not isinstance(src.doc.get(k), str)]
        if missing:
            found.skip(src.path, f"an evaluation summary without {', '.join(missing)}")
            continue
        ev = guarded(found, src, lambda: read_evaluation(src))
        if ev is not None:
            evals.append(ev)
    accuracy, random_rows, acc_notes, other_accuracy = accuracy_tables(evals, registry,
                                                                        generated_roots(found.sources))
    speed, speed_notes = speed_table(found)
    parity, layer_series = parity_table(found)
    training, curves = train_table(found)
    training_parity = training_parity_rows(found, guarded, Flag)
    alignment = alignment_rows(found, guarded)
    reg = registry_path()
    return {
        "kind": "report", "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results": results_dir, "registry": {"path": reg, "sha256": sha256_file(reg)},
        "units": {"accuracy": "percent", "delta": "percentage points", "agreement": "percent of common videos",
                  "parity error": "max |difference| / max |reference| of the layer",
                  "latency": "ms per forward pass of the batch", "memory": "GiB"},
        "tables": {
            "accuracy": {"title": "Accuracy on Kinetics-400: published beside measured", "rows": accuracy,
                         "notes": acc_notes},
            **other_accuracy,
            "random": {"title": "Seeded random weights: the frameworks compared (not an accuracy)",
                       "rows": random_rows, "notes": []},
            "speed": {"title": "Speed", "rows": speed, "notes": speed_notes},
            "parity": {"title": "Parity: per stage, the layer nearest its tolerance",
                       "rows": parity,
                       "notes": ["a stage's cell: of the layer that came nearest its tolerance, its error (max "
                                 "|difference| / max |reference| of that layer; 'abs' the absolute max |difference| "
                                 "where the reference is zero up to rounding, so no error relative to it means "
                                 "anything) and in brackets its share of its tolerance (the smallest passing atol / "
                                 "atol); 'ok' only at or under 100%, 'over tolerance' above it even where the file "
                                 "passes the layer, 'FAIL' where a layer failed"]
                       if parity else []},
            "training": {"title": "Training runs", "rows": training, "notes": []},
            **training_tables(training_parity, alignment),
        },
        "plots_data": {"parity_layers": layer_series, "loss_curves": curves, "per_class": _per_class(evals),
                       "training_parity": training_parity},
        "not_read": found.not_read,
        "sources": [s.ref() for s in found.sources],
    }
