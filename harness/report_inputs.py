"""What :mod:`harness.report` reads from a results folder, and nothing it trusts unchecked.

Every ``*.json`` under the folder (a run's ``<name>.scores/`` folder belongs to its
summary and is not scanned) becomes a :class:`Source`: its path, the sha256 of its bytes
and its ``kind`` (stamped by :func:`harness.provenance.result_doc`; files written before the
stamp are told apart by their fields). The kinds read:

``evaluation``   a ``harness.evaluate`` summary: every number is recomputed from its saved
                 per-video scores (:class:`Evaluation`); the summary's own numbers are only
                 compared with the recomputed ones, and a disagreement is a flag.
``bench_forward``, ``bench_train``, ``device_check``
                 benchmark records (:func:`bench_records`): flat fields, read by name where
                 present; a timing is recomputed from its ``step_s`` list when the file holds it.
``parity``, ``train_parity`` (and ``device_check``'s ``parity`` block)
                 comparator reports (:func:`parity_blocks`): any object with ``reference``,
                 ``candidate`` and ``layers``, wherever it sits in the file.
``train``        training runs (:func:`train_record`): loss per step, final accuracy, ms/step.
``dataset``      ``harness.make_dataset --json``'s summary (no kind; told by its fields): the
                 evaluations whose data root it names ran on generated videos
                 (:func:`generated_roots`), and their accuracy is titled so.

Anything else (another kind, no kind, not JSON, a shard whose merged summary is missing) is
put on the *not read* list with its reason: visible in the report, never an error.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from harness import metrics
from harness.errors import InputError
from harness.files import sha256_file


# result files written before every command stamped its ``kind``: told apart by their fields
_LEGACY_KINDS = (("evaluation", lambda d: "summary_version" in d and "scores" in d),
                 ("bench_forward", lambda d: d.get("benchmark") == "forward"),
                 ("device_check", lambda d: d.get("benchmark") == "device_check"),
                 ("bench_data", lambda d: d.get("benchmark") == "data_decode"),
                 ("parity", lambda d: "layers" in d or "comparisons" in d or d.get("benchmark") == "parity"),
                 ("dataset", lambda d: {"root", "classes", "videos", "frames_per_video", "fps", "seed"} <= set(d)))
READ_KINDS = ("evaluation", "bench_forward", "bench_train", "device_check", "parity", "train_parity", "train_alignment",
              "train",
              "dataset")
# kinds this report knows and leaves out on purpose, with the reason it gives
LEFT_OUT = {"agreement": "recomputed from the two runs' own scores instead",
            "bench_data": "a decoding benchmark: not part of this report",
            "train_parity_floors": "the floors training parity's tolerances were set from (README: Training parity)"}


def framework_name(name: Any) -> str:
    """The runner's title (``PyTorch`` for ``torch``); a name no runner knows, as it is."""
    from harness.runners import framework_title

    return framework_title(name)


def kind_of(doc: dict) -> Optional[str]:
    """What a result file is: its ``kind``, or (older files) what its fields say."""
    if isinstance(doc.get("kind"), str):
        return doc["kind"]
    return next((kind for kind, test in _LEGACY_KINDS if test(doc)), None)


