"""Person-search protocol on hand-built galleries; every AP is worked out in the comments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kdtrack.config import EvalConfig
from kdtrack.metrics.person_search import (
    GalleryImage,
    Query,
    evaluate_person_search,
    evaluate_query,
    load_person_search_npz,
    queries_from_manifest,
    save_person_search_npz,
    small_box_iou_threshold,
)

CFG = EvalConfig()


def unit(angle_deg: float) -> list[float]:
    """2-D unit vector; cosine similarity to [1, 0] is cos(angle)."""
    a = np.deg2rad(angle_deg)
    return [float(np.cos(a)), float(np.sin(a))]


def image(dets, camera=-1) -> GalleryImage:
    """``dets``: list of (box_xyxy, score, embedding)."""
    if not dets:
        return GalleryImage(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), camera)
    boxes, scores, embs = zip(*dets)
    return GalleryImage(np.asarray(boxes, float), np.asarray(scores, float), np.asarray(embs, float), camera)


PERSON = [0, 0, 40, 100]  # w 40, h 100: 4000 / (50 * 110) = 0.727 -> threshold min(0.5, 0.727) = 0.5
ELSEWHERE = [200, 0, 240, 100]


def test_small_box_iou_threshold():
    # w 10, h 20: 200 / (20 * 30) = 0.3333 < 0.5
    assert small_box_iou_threshold(np.array([0, 0, 10, 20]), 0.5, 10) == pytest.approx(1 / 3)
    assert small_box_iou_threshold(np.array(PERSON), 0.5, 10) == 0.5


def test_recall_factor_score_threshold_and_first_match_by_similarity():
    gallery = {
        # holds the person; d_b (sim 1.0) is elsewhere, d_a (sim 0.6) is on the person -> d_a is TP
        "g1": image([(PERSON, 0.9, [0.6, 0.8]), (ELSEWHERE, 0.9, [1.0, 0.0])]),
        # no person: d_c sim 0.8 (FP); d_d has score 0.3 < 0.5 and is dropped although sim 1.0
        "g2": image([(PERSON, 0.9, [0.8, 0.6]), (PERSON, 0.3, [1.0, 0.0])]),
        # holds the person but nothing was detected: present, never found
        "g3": image([]),
    }
    q = Query(embedding=np.array([2.0, 0.0]), pid=7, image_id="q", gt_boxes_xyxy={"g1": PERSON, "g3": PERSON})
    r = evaluate_query(q, gallery, gallery_size=None, cfg=CFG)
    # pooled ranking: 1.0 F, 0.8 F, 0.6 T -> sklearn AP = precision at the one positive = 1/3
    # recall factor found/present = 1/2 -> AP = 1/6
    assert (r["found"], r["present"]) == (1, 2)
    assert r["AP"] == pytest.approx(1 / 6)
    assert (r["top1"], r["top5"], r["top10"]) == (0.0, 1.0, 1.0)


def test_only_the_most_similar_overlapping_detection_is_positive():
    gallery = {
        # both overlap the person: d1 IoU 0.6 ([0,0,40,60]: 2400/4000), sim 0.9; d2 IoU 1.0, sim 0.5
        "g1": image([([0, 0, 40, 60], 0.9, unit(np.degrees(np.arccos(0.9)))),
                     (PERSON, 0.9, unit(60.0))]),
    }
    q = Query(embedding=np.array([1.0, 0.0]), pid=1, image_id="q", gt_boxes_xyxy={"g1": PERSON})
    r = evaluate_query(q, gallery, gallery_size=None, cfg=CFG)
    # ranking 0.9 T, 0.5 F (the better box is a duplicate, not a second hit) -> AP 1 * 1/1, top-1 hit
    assert r["AP"] == pytest.approx(1.0) and r["top1"] == 1.0
    # if the IoU-1.0 box were the positive instead, AP would be 1/2: the rule is by similarity


def test_small_box_rule_decides_true_positive():
    small = [0, 0, 10, 20]  # threshold 1/3 (see above)
    det = [0, 0, 10, 8]  # IoU with small: 80 / 200 = 0.4 >= 1/3 -> TP
    q = Query(embedding=np.array([1.0, 0.0]), pid=1, image_id="q", gt_boxes_xyxy={"g1": small})
    r = evaluate_query(q, {"g1": image([(det, 0.9, [1.0, 0.0])])}, gallery_size=None, cfg=CFG)
    assert (r["found"], r["AP"]) == (1, 1.0)
    # the same IoU 0.4 on a large person (threshold 0.5): [0,0,100,200] vs [0,0,100,80] = 0.4 -> miss, AP 0
    big = Query(embedding=np.array([1.0, 0.0]), pid=1, image_id="q", gt_boxes_xyxy={"g1": [0, 0, 100, 200]})
    r = evaluate_query(big, {"g1": image([([0, 0, 100, 80], 0.9, [1.0, 0.0])])}, gallery_size=None, cfg=CFG)
    assert (r["found"], r["AP"], r["top1"]) == (0, 0.0, 0.0)


def _three_hit_gallery():
    # sims (cos of angle): g1 d 1.0 T; g2 d 0.9 F; g3 d 0.8 T; g4 d 0.7 F; g5 holds the person, nothing detected
    return {
        "g1": image([(PERSON, 0.9, unit(0.0))], camera=1),
        "g2": image([(ELSEWHERE, 0.9, unit(np.degrees(np.arccos(0.9))))], camera=2),
        "g3": image([(PERSON, 0.9, unit(np.degrees(np.arccos(0.8))))], camera=2),
        "g4": image([(ELSEWHERE, 0.9, unit(np.degrees(np.arccos(0.7))))], camera=1),
        "g5": image([], camera=2),
        "q_img": image([(PERSON, 0.9, unit(0.0))], camera=1),  # the query's own frame
    }


def test_pooled_ap_with_two_positives_and_recall():
    gallery = _three_hit_gallery()
    q = Query(embedding=np.array(unit(0.0)), pid=3, image_id="q_img", camera=1,
              gt_boxes_xyxy={"g1": PERSON, "g3": PERSON, "g5": PERSON, "q_img": PERSON})
    r = evaluate_query(q, gallery, gallery_size=None, cfg=CFG)
    # all-frames gallery excludes q_img. ranking T F T F: AP = (1/1 + 2/3) / 2 = 0.8333;
    # present 3 (g1, g3, g5), found 2 -> AP = 0.8333 * 2/3 = 0.5556
    assert (r["found"], r["present"]) == (2, 3)
    assert r["AP"] == pytest.approx((1 + 2 / 3) / 2 * 2 / 3)
    assert r["top1"] == 1.0
    # cross-camera only (query camera 1): g1 and g4 drop out; ranking 0.9 F, 0.8 T -> AP 1/2,
    # present g3, g5 = 2, found 1 -> AP = 1/4, top-1 miss
    cross = evaluate_query(q, gallery, gallery_size=None, cfg=replace(CFG, ps_cross_camera_only=True))
    assert (cross["found"], cross["present"]) == (1, 2)
    assert cross["AP"] == pytest.approx(0.25) and cross["top1"] == 0.0


def test_gallery_lists_by_size_and_map_over_queries():
    gallery = _three_hit_gallery()
    gt = {"g1": PERSON, "g3": PERSON}
    q1 = Query(embedding=np.array(unit(0.0)), pid=3, image_id="q_img", gt_boxes_xyxy=gt,
               galleries={2: ["g2", "g3"], 4: ["g1", "g2", "g3", "g4"]})
    # size 2: ranking 0.9 F, 0.8 T -> AP 1/2, recall 1/1 -> 0.5, top-1 0
    # size 4: ranking T F T F, present 2 found 2 -> AP (1 + 2/3)/2 = 0.8333, top-1 1
    q2 = Query(embedding=np.array(unit(0.0)), pid=4, image_id="q_img", gt_boxes_xyxy={"g2": ELSEWHERE},
               galleries={2: ["g2", "g3"], 4: ["g1", "g2", "g3", "g4"]})
    # q2 size 2: g2's det (sim 0.9) is the only positive and ranks first -> AP 1, top-1 1
    r2 = evaluate_person_search([q1, q2], gallery, gallery_size=2, cfg=CFG)
    assert r2["mAP"] == pytest.approx((0.5 + 1.0) / 2) and r2["top1"] == pytest.approx(0.5)
    assert r2["num_queries"] == 2 and r2["gallery_size"] == 2
    # q2 size 4: ranking 1.0 F, 0.9 T -> AP 1/2, top-1 0
    r4 = evaluate_person_search([q1, q2], gallery, gallery_size=4, cfg=CFG)
    assert r4["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert r4["top1"] == pytest.approx(0.5) and r4["top5"] == 1.0
    with pytest.raises(ValueError, match="no gallery list of size 100"):
        evaluate_person_search([q1], gallery, gallery_size=100, cfg=CFG)


def test_bad_inputs_raise():
    gallery = {"g1": image([(PERSON, 0.9, [0.0, 0.0])])}
    q = Query(embedding=np.array([1.0, 0.0]), pid=1, image_id="q", gt_boxes_xyxy={"g1": PERSON})
    with pytest.raises(ValueError, match="gallery image g1"):
        evaluate_query(q, gallery, gallery_size=None, cfg=CFG)  # zero embedding: no cosine
    absent = Query(embedding=np.array([1.0, 0.0]), pid=9, image_id="q")
    with pytest.raises(ValueError, match="pid 9"):
        evaluate_query(absent, {"g1": image([])}, gallery_size=None, cfg=CFG)
    with pytest.raises(ValueError, match="no queries"):
        evaluate_person_search([], gallery)


def test_npz_round_trip_gives_the_same_numbers(tmp_path):
    gallery = _three_hit_gallery()
    q1 = Query(embedding=np.array(unit(0.0)), pid=3, image_id="q_img", camera=1,
               gt_boxes_xyxy={"g1": PERSON, "g3": PERSON, "g5": PERSON},
               galleries={2: ["g2", "g3"], 4: ["g1", "g2", "g3", "g4"]})
    path = save_person_search_npz(tmp_path / "ps.npz", [q1], gallery)
    queries, loaded = load_person_search_npz(path)
    assert set(loaded) == set(gallery) and loaded["g5"].boxes_xyxy.shape == (0, 4)
    assert queries[0].galleries == {2: ["g2", "g3"], 4: ["g1", "g2", "g3", "g4"]}
    for size in (None, 2, 4):
        want = evaluate_person_search([q1], gallery, gallery_size=size)
        got = evaluate_person_search(queries, loaded, gallery_size=size)
        assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6) and got["top1"] == want["top1"]
    np.savez(tmp_path / "bad.npz", det_scores=np.zeros(1))
    with pytest.raises(ValueError, match="bad.npz: missing arrays"):
        load_person_search_npz(tmp_path / "bad.npz")


def test_queries_from_a_person_search_manifest():
    from kdtrack.formats.person_search import PersonSearchImage, PersonSearchManifest, PersonSearchQuery

    def img(name, camera, split, boxes_xywh, pids):
        return PersonSearchImage(name, 640, 480, camera, split, np.asarray(boxes_xywh, float), pids)

    manifest = PersonSearchManifest(
        name="toy", protocol="prw",
        images=[
            img("q.jpg", 1, "test", [[0, 0, 40, 100]], [5]),
            img("a.jpg", 2, "test", [[10, 10, 20, 50], [100, 0, 30, 60]], [5, -1]),
            img("b.jpg", 1, "test", [[0, 0, 10, 10]], [6]),
            img("t.jpg", 3, "train", [[0, 0, 40, 100]], [5]),  # training image: never a gallery gt
        ],
        queries=[PersonSearchQuery(5, "q.jpg", np.array([0, 0, 40, 100]), galleries={"2": ["a.jpg", "b.jpg"]})],
    )
    (q,) = queries_from_manifest(manifest, [np.array([1.0, 0.0])])
    # pid 5 appears in q.jpg (the query itself, excluded), a.jpg (test) and t.jpg (train, excluded)
    assert set(q.gt_boxes_xyxy) == {"a.jpg"}
    np.testing.assert_allclose(q.gt_boxes_xyxy["a.jpg"], [10, 10, 30, 60])  # xywh -> xyxy
    assert q.galleries == {2: ["a.jpg", "b.jpg"]} and q.camera == 1 and q.image_id == "q.jpg"
    with pytest.raises(ValueError, match="toy: 2 embeddings for 1 queries"):
        queries_from_manifest(manifest, [np.zeros(2), np.zeros(2)])
