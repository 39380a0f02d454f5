"""Choosing a collection's ``match_threshold`` from labelled examples.

Input: scored pairs, each labelled whether it really is a near-duplicate (``same``). A
threshold ``t`` calls every pair scoring at least ``t`` a near-duplicate; its precision is
the share of those that are, its recall the share of all true pairs it catches. The
proposal is the lowest threshold whose precision reaches the target: the most recall the
target allows. bench/quality.py writes such pairs (``--pairs-out``); ``lookalike
calibrate`` reads them.
"""

import numpy as np


def _cuts(scores: np.ndarray, same: np.ndarray, positives: int | None):
    """Per distinct score, highest first: (threshold, precision, recall) of cutting there."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order].astype(bool)
    true_positives = np.cumsum(sorted_same)
    called = np.arange(1, len(scores) + 1)
    last_of_each_score = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # ties are called together
    total = int(sorted_same.sum()) if positives is None else positives
    for index in np.flatnonzero(last_of_each_score):
        yield (float(sorted_scores[index]), float(true_positives[index] / called[index]),
               float(true_positives[index] / total) if total else 0.0)


def propose_threshold(scores, same, target_precision: float, positives: int | None = None) -> dict | None:
    """The lowest threshold with precision >= ``target_precision``; None when none reaches it.

    ``positives``: how many true near-duplicates exist in all (default: the pairs labelled
    same); recall is measured against it.
    """
    best = None
    for threshold, precision, recall in _cuts(np.asarray(scores, float), np.asarray(same), positives):
        if precision >= target_precision:
            best = {"threshold": round(threshold, 6), "precision": round(precision, 4), "recall": round(recall, 4)}
    return best


def precision_recall_curve(scores, same, positives: int | None = None, points: int = 20) -> list[dict]:
    """About ``points`` (threshold, precision, recall) rows spread over the distinct thresholds."""
    cuts = list(_cuts(np.asarray(scores, float), np.asarray(same), positives))
    if not cuts:
        return []
    chosen = sorted(set(np.linspace(0, len(cuts) - 1, min(points, len(cuts))).round().astype(int)))
    return [{"threshold": round(cuts[i][0], 4), "precision": round(cuts[i][1], 4), "recall": round(cuts[i][2], 4)}
            for i in chosen]
