"""Retrieval mAP / CMC: hand-computed rankings, sklearn agreement, junk rules, empty inputs, chance level."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import kdtrack.metrics.retrieval as retrieval
from kdtrack.metrics.retrieval import (
    evaluate_leave_one_out,
    evaluate_retrieval,
    expected_random_average_precision,
    expected_random_hit_rate,
    junk_mask,
    l2_normalize,
)


def unit(cosines) -> np.ndarray:
    """2-d unit vectors whose cosine with (1, 0) is each value."""
    c = np.asarray(cosines, float)
    return np.stack([c, np.sqrt(1 - c**2)], 1)


def test_hand_computed_ranking():
    # gallery cosines with (1, 0): 0.9, 0.8, 0.6, 0.3; with (-1, 0) the order is reversed
    gallery = unit([0.9, 0.8, 0.6, 0.3])
    gallery_ids = np.array([3, 1, 2, 1])
    queries = np.array([[1.0, 0.0], [-1.0, 0.0]])
    result = evaluate_retrieval(queries, np.array([1, 3]), gallery, gallery_ids, junk_rule="none", ranks=(1, 2, 5))
    # query 1 ranks ids 3 1 2 1 -> F T F T: precisions at the positives 1/2, 2/4 -> AP 0.5, first hit rank 2
    # query 3 ranks ids 1 2 1 3 -> F F F T: precision 1/4 -> AP 0.25, first hit rank 4
    np.testing.assert_allclose(result.average_precision, [0.5, 0.25])
    np.testing.assert_array_equal(result.first_positive_rank, [2, 4])
    np.testing.assert_array_equal(result.num_positives, [2, 1])
    np.testing.assert_array_equal(result.num_candidates, [4, 4])
    assert result.summary() == {"mAP": 0.375, "rank1": 0.0, "rank2": 0.5, "rank5": 1.0, "queries": 2, "skipped": 0}


def test_positives_with_and_across_a_change_of_tag_hand_computed():
    # query id 1 tagged "front"; gallery cosines 0.9, 0.8, 0.6, 0.3 with ids 1, 2, 1, 1 tagged front, back, back, front
    gallery = unit([0.9, 0.8, 0.6, 0.3])
    ids, tags = np.array([1, 2, 1, 1]), np.array(["front", "back", "back", "front"])
    query = np.array([[1.0, 0.0]])

    def run(positives):
        return evaluate_retrieval(query, [1], gallery, ids, junk_rule="none", positives=positives,
                                  query_tags=np.array(["front"]), gallery_tags=tags, ranks=(1, 2))

    # all: ranks 1 2 1 1 -> T F T T: precisions 1, 2/3, 3/4 -> AP (1 + 2/3 + 3/4) / 3
    assert run("all").average_precision[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # same_tag: the back-tagged id-1 entry is junk -> T F T over 3 kept: precisions 1, 2/3 -> AP 5/6
    same = run("same_tag")
    assert same.average_precision[0] == pytest.approx(5 / 6)
    assert (same.num_positives[0], same.num_candidates[0], same.first_positive_rank[0]) == (2, 3, 1)
    # other_tag: both front id-1 entries are junk (the id-2 negative stays) -> F T: AP 1/2, first hit at rank 2
    other = run("other_tag")
    assert other.average_precision[0] == pytest.approx(0.5)
    assert (other.num_positives[0], other.num_candidates[0], other.first_positive_rank[0]) == (1, 2, 2)
    assert average_precision_score([0, 1], [0.8, 0.6]) == pytest.approx(0.5)
    # leave-one-out passes the tags through; a filter without tags is refused
    loo = evaluate_leave_one_out(np.vstack([query, gallery]), np.r_[1, ids], junk_rule="none",
                                 positives="other_tag", tags=np.r_[["front"], tags])
    assert loo.average_precision[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs query_tags"):
        evaluate_retrieval(query, [1], gallery, ids, junk_rule="none", positives="same_tag")
    with pytest.raises(ValueError, match="positives"):
        evaluate_retrieval(query, [1], gallery, ids, junk_rule="none", positives="both")


def test_tied_scores_are_grouped_as_sklearn_does():
    # two gallery entries with the same score, one positive: one threshold, precision 1/2 -> AP 0.5
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # cosines 1, 1, 0 (features are normalised)
    result = evaluate_retrieval(np.array([[1.0, 0.0]]), [7], gallery, [7, 8, 9], junk_rule="none")
    assert result.average_precision[0] == pytest.approx(0.5)
    assert average_precision_score([1, 0, 0], [1.0, 1.0, 0.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("quantize", [False, True])
def test_agrees_with_sklearn_on_random_data(quantize: bool):
    rng = np.random.default_rng(0)
    nq, ng, d = 40, 150, 6
    qf, gf = rng.normal(size=(nq, d)), rng.normal(size=(ng, d))
    if quantize:  # many tied scores
        qf, gf = np.round(qf), np.round(gf)
        qf[np.abs(qf).sum(1) == 0, 0] = 1.0
    qid, gid = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    qcam, gcam = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    result = evaluate_retrieval(qf, qid, gf, gid, junk_rule="same_camera_same_id",
                                query_groups=qcam, gallery_groups=gcam)
    scores = l2_normalize(qf) @ l2_normalize(gf).T
    for i in range(nq):
        keep = ~((gid == qid[i]) & (gcam == qcam[i]))
        y_true = gid[keep] == qid[i]
        if not y_true.any():
            assert math.isnan(result.average_precision[i]) and result.first_positive_rank[i] == 0
            continue
        assert result.average_precision[i] == pytest.approx(average_precision_score(y_true, scores[i, keep]))
        assert result.num_candidates[i] == keep.sum() and result.num_positives[i] == y_true.sum()


def test_chunking_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(1)
    f, ids, groups = rng.normal(size=(50, 4)), rng.integers(0, 5, 50), rng.integers(0, 2, 50)
    whole = evaluate_leave_one_out(f, ids, junk_rule="cross_camera", groups=groups)
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 7 * 50)  # 7 queries per chunk
    chunked = evaluate_leave_one_out(f, ids, junk_rule="cross_camera", groups=groups)
    np.testing.assert_array_equal(whole.average_precision, chunked.average_precision)
    np.testing.assert_array_equal(whole.first_positive_rank, chunked.first_positive_rank)


# six entries: (id, group, time)
#   0: 1, 0, 0     1: 1, 0, 5     2: 1, 0, 15
#   3: 2, 0, 1     4: 1, 1, 0     5: 2, 1, 20
IDS = np.array([1, 1, 1, 2, 1, 2])
GROUPS = np.array([0, 0, 0, 0, 1, 1])
TIMES = np.array([0, 5, 15, 1, 0, 20])


@pytest.mark.parametrize("rule, junk_of_query0, positives, candidates, skipped", [
    # none: only the query itself goes; query 0 keeps 1..5, positives 1, 2, 4
    ("none", [0, 0, 0, 0, 0, 0], [3, 3, 3, 1, 3, 1], [5] * 6, 0),
    # Market-1501: same id and same camera removed; query 0 keeps 3, 4, 5, positive 4
    ("same_camera_same_id", [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 3, 1], [3, 3, 3, 5, 5, 5], 0),
    # cross-camera: the query's whole camera removed; query 0 keeps 4, 5, positive 4
    ("cross_camera", [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 3, 1], [2, 2, 2, 2, 4, 4], 0),
    # video, gap 10: other sequence removed, same id closer than 10 frames removed;
    # query 0 keeps 2 (dt 15, positive) and 3; query 1 (t 5) keeps 2 (dt 10, positive) and 3;
    # query 4 and query 5 (group 1) have no same-id partner -> skipped
    ("min_time_gap", [1, 1, 0, 0, 1, 1], [1, 1, 2, 0, 0, 0], [2, 2, 3, 3, 1, 1], 3),
])
def test_junk_rules_on_six_entries(rule, junk_of_query0, positives, candidates, skipped):
    mask = junk_mask(rule, IDS, IDS, query_groups=GROUPS, gallery_groups=GROUPS, query_times=TIMES,
                     gallery_times=TIMES, min_gap=10)
    np.testing.assert_array_equal(mask[0], np.asarray(junk_of_query0, bool))
    features = np.eye(6)  # every pair is tied at 0: only the counts matter here
    result = evaluate_leave_one_out(features, IDS, junk_rule=rule, groups=GROUPS, times=TIMES, min_gap=10)
    np.testing.assert_array_equal(result.num_positives, positives)
    np.testing.assert_array_equal(result.num_candidates, candidates)
    assert result.summary()["skipped"] == skipped


def test_query_itself_is_always_excluded():
    f = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = evaluate_leave_one_out(f, [1, 1, 2], junk_rule="none")
    # query 0: gallery {1 (same id, cos 1), 2 (cos 0)} -> AP 1; query 2 has no other id-2 entry -> skipped
    np.testing.assert_allclose(result.average_precision[:2], [1.0, 1.0])
    assert math.isnan(result.average_precision[2])
    assert result.summary()["queries"] == 2 and result.summary()["skipped"] == 1


def test_empty_and_no_positive_queries():
    empty = evaluate_retrieval(np.zeros((0, 4)), [], np.ones((3, 4)), [1, 2, 3], junk_rule="none").summary()
    assert empty["queries"] == 0 and empty["skipped"] == 0 and math.isnan(empty["mAP"])
    no_gallery = evaluate_retrieval(np.ones((2, 4)), [1, 2], np.zeros((0, 4)), [], junk_rule="none").summary()
    assert no_gallery["queries"] == 0 and no_gallery["skipped"] == 2 and math.isnan(no_gallery["rank1"])
    no_pos = evaluate_retrieval(np.eye(2), [1, 2], np.eye(2), [3, 4], junk_rule="none")
    assert no_pos.summary()["skipped"] == 2 and math.isnan(no_pos.summary()["mAP"])
    assert no_pos.chance_summary()["queries"] == 0
    with pytest.raises(ValueError, match="junk rule"):
        evaluate_retrieval(np.eye(2), [1, 2], np.eye(2), [1, 2], junk_rule="bogus")
    with pytest.raises(ValueError, match="groups"):
        evaluate_retrieval(np.eye(2), [1, 2], np.eye(2), [1, 2], junk_rule="cross_camera")
    with pytest.raises(ValueError, match="finite"):
        evaluate_retrieval(np.array([[np.nan, 1.0]]), [1], np.eye(2), [1, 2], junk_rule="none")


def test_chance_level():
    # N = 2, P = 1: AP 1 or 1/2 -> 3/4. N = 3, P = 2: positives at {1,2}: 1, {1,3}: 5/6, {2,3}: 7/12 -> 29/36
    np.testing.assert_allclose(expected_random_average_precision([1, 2, 1], [2, 3, 1]), [0.75, 29 / 36, 1.0])
    # one positive in 3, top-2: 2/3; P = N: always a hit
    np.testing.assert_allclose(expected_random_hit_rate([1, 4], [3, 4], 2), [2 / 3, 1.0])
    # and every placement of P = 3 positives among N = 8 ranks (56 rankings, equally likely), by sklearn
    scores = np.arange(8, 0, -1, dtype=float)
    exact = np.mean([average_precision_score(np.isin(np.arange(8), pos), scores)
                     for pos in itertools.combinations(range(8), 3)])
    assert expected_random_average_precision([3], [8])[0] == pytest.approx(exact)
