"""Proposing a collection's ``match_threshold`` from labelled pairs (``lookalike calibrate``), in plain Python.

The same rule as the server's shared/calibration.py (which bench/quality.py uses, with NumPy): a
threshold ``t`` calls every pair scoring at least ``t`` a near-duplicate; the proposal is the lowest
threshold whose precision reaches the target, the most recall the target allows. Kept here so that
the client needs no NumPy; tests/test_client_package.py checks that both give the same answers.
"""


def propose_threshold(scores, same, target_precision: float, positives: int | None = None) -> dict | None:
    """The lowest threshold with precision >= ``target_precision``; None when none reaches it.

    ``positives``: how many true near-duplicates exist in all (default: the pairs labelled
    same); recall is measured against it. Tied scores are called together.
    """
    pairs = sorted(zip((float(score) for score in scores), (bool(label) for label in same)),
                   key=lambda pair: -pair[0])  # highest first; sorted() is stable
    total = sum(label for _, label in pairs) if positives is None else positives
    best, true_positives = None, 0
    for position, (score, label) in enumerate(pairs):
        true_positives += label
        if position + 1 < len(pairs) and pairs[position + 1][0] == score:
            continue  # not the last of its score
        precision = true_positives / (position + 1)
        recall = true_positives / total if total else 0.0
        if precision >= target_precision:
            best = {"threshold": round(score, 6), "precision": round(precision, 4), "recall": round(recall, 4)}
    return best
