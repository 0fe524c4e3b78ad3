"""Accuracy from saved per-video scores, and agreement between two runs; numpy only.

Kept apart from inference (as mmaction2 keeps ``report_accuracy.py`` apart from
``test.py --dump``): ``harness.evaluate`` calls these on the scores it saved, and
``harness.report`` can call them again on the same files.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([label in row for row, label in zip(topk, labels)]))


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present of each class's top-1 recall (mmaction2's metric)."""
    if len(labels) == 0:
        return float("nan")
    pred = scores.argmax(axis=1)
    recalls = [float(np.mean(pred[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


def accuracy_summary(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    labels = np.asarray(labels)
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5),
            "mean_class_accuracy": mean_class_accuracy(scores, labels)}


def agreement(ids_a: Sequence[str], scores_a: np.ndarray, ids_b: Sequence[str], scores_b: np.ndarray,
              tie_margin: float = 0.0) -> Dict[str, object]:
    """How two runs' video scores agree over their common videos.

    ``tie_margin``: a video whose top-1 differs but whose top two scores lie within this
    margin in either run is a near-tie (counted apart: float noise may flip it).
    """
    index_b = {vid: i for i, vid in enumerate(ids_b)}
    common = [(i, index_b[vid]) for i, vid in enumerate(ids_a) if vid in index_b]
    if not common:
        return {"n_common": 0}
    ia, ib = map(np.array, zip(*common))
    a, b = scores_a[ia].astype(np.float64), scores_b[ib].astype(np.float64)
    top1_a, top1_b = a.argmax(1), b.argmax(1)
    k = min(5, a.shape[1])
    top5_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
    top5_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
    differ: List[Dict[str, object]] = []
    near_ties = 0
    for j in np.flatnonzero(top1_a != top1_b):
        gap_a = np.diff(np.sort(a[j])[-2:])[0]
        gap_b = np.diff(np.sort(b[j])[-2:])[0]
        tie = bool(min(gap_a, gap_b) <= tie_margin)
        near_ties += tie
        differ.append({"video": ids_a[ia[j]], "top1_a": int(top1_a[j]), "top1_b": int(top1_b[j]),
                       "top2_gap_a": float(gap_a), "top2_gap_b": float(gap_b), "near_tie": tie})
    delta = np.abs(a - b)
    return {
        "n_common": len(common),
        "top1_agreement": float(np.mean(top1_a == top1_b)),
        "top5_set_agreement": float(np.mean([set(x) == set(y) for x, y in zip(top5_a, top5_b)])),
        "max_abs_delta": float(delta.max()),
        "mean_abs_delta": float(delta.mean()),
        "n_top1_differ": len(differ),
        "n_near_ties": near_ties,
        "top1_differ": differ,
    }
