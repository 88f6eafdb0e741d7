"""The Market-1501 protocol on a hand-made case: same-camera positives, junk and distractors."""

from __future__ import annotations

import numpy as np
import pytest

from kdtrack.formats.market1501 import ReidCrop
from kdtrack.metrics.market1501 import evaluate_market1501, evaluate_market1501_crops
from kdtrack.metrics.retrieval import evaluate_retrieval


def _unit(degrees) -> np.ndarray:
    """2-D features at these angles: cosine similarity falls with the angle between them."""
    a = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# Queries: q1 = pid 1 seen by camera 1 (at 0 deg), q2 = pid 2 seen by camera 2 (at 60 deg).
QUERY = dict(features=_unit([0, 60]), pids=[1, 2], cams=[1, 2])
# The 6 gallery crops and their angles:
#   g0 pid 1  cam 1   0 deg  same id + same camera as q1: removed for q1 (a negative for q2)
#   g1 pid 1  cam 2  20 deg  q1's only cross-camera positive
#   g2 pid 2  cam 1  90 deg  q2's only cross-camera positive
#   g3 pid 0  cam 2  10 deg  distractor: kept, a negative for everyone
#   g4 pid -1 cam 3   5 deg  junk: removed for every query
#   g5 pid 2  cam 2  30 deg  same id + same camera as q2: removed for q2 (a negative for q1)
GALLERY = dict(features=_unit([0, 20, 90, 10, 5, 30]), pids=[1, 1, 2, 0, -1, 2], cams=[1, 2, 1, 2, 3, 2])
# q1 ranks g3 (10 deg, neg), g1 (20, POS), g5 (30, neg), g2 (90, neg)  [g0 and g4 removed]
#    -> AP = precision at the positive = 1/2, first positive at rank 2
# q2 ranks g2 (30 deg away, POS), g1 (40, neg), g3 (50, neg), g0 (60, neg)  [g5 and g4 removed]
#    -> AP = 1, first positive at rank 1
# mAP = (0.5 + 1) / 2 = 0.75; rank-1 = 1/2; rank-5 = rank-10 = 1.
EXPECTED = {"mAP": 0.75, "rank1": 0.5, "rank5": 1.0, "rank10": 1.0, "queries": 2, "skipped": 0}


def _run(**changes):
    g = {**GALLERY, **changes}
    return evaluate_market1501(QUERY["features"], QUERY["pids"], QUERY["cams"], g["features"], g["pids"], g["cams"])


def test_hand_made_six_crop_gallery():
    result = _run()
    assert result.summary() == pytest.approx(EXPECTED)
    assert result.average_precision.tolist() == pytest.approx([0.5, 1.0])
    assert result.first_positive_rank.tolist() == [2, 1]
    assert result.num_candidates.tolist() == [4, 4]  # 6 - junk - one same-camera positive each


def test_each_rule_matters():
    q, g = QUERY, GALLERY
    # junk kept as an ordinary negative: g4 (5 deg) ranks first for q1 -> AP(q1) = 1/3
    plain = evaluate_retrieval(q["features"], q["pids"], g["features"], np.asarray(g["pids"]),
                               junk_rule="same_camera_same_id", query_groups=q["cams"], gallery_groups=g["cams"])
    assert plain.average_precision[0] == pytest.approx(1 / 3)
    # without the same-camera rule g0 (0 deg) is q1's first hit: AP(q1) = (1/1 + 2/3) / 2 = 5/6
    assert _run(cams=[4, 2, 1, 2, 3, 2]).average_precision[0] == pytest.approx(5 / 6)
    # distractors stay: dropping g3 (pid 0 -> junk) would lift q1 to AP 1
    assert _run(pids=[1, 1, 2, -1, -1, 2]).average_precision[0] == pytest.approx(1.0)


def test_query_without_cross_camera_positive_is_skipped():
    # g1 moved to camera 1: q1 has no positive left
    result = _run(cams=[1, 1, 1, 2, 3, 2])
    assert result.summary()["queries"] == 1 and result.summary()["skipped"] == 1
    assert result.summary()["mAP"] == pytest.approx(1.0)


def test_crop_records_and_bad_queries():
    def crops(pids, cams):
        return [ReidCrop(f"{i}.jpg", p, c, 1, i, 1) for i, (p, c) in enumerate(zip(pids, cams))]

    result = evaluate_market1501_crops(crops(QUERY["pids"], QUERY["cams"]), crops(GALLERY["pids"], GALLERY["cams"]),
                                       QUERY["features"], GALLERY["features"])
    assert result.summary() == pytest.approx(EXPECTED)
    with pytest.raises(ValueError, match="identities"):
        evaluate_market1501(QUERY["features"], [1, 0], QUERY["cams"], GALLERY["features"], GALLERY["pids"],
                            GALLERY["cams"])