@dataclass
class Source:
    """One result file: where it is, what its bytes hash to, what it is."""

    path: str
    sha256: str
    kind: str
    doc: dict

    def ref(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass
class Scan:
    sources: List[Source] = field(default_factory=list)
    not_read: List[Dict[str, str]] = field(default_factory=list)   # {"path", "reason"}

    def of(self, *kinds: str) -> List[Source]:
        return [s for s in self.sources if s.kind in kinds]

    def skip(self, path: str, reason: str) -> None:
        self.not_read.append({"path": path, "reason": reason})


def _inside_scores_folder(path: str, root: str) -> bool:
    parts = os.path.relpath(path, root).split(os.sep)[:-1]
    return any(p.endswith(".scores") for p in parts)


def scan(results_dir: str) -> Scan:
    """Every result file under ``results_dir``, sorted by path; raises :class:`InputError`
    (one line, exit 2) when the folder is missing, empty, or holds nothing this report reads."""
    if not os.path.isdir(results_dir):
        raise InputError(f"no results folder {results_dir}")
    out = Scan()
    paths = sorted(p for p in glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)
                   if os.path.isfile(p) and not _inside_scores_folder(p, results_dir))
    if not paths:
        raise InputError(f"no result files (*.json) in {results_dir}")
    for path in paths:
        try:
            with open(path, "rb") as f:
                raw = f.read()
            doc = json.loads(raw)
        except OSError as exc:
            out.skip(path, f"cannot read it ({exc.strerror or exc})")
            continue
        except ValueError as exc:
            out.skip(path, f"not valid JSON ({str(exc).splitlines()[0]})")
            continue
        if not isinstance(doc, dict):
            out.skip(path, f"not a JSON object (a {type(doc).__name__})")
            continue
        kind = kind_of(doc)
        if kind is None and os.path.basename(path) == "state.json" and os.path.isfile(
                os.path.join(os.path.dirname(path), "train.json")):
            continue  # a training run's resume state: its train.json speaks for it
        if kind is None:
            out.skip(path, "no kind, and not a result file of this project")
        elif kind in LEFT_OUT:
            out.skip(path, f"kind {kind}: {LEFT_OUT[kind]}")
        elif kind not in READ_KINDS:
            out.skip(path, f"kind {kind}: not a kind this report reads")
        else:
            out.sources.append(Source(path, hashlib.sha256(raw).hexdigest(), kind, doc))
    _drop_merged_shards(out)
    if not out.sources:
        reasons = "; ".join(f"{os.path.basename(n['path'])}: {n['reason']}" for n in out.not_read[:3])
        more = f" (and {len(out.not_read) - 3} more)" if len(out.not_read) > 3 else ""
        raise InputError(f"nothing in {results_dir} is a result this report reads ({len(paths)} JSON files; "
                         f"{reasons}{more})")
    return out


def _drop_merged_shards(out: Scan) -> None:
    """A shard speaks through its merged summary; a shard without one is not read."""
    merged = set()
    for s in out.of("evaluation"):
        merged_from = s.doc.get("merged_from")
        for p in merged_from if isinstance(merged_from, list) else []:
            merged.add(os.path.abspath(str(p)))
            merged.add(os.path.abspath(os.path.join(os.path.dirname(s.path), os.path.basename(str(p)))))
    keep = []
    for s in out.sources:
        shard = s.doc.get("shard") if s.kind == "evaluation" else None
        if isinstance(shard, list) and len(shard) == 2 and shard[1] != 1:
            if os.path.abspath(s.path) not in merged:
                out.skip(s.path, f"shard {shard[0]} of {shard[1]} with no merged summary here "
                                 "(python -m harness.evaluate --merge ... reports the whole run)")
            continue
        keep.append(s)
    out.sources = keep


# ----------------------------------------------------------------------------- evaluations
NOT_LISTED = ("duplicate_row",)   # as harness.scores: faults that are not a video of the split
_ACCURACY_KEYS = ("top1", "top5", "top1_listed", "top5_listed", "mean_class_accuracy")
_COUNT_KEYS = ("n_videos", "n_missing", "n_listed")
_RATE_KEYS = ("clips_per_s", "model_clips_per_s")


