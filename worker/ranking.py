"""How the candidates of the two signals become one ranked answer (pure: no Redis, no model).

A query or check gathers the CNN's best ``k`` by cosine and the ``k`` nearest PDQ hashes within
the collection's distance (worker/tasks.py ``_candidates``, from one process or merged from every
search group's), each candidate scored by every signal in use. :func:`ranked` orders them:

1. PDQ near-duplicates (a hash within ``pdq_max_distance``) first, nearest first: a hash that
   close is rarely wrong about re-encodes, resizes, brightness or an overlay, and the distance
   orders them better than the CNN does among images that all look alike to it;
2. then the rest by CNN score (near-duplicates by the CNN, at or above ``match_threshold``, come
   first by themselves);
3. ties by CNN score, then by id, so a merged answer equals one search over everything.

bench/quality.py measures this order per edit family against the CNN alone and PDQ alone
(docs/quality.md): with both signals a query does at least as well as the better of the two on
every family of the evaluation. It replaced an order by "trust" (near-duplicates by both signals,
then PDQ alone, then CNN alone, each by CNN score), which put a distractor the CNN found close
above the original PDQ found nearest (text overlay: 0.90 against PDQ's 1.00).
"""

from shared.matching import CNN, PDQ


def ranked(found: dict, signals: tuple[str, ...], settings: dict, k: int, min_score: float | None) -> list[dict]:
    """The best ``k`` matches from the candidates in ``found`` (``cnn`` and ``pdq`` lists of
    ``{"id", "score", "pdq_distance", "metadata"}``), each marked ``near_duplicate`` with the signals that
    say so (``matched_by``); scores rounded to 6 decimals only here, after every comparison.

    Candidates are the CNN's top k and the k nearest PDQ hashes, less those the CNN scores under
    ``min_score``; a PDQ candidate without a CNN score is a hash banked alone (no image, no vector)."""
    cnn = sorted(found["cnn"], key=lambda match: (-match["score"], match["id"]))[:k]
    pdq = sorted(found["pdq"], key=lambda match: (match["pdq_distance"], match["id"]))[:k]
    candidates = {match["id"]: match for match in cnn}
    for match in pdq:
        if CNN in signals and min_score is not None and match["score"] is not None and match["score"] < min_score:
            continue  # (a hash banked alone has no CNN score: min_score, a bound on CNN scores, passes it)
        candidates.setdefault(match["id"], match)
    matches = []
    for match in candidates.values():
        matched_by = [signal for signal, hit in (
            (CNN, match["score"] is not None and match["score"] >= settings["match_threshold"]),
            (PDQ, match["pdq_distance"] is not None and match["pdq_distance"] <= settings["pdq_max_distance"]),
        ) if hit]
        matches.append({"id": match["id"], "score": match["score"], "pdq_distance": match["pdq_distance"],
                        "near_duplicate": bool(matched_by), "matched_by": matched_by, "metadata": match["metadata"]})
    matches.sort(key=order)
    for match in matches[:k]:  # shown to 6 decimals
        if match["score"] is not None:
            match["score"] = round(match["score"], 6)
    return matches[:k]


def order(match: dict) -> tuple:
    """A match's place in an answer: PDQ near-duplicates by distance, then the rest by CNN score, then id."""
    by_pdq = PDQ in match["matched_by"]
    score = match["score"] if match["score"] is not None else float("-inf")
    return (0 if by_pdq else 1, match["pdq_distance"] if by_pdq else 0, -score, match["id"])
