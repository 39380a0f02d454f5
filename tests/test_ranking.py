"""worker/ranking.py: how the two signals' candidates become one answer (pure; bench/quality.py measures it)."""

from worker.ranking import ranked

SETTINGS = {"match_threshold": 0.9, "pdq_max_distance": 31}


def candidate(image_id: str, score: float | None, distance: int | None) -> dict:
    return {"id": image_id, "score": score, "pdq_distance": distance, "metadata": {}}


def test_pdq_near_duplicates_come_first_nearest_first_then_the_cnn_order():
    """A distractor the CNN finds closest (and near) ranks below the originals PDQ finds near, nearest first --
    the order by "trust" put the one near by both signals first, by CNN score, and so ranked ``far-hash``
    above ``original`` and the CNN-only ``distractor`` above neither of them only by luck of scores."""
    found = {"cnn": [candidate("distractor", 0.99, 60), candidate("far-hash", 0.97, 20), candidate("original", 0.95, 8),
                     candidate("other", 0.5, 90)],
             "pdq": [candidate("original", 0.95, 8), candidate("far-hash", 0.97, 20), candidate("pdq-only", 0.2, 30)]}
    matches = ranked(found, ("cnn", "pdq"), SETTINGS, k=10, min_score=None)
    assert [match["id"] for match in matches] == ["original", "far-hash", "pdq-only", "distractor", "other"]
    assert [match["matched_by"] for match in matches] == [["cnn", "pdq"], ["cnn", "pdq"], ["pdq"], ["cnn"], []]
    assert [match["near_duplicate"] for match in matches] == [True, True, True, True, False]


def test_one_signal_alone_keeps_its_own_order_and_ties_go_by_id():
    cnn = {"cnn": [candidate("b", 0.8, None), candidate("a", 0.8, None), candidate("c", 0.95, None)], "pdq": []}
    assert [m["id"] for m in ranked(cnn, ("cnn",), SETTINGS, k=3, min_score=None)] == ["c", "a", "b"]
    pdq = {"cnn": [], "pdq": [candidate("y", None, 12), candidate("x", None, 12), candidate("z", None, 3)]}
    assert [m["id"] for m in ranked(pdq, ("pdq",), SETTINGS, k=3, min_score=None)] == ["z", "x", "y"]


def test_min_score_leaves_out_low_cnn_scores_not_hashes_banked_alone_and_scores_are_rounded_last():
    """min_score bounds CNN scores: a PDQ candidate the CNN scores under it is left out; a hash banked without
    an image has no CNN score and is kept."""
    found = {"cnn": [candidate("kept", 0.7000004, 40)],
             "pdq": [candidate("low", 0.1, 5), candidate("banked-hash", None, 2)]}
    matches = ranked(found, ("cnn", "pdq"), SETTINGS, k=5, min_score=0.5)
    assert [(m["id"], m["score"], m["matched_by"]) for m in matches] == [("banked-hash", None, ["pdq"]),
                                                                        ("kept", 0.7, [])]