@dataclass
class Evaluation:
    """An evaluation summary and what its saved scores say."""

    source: Source
    scores_dir: str
    scores_sha256: Optional[str] = None      # over the chunk files' names and bytes, in order
    video_ids: List[str] = field(default_factory=list)
    labels: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None
    measured: Dict[str, Any] = field(default_factory=dict)   # recomputed: counts, accuracy, clips/s
    problems: List[str] = field(default_factory=list)        # why a number is missing or not trusted

    @property
    def doc(self) -> dict:
        return self.source.doc

    @property
    def framework(self) -> str:
        return str(self.doc.get("framework"))

    @property
    def random_weights(self) -> bool:
        return str(self.doc.get("checkpoint", "")).startswith("random")

    def refs(self) -> List[dict]:
        refs = [self.source.ref()]
        if self.scores_sha256:
            refs.append({"path": self.scores_dir, "sha256": self.scores_sha256})
        return refs

    def val_set(self) -> tuple:
        """What makes two runs' video lists the same list."""
        d = self.doc
        return (d.get("annotations") or d.get("data_root"), d.get("split"), d.get("n_index"), d.get("limit"))


def _scores_digest(scores_dir: str) -> str:
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(scores_dir, "chunk-*.npz"))):
        h.update(os.path.basename(path).encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return h.hexdigest()


_TEXT_KEYS = ("checkpoint", "checkpoint_sha256", "weights_sha256", "spec_hash", "data_preset_hash", "arch_hash",
              "protocol", "annotations", "data_root", "split", "device")
_TYPED_KEYS = ((("n_index", "limit", "num_classes"), int, "an integer"), (("hardware", "faults"), dict, "an object"))


def _sanitise(d: dict) -> List[str]:
    """Fields of a summary that are not of the type harness.evaluate writes become None (so
    nothing downstream trusts them); returns what was dropped, as problems to show."""
    dropped = []
    for keys, kind, what in (((_TEXT_KEYS), str, "text"),) + _TYPED_KEYS:
        for k in keys:
            v = d.get(k)
            if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
                dropped.append(f"{k} is not {what} ({json.dumps(v)[:40]})")
                d[k] = None
    override = d.get("data_override")
    if override is not None and not isinstance(override, dict):
        dropped.append(f"data_override is not an object ({json.dumps(override)[:40]})")
        d["data_override"] = {"unreadable": json.dumps(override)[:40]}
    return [f"the summary's {', '.join(dropped)}: ignored"] if dropped else []


def read_evaluation(source: Source) -> Evaluation:
    """Recompute a summary's numbers from its scores folder; record every disagreement."""
    from harness.scores import read_scores, timing_summary

    d = source.doc
    scores_dir = os.path.join(os.path.dirname(source.path), str(d.get("scores")))
    ev = Evaluation(source, scores_dir)
    ev.problems += _sanitise(d)
    if not os.path.isdir(scores_dir):
        ev.problems.append(f"its scores folder {scores_dir} is missing: the summary's numbers are not shown "
                           "(a summary is never trusted without its per-video scores)")
        return ev
    try:
        saved = read_scores(scores_dir)
        ev.scores_sha256 = _scores_digest(scores_dir)
    except (InputError, OSError) as exc:
        ev.problems.append(f"its scores cannot be read ({exc}): the summary's numbers are not shown")
        return ev
    ev.video_ids, ev.labels, ev.scores = saved.video_ids, saved.labels, saved.scores
    listed = d.get("faults").get("list") if isinstance(d.get("faults"), dict) else None
    faults = [f for f in listed or [] if isinstance(f, dict) and "position" not in f]
    faults += saved.faults
    n_videos = int(len(saved.labels))
    n_missing = sum(1 for f in faults if f.get("skipped", True) and f.get("kind") not in NOT_LISTED)
    m: Dict[str, Any] = {"n_videos": n_videos, "n_missing": n_missing, "n_listed": n_videos + n_missing}
    non_finite = int((~np.isfinite(saved.scores)).any(axis=1).sum()) if saved.scores.size else 0
    if non_finite:
        ev.problems.append(f"{non_finite} of {n_videos} videos have non-finite scores: no accuracy")
    elif not n_videos:
        ev.problems.append("no video was scored: no accuracy")
    elif not (saved.labels >= 0).all():
        ev.problems.append("the split has no labels: no accuracy")
    else:
        ev.problems += _ties(saved.scores)
        acc = metrics.accuracy_summary(saved.scores, saved.labels)
        m.update(acc)
        m["top1_listed"] = acc["top1"] * n_videos / m["n_listed"]
        m["top5_listed"] = acc["top5"] * n_videos / m["n_listed"]
    timing = timing_summary(saved.seconds)
    m["clips_per_s"], m["model_clips_per_s"] = timing["clips_per_s"], timing["model_clips_per_s"]
    ev.measured = m
    ev.problems += _disagreements(d, m)
    return ev


def _ties(scores: np.ndarray) -> List[str]:
    """Videos whose top-1 or top-5 depends on how equal scores are ordered (a saturated
    softmax gives many exact zeros): harness.metrics ranks equal scores lowest class first."""
    out = []
    top = -np.sort(-scores, axis=1)
    for k in (1, 5):
        if scores.shape[1] > k:
            n = int((top[:, k - 1] == top[:, k]).sum())
            if n:
                out.append(f"{n} of {len(scores)} videos tie at the top-{k} boundary (equal {k}th and {k + 1}th "
                           f"scores): their top-{k} hit depends on tie-breaking (lowest class index first)")
    return out


def _disagreements(summary: dict, measured: dict) -> List[str]:
    """The summary's numbers that its own scores do not give."""
    out = []
    for key in _COUNT_KEYS + _ACCURACY_KEYS + _RATE_KEYS:
        said, got = summary.get(key), measured.get(key)
        if not isinstance(said, (int, float)) or isinstance(said, bool):
            continue
        if got is None:
            out.append(f"the summary says {key} {said:g}, its scores give none")
            continue
        tol = 1e-6 * max(abs(got), 1e-12) if key in _RATE_KEYS else 1e-9
        if abs(said - got) > tol:
            out.append(f"the summary says {key} {said:.6g}, its scores give {got:.6g}")
    if out:
        out = [f"summary disagrees with its per-video scores ({'; '.join(out)}): the table shows what the "
               "scores give"]
    return out


def agreement(a: Evaluation, b: Evaluation) -> Optional[dict]:
    """Top-1 agreement and score difference of two runs over their common videos."""
    if a.scores is None or b.scores is None or a.scores.shape[1:] != b.scores.shape[1:]:
        return None
    if not (np.isfinite(a.scores).all() and np.isfinite(b.scores).all()):
        return None
    result = metrics.agreement(a.video_ids, a.scores, b.video_ids, b.scores)
    if not result.get("n_common"):
        return None
    return {k: result[k] for k in ("n_common", "top1_agreement", "top5_set_agreement", "max_abs_delta",
                                   "n_top1_differ")}


def per_class_top1(ev: Evaluation) -> Dict[int, float]:
    """Top-1 recall of each class present in the run's labels."""
    if ev.scores is None or not len(ev.labels) or not np.isfinite(ev.scores).all():
        return {}
    pred = ev.scores.argmax(axis=1)
    return {int(c): float(np.mean(pred[ev.labels == c] == c)) for c in np.unique(ev.labels) if c >= 0}


# ----------------------------------------------------------------------------- benchmarks
def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if _scalar(v)}


def number(rec: dict, *keys: str) -> Optional[float]:
    """The first of ``keys`` that holds a finite number."""
    for k in keys:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def device_label(rec: dict, hardware: Optional[dict]) -> str:
    """Where a record ran, in words: the GPU's name, or the CPU model and its threads."""
    hw = hardware if isinstance(hardware, dict) else {}
    device = str(rec.get("device") or hw.get("device") or "")
    if device in ("gpu", "cuda") or (not device and hw.get("gpu")):
        return str(hw.get("gpu") or "GPU")
    cpu = hw.get("cpu") or hw.get("cpu_model")
    threads = hw.get("threads") or rec.get("threads")
    return f"{cpu or 'CPU'}" + (f", {threads} threads" if threads else "")


@dataclass
class BenchRecord:
    source: Source
    fields: dict          # doc-level scalars < result-level < run-level
    hardware: Optional[dict]
    error: Optional[str] = None


def bench_records(source: Source) -> Iterator[BenchRecord]:
    """One record per timed configuration of a benchmark file, whatever its layout:
    ``results[].runs[]`` (harness.bench), ``gpu[]`` and ``cpu`` (harness.device_check),
    ``results[]`` or ``runs[]`` of flat records, or one flat record."""
    doc = source.doc
    top = _scalars(doc)
    top.pop("kind", None)
    if isinstance(doc.get("input_shape"), list):
        top["input_shape"] = doc["input_shape"]
    if source.kind == "device_check":
        prov = doc.get("provenance") if isinstance(doc.get("provenance"), dict) else {}
        runs = prov.get("runs") if isinstance(prov.get("runs"), dict) else {}
        gpu_hw = doc.get("hardware") if isinstance(doc.get("hardware"), dict) else {}
        for device, rows in (("gpu", doc.get("gpu")), ("cpu", doc.get("cpu"))):
            hw = (runs.get(device) or {}).get("hardware") or (
                gpu_hw if device == "gpu" else {"device": "cpu", "cpu": gpu_hw.get("cpu")})  # the same host's CPU
            for row in (rows if isinstance(rows, list) else [rows] if isinstance(rows, dict) else []):
                if isinstance(row, dict):
                    yield BenchRecord(source, {**top, "framework": "torch", "device": device, **_scalars(row)}, hw,
                                      row.get("error"))
        return
    if isinstance(doc.get("rows"), list):   # the older training benchmark: one row per framework x shape
        yield from _train_bench_records(source, top)
        return
    if isinstance(doc.get("results"), list):
        results = doc["results"]
    elif isinstance(doc.get("runs"), list):
        results = [{"runs": doc["runs"]}]
    else:  # one flat record: its fields are the file's own
        results = [{"runs": [{k: v for k, v in doc.items() if isinstance(v, list) and k.endswith("_s")}]}]
    for r in results:
        if not isinstance(r, dict):
            continue
        base = {**top, **_scalars(r)}
        if r.get("task") == "train" and r.get("recipe") == "seed":   # the seed's own step: its variant is its recipe
            base["variant"] = "seed recipe"
        hw = r.get("hardware") if isinstance(r.get("hardware"), dict) else doc.get("hardware")
        if "error" in r:
            yield BenchRecord(source, base, hw, str(r["error"]))
            continue
        for run in (r["runs"] if isinstance(r.get("runs"), list) else [{}]):
            if isinstance(run, dict):
                lists = {k: v for part in (r, run) for k, v in part.items()
                         if (isinstance(v, list) and (k.endswith("_s") or k == "input_shape"))
                         or (k == "load_average" and isinstance(v, dict))}
                yield BenchRecord(source, {**base, **_scalars(run), **lists}, hw,
                                  None if run.get("error") is None else str(run["error"]))


def _train_bench_records(source: Source, top: dict) -> Iterator[BenchRecord]:
    """The rows of the training benchmark before it became ``bench forward --mode train
    --recipe seed`` (``results/train_step_cpu.json``; the new one writes ``results[].runs[]``,
    read above): ``framework``, ``ms_mode``, ``shape``, ``step_ms`` (a list),
    ``median_step_ms``, ``peak_rss_bytes``, ``hardware``; a row that did not run holds
    ``skipped`` or ``error`` instead of its times."""
    for row in source.doc["rows"]:
        if not isinstance(row, dict):
            continue
        fields = {**top, **_scalars(row), "mode": row.get("ms_mode") or "eager"}
        fields.pop("variant", None)    # "ms graph": the framework and mode again
        shape = row.get("shape")
        if isinstance(shape, list) and len(shape) == 5:
            fields.update(input_shape=shape, batch_size=shape[0])
        steps = row.get("step_ms")
        if isinstance(steps, list) and steps and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                     for x in steps):
            fields["step_s"] = [x / 1000 for x in steps]
        hw = row.get("hardware") if isinstance(row.get("hardware"), dict) else None
        why = row.get("error") or row.get("skipped")
        yield BenchRecord(source, fields, hw, None if why is None else str(why))


TRAIN_WORDS = ("train", "training", "train_step")


def is_training(rec: dict, kind: str) -> bool:
    if kind == "bench_train":
        return True
    return any(str(rec.get(k, "")).lower() in TRAIN_WORDS for k in ("task", "phase", "mode", "bench", "benchmark"))


def median_step_s(rec: dict) -> Optional[float]:
    steps = rec.get("step_s")
    if isinstance(steps, list) and steps and all(isinstance(x, (int, float)) for x in steps):
        return float(statistics.median(steps))
    return number(rec, "step_s_median")


def p90_step_s(rec: dict) -> Optional[float]:
    steps = rec.get("step_s")
    if isinstance(steps, list) and len(steps) >= 2 and all(isinstance(x, (int, float)) for x in steps):
        return float(np.percentile(steps, 90))
    return number(rec, "step_s_p90")


_MEMORY_UNITS = (("_bytes", 2.0 ** -30), ("_kib", 2.0 ** -20), ("_mib", 2.0 ** -10), ("_mb", 1e6 / 2 ** 30),
                 ("_gib", 1.0), ("_gb", 1e9 / 2 ** 30))


def peak_memory_gib(rec: dict) -> Dict[str, float]:
    """``{"host": GiB, "device": GiB}`` from whichever peak-memory fields a record holds."""
    out: Dict[str, float] = {}
    for key, value in rec.items():
        lk = key.lower()
        if "peak" not in lk or not ("mem" in lk or "rss" in lk):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        scale = next((s for suffix, s in _MEMORY_UNITS if lk.endswith(suffix)), None)
        if scale is None:
            continue
        where = "device" if any(w in lk for w in ("device", "gpu", "cuda")) else "host"
        out[where] = max(out.get(where, 0.0), value * scale)
    return out


# ----------------------------------------------------------------------------- parity
@dataclass
class ParityBlock:
    source: Source
    where: str            # its place in the file ("", "graph", "comparisons[1]", "parity" ...)
    report: dict


def parity_blocks(source: Source) -> List[ParityBlock]:
    """Every comparator report in a file: an object with ``reference``, ``candidate`` and a
    ``layers`` list, wherever it sits."""
    found: List[ParityBlock] = []

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            is_report = isinstance(obj.get("layers"), list) and "candidate" in obj and "reference" in obj
            if is_report:
                found.append(ParityBlock(source, where, obj))
            for k, v in obj.items():   # a report may hold another (train_parity's float64 "floor")
                if k != "provenance" and not (is_report and k in ("layers", "logits", "tolerance")):
                    walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(source.doc, "")
    return found


STAGES = ("stem", "res2", "res3", "res4", "res5", "pool", "logits", "head", "loss")
_STAGE_OF = {"pool1": "stem", "pool2": "res2"}


def stage_of(name: str) -> str:
    """``res4.3.non_local`` -> ``res4``; training-step entries (``res2.0.conv1.weight@grad1``,
    ``head.fc.bias@final``, ``loss@2``) by the first part that names a stage; ``other`` otherwise."""
    for part in name.split("@")[0].replace("/", ".").replace(":", ".").split("."):
        if part in STAGES:
            return part
        if part in _STAGE_OF:
            return _STAGE_OF[part]
    return "other"


def layer_error(layer: dict) -> Optional[float]:
    """A layer's worst error as a fraction of its reference's max |value| (the comparator's
    scaled error; ``max_abs / ref_max`` where only those are given). Never an element-wise
    relative error: against a reference element near zero that is any number at all
    (7e8 was printed for a float64 gradient of 4e-17)."""
    v = number(layer, "scaled_max_abs")
    if v is None and isinstance(layer.get("scaled_max_abs"), (int, float)):  # inf: not comparable
        return float("inf")
    if v is None:
        diff, ref = number(layer, "max_abs"), number(layer, "ref_max")
        v = diff / ref if diff is not None and ref else None
    return v


def near_zero_reference(layer: dict) -> bool:
    """Whether a layer's reference is zero up to rounding, so that no error scaled by it
    means anything: its max |value| is 0, or its tolerance (a fraction of that max) is over
    1, i.e. the comparison itself allows more than the whole reference (training-step parity
    does this for gradients that vanish analytically, such as a zero-gain BN's bias)."""
    ref, atol = number(layer, "ref_max"), number(layer, "atol")
    return ref == 0.0 or (atol is not None and atol > 1.0)


def generated_roots(sources: Sequence[Source]) -> Dict[str, dict]:
    """Real paths of the data roots that ``harness.make_dataset`` summaries say it wrote,
    each with the summary's facts (classes, videos, seed)."""
    out = {}
    for src in sources:
        d = src.doc
        if src.kind == "dataset" and isinstance(d.get("root"), str) and isinstance(d.get("classes"), list):
            out[os.path.realpath(d["root"])] = {"classes": len(d["classes"]), "videos": d.get("videos"),
                                                "seed": d.get("seed"), "source": src.ref()}
    return out


# ----------------------------------------------------------------------------- training runs
def loss_curve(doc: dict) -> Optional[Tuple[List[float], List[float]]]:
    """``(steps, losses)`` from a training record's per-step losses, in whatever shape it
    keeps them: a list of numbers, or a list of objects with ``loss`` (and ``step``)."""
    for key in ("curve", "loss_curve", "losses", "loss_history", "loss", "history", "steps", "log"):
        seq = doc.get(key)
        if not isinstance(seq, list) or not seq:
            continue
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in seq):
            return list(range(1, len(seq) + 1)), [float(x) for x in seq]
        if all(isinstance(x, dict) for x in seq):
            pts = [(number(x, "step", "global_step", "iteration"), number(x, "loss", "train_loss")) for x in seq]
            pts = [(s if s is not None else i + 1, lo) for i, (s, lo) in enumerate(pts) if lo is not None]
            if pts:
                return [p[0] for p in pts], [p[1] for p in pts]
    return None


def train_record(source: Source) -> dict:
    """The flat facts of a training run: framework, arch, steps, final loss, accuracy, ms/step."""
    d = source.doc
    curve = loss_curve(d)
    rec = _scalars(d)
    final_loss = number(rec, "final_loss", "last_loss", "loss")
    if final_loss is None and curve:
        final_loss = curve[1][-1]
    accuracy_keys = ("final_top1", "val_top1", "top1", "accuracy", "final_accuracy", "train_top1")
    accuracy_key = next((k for k in accuracy_keys if number(rec, k) is not None), None)
    accuracy = number(rec, accuracy_key) if accuracy_key else None
    if accuracy is not None and accuracy <= 1.0:
        accuracy *= 100.0
    ms_per_step = number(rec, "ms_per_step", "mean_step_ms", "train_ms_per_step", "step_ms", "step_ms_median")
    if ms_per_step is None:
        step = median_step_s(d)
        ms_per_step = 1000 * step if step is not None else None
    steps = number(rec, "steps_done", "steps", "total_steps", "global_step", "n_steps")
    if steps is None and curve:
        steps = curve[0][-1]
    return {"framework": framework_name(d.get("framework", "?")), "arch": d.get("arch"),
            "data_preset": d.get("data_preset"), "steps": steps, "epochs": number(rec, "epochs", "epoch"),
            "batch_size": number(rec, "batch_size", "global_batch_size") or (
                number(d["recipe"], "batch_size") if isinstance(d.get("recipe"), dict) else None),
            "final_loss": final_loss, "accuracy_pct": accuracy, "accuracy_field": accuracy_key,
            "ms_per_step": ms_per_step,
            "device": device_label(rec, d.get("hardware")), "dtype": d.get("dtype"), "curve": curve}
