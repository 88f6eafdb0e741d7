"""Tracker behaviour on hand-built 2-7 frame scenes (expectations worked out in comments)."""

from __future__ import annotations

import numpy as np
import pytest

from kdtrack.tracker import ActiveTracks, Tracker, TrackerConfig, filter_output

D = 8  # embedding size of the hand-built scenes
E = np.eye(D)  # person k has embedding E[k]: cosine distance 0 to itself, 1 to others
BOX_A = [100.0, 100.0, 140.0, 200.0]  # 40 x 100 px
BOX_B = [300.0, 100.0, 340.0, 200.0]
SCORE = 0.9


def frame(*people):
    """``people`` = (box, person index) pairs -> the three update arguments."""
    if not people:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, D))
    boxes = np.array([p[0] for p in people], dtype=np.float64)
    return boxes, np.full(len(people), SCORE), np.stack([E[p[1]] for p in people])


def shift(box, dx):
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_ids_carry_over():
    tracker = Tracker(TrackerConfig())
    # Frame 1 activates both at once (ids in detection order); they then drift 2 px/frame.
    for f in range(3):
        out = tracker.update(*frame((shift(BOX_A, 2 * f), 0), (shift(BOX_B, 2 * f), 1)))
        assert out.track_ids.tolist() == [1, 2]
        assert len(out) == 2 and out.boxes_xyxy.shape == (2, 4) and out.scores.shape == (2,)
    # The Kalman box follows the detections: within a few px of frame 3's box.
    np.testing.assert_allclose(out.boxes_xyxy[0], shift(BOX_A, 4), atol=3)
    np.testing.assert_allclose(out.scores, [SCORE, SCORE])


def test_new_tracker_and_reset_restart_at_id_1():
    first = Tracker(TrackerConfig())
    first.update(*frame((BOX_A, 0), (BOX_B, 1)))
    second = Tracker(TrackerConfig())  # no class-level counter: a new sequence starts at 1
    assert second.update(*frame((BOX_B, 1))).track_ids.tolist() == [1]
    assert first.update(*frame((BOX_A, 0), (BOX_B, 1))).track_ids.tolist() == [1, 2]
    first.reset()
    assert first.update(*frame((BOX_B, 1))).track_ids.tolist() == [1]


@pytest.mark.parametrize("frame_rate, track_buffer", [(30, 3), (20, 3), (60, 2)])
def test_lost_track_recovered_within_buffer_only(frame_rate, track_buffer):
    # max_time_lost = int(frame_rate / 30 * track_buffer): (30, 3) -> 3, (20, 3) -> 2, (60, 2) -> 4.
    # The track is last seen in frame 1. In frame f the expiry check runs after association and
    # removes it when f - 1 > max_time_lost, so a reappearance in frame f = max_time_lost + 2 is
    # still recovered (association first), one frame later it is a new track.
    max_lost = int(frame_rate / 30 * track_buffer)
    cfg = TrackerConfig(track_buffer=track_buffer)
    for gap, expect_recovered in ((max_lost, True), (max_lost + 1, False)):
        tracker = Tracker(cfg, frame_rate=frame_rate)
        assert tracker.update(*frame((BOX_A, 0))).track_ids.tolist() == [1]
        for _ in range(gap):
            assert len(tracker.update(*frame())) == 0
        out = tracker.update(*frame((BOX_A, 0)))
        if expect_recovered:
            assert out.track_ids.tolist() == [1]
        else:
            assert len(out) == 0  # new track 2 is unconfirmed in its first frame
            assert tracker.update(*frame((BOX_A, 0))).track_ids.tolist() == [2]


def test_lost_track_recovered_by_embedding_after_moving():
    # Lost for 2 frames, the person reappears 30 px to the right in frame 4. h = 100:
    # initiate P_xx = 100, P_vv = 39.0625; each predict adds 2 P_xv + P_vv + 25 to P_xx and
    # P_vv to P_xv, 0.390625 to P_vv: P_xx = 164.06, 306.64, 528.52 after 3 predicts;
    # S_xx = 528.52 + 25 = 553.52, maha^2 = 30^2 / 553.52 = 1.63 < 9.4877, fused cost
    # 0.98 * 0 + 0.02 * 1.63 = 0.033 < 0.4 -> lost track 1 recovered. A stranger (other
    # embedding) at the same place is not: 0.98 * 1 + 0.033 > 0.4.
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame((BOX_A, 0)))
    tracker.update(*frame())
    tracker.update(*frame())
    assert tracker.update(*frame((shift(BOX_A, 30), 0))).track_ids.tolist() == [1]

    stranger = Tracker(TrackerConfig())
    stranger.update(*frame((BOX_A, 0)))
    stranger.update(*frame())
    assert len(stranger.update(*frame((shift(BOX_A, 30), 3)))) == 0  # new, unconfirmed


def _crossing(mode):
    # Frame 1: A at x 100-140, B at x 130-170 (both 100 px tall). Frame 2: they have swapped
    # sides: A's detection at x 128-168, B's at x 102-142. Tracks start with zero velocity, so
    # the predicted boxes are the frame-1 boxes.
    # IoU(track A, det A) = 12*100 / (8000 - 1200) = 0.176; IoU(track A, det B) = 38/42 = 0.905;
    # IoU(track B, det B) = 0.176, IoU(track B, det A) = 0.905 -> boxes alone swap the ids.
    # Embedding stage: S_xx = 100 + 39.0625 + 25 + 25 = 189.06 (h = 100), the true match moved
    # 28 px: maha^2 = 28^2 / 189.06 = 4.15 < 9.4877 -> cost 0.98 * 0 + 0.02 * 4.15 = 0.083,
    # the swap costs 0.98 * 1 + 0.02 * 2^2 / 189.06 = 0.98 > 0.4 -> ids kept.
    box_a1, box_b1 = [100.0, 100.0, 140.0, 200.0], [130.0, 100.0, 170.0, 200.0]
    box_a2, box_b2 = [128.0, 100.0, 168.0, 200.0], [102.0, 100.0, 142.0, 200.0]
    tracker = Tracker(TrackerConfig(mode=mode))
    assert tracker.update(*frame((box_a1, 0), (box_b1, 1))).track_ids.tolist() == [1, 2]
    out = tracker.update(*frame((box_a2, 0), (box_b2, 1)))
    assert sorted(out.track_ids.tolist()) == [1, 2]
    centre_x = (out.boxes_xyxy[:, 0] + out.boxes_xyxy[:, 2]) / 2
    # Which detection (A's centre 148, B's centre 122) each track followed:
    return {int(t): ("A" if x > 135 else "B") for t, x in zip(out.track_ids, centre_x)}


def test_crossing_pair_keeps_ids_with_embeddings():
    assert _crossing("both") == {1: "A", 2: "B"}
    assert _crossing("embeddings") == {1: "A", 2: "B"}


def test_crossing_pair_swaps_with_boxes_only():
    assert _crossing("boxes") == {1: "B", 2: "A"}


def test_unconfirmed_track_removed_when_unmatched():
    # Frame 1 creates A (id 1, active). Frame 2 adds C (id 2, unconfirmed: not output).
    # Frame 3 has no C: the unconfirmed track is removed (not kept as lost), so C's return in
    # frame 4 is a new track, id 3, shown from frame 5 once confirmed.
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame((BOX_A, 0)))
    assert tracker.update(*frame((BOX_A, 0), (BOX_B, 2))).track_ids.tolist() == [1]
    tracker.update(*frame((BOX_A, 0)))
    assert tracker.update(*frame((BOX_A, 0), (BOX_B, 2))).track_ids.tolist() == [1]
    assert tracker.update(*frame((BOX_A, 0), (BOX_B, 2))).track_ids.tolist() == [1, 3]


def test_unconfirmed_track_confirmed_on_second_frame():
    # Same as above but C is seen in frames 2 and 3: IoU match (cost 0 < 0.7) confirms id 2.
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame((BOX_A, 0)))
    tracker.update(*frame((BOX_A, 0), (BOX_B, 2)))
    assert tracker.update(*frame((BOX_A, 0), (BOX_B, 2))).track_ids.tolist() == [1, 2]


def test_duplicate_removal_drops_shorter_lost_track():
    # A (id 1) seen in frames 1-4, B (id 2) overlaps it (x 102-142: IoU 38/42 = 0.905,
    # distance 0.095 < 0.15) and is seen in frames 1-2 only. In frame 3 B becomes lost at
    # about the same box; tracked A (age 3 - 1 = 2) is older than lost B (age 2 - 1 = 1), so
    # B is dropped. B's return in frame 4 is therefore a new track (id 3), not a recovery.
    box_b = [102.0, 100.0, 142.0, 200.0]
    tracker = Tracker(TrackerConfig())
    assert tracker.update(*frame((BOX_A, 0), (box_b, 1))).track_ids.tolist() == [1, 2]
    tracker.update(*frame((BOX_A, 0), (box_b, 1)))
    assert tracker.update(*frame((BOX_A, 0))).track_ids.tolist() == [1]
    assert tracker.update(*frame((BOX_A, 0), (box_b, 1))).track_ids.tolist() == [1]
    assert tracker.update(*frame((BOX_A, 0), (box_b, 1))).track_ids.tolist() == [1, 3]

    # Control: with duplicate removal off (distance < 0 never holds) B is recovered as id 2.
    control = Tracker(TrackerConfig(duplicate_iou_distance=0.0))
    control.update(*frame((BOX_A, 0), (box_b, 1)))
    control.update(*frame((BOX_A, 0), (box_b, 1)))
    control.update(*frame((BOX_A, 0)))
    assert control.update(*frame((BOX_A, 0), (box_b, 1))).track_ids.tolist() == [1, 2]


def test_duplicate_removal_drops_shorter_tracked_track():
    # A (id 1) seen frames 1-3 (age 2), lost in frame 4. In frame 5 a stranger (other
    # embedding: cosine 1, fused cost 0.98 > 0.4) appears on A's box: new unconfirmed track
    # (id 2, age 0). The pair is a duplicate (same box) and lost A is older, so the new
    # track is dropped at once; frame 6 sees the stranger again and starts id 3, dropped
    # again, so nothing is ever output. Without the rule id 2 is confirmed in frame 6.
    def run(cfg):
        tracker = Tracker(cfg)
        for _ in range(3):
            tracker.update(*frame((BOX_A, 0)))
        tracker.update(*frame())
        tracker.update(*frame((BOX_A, 5)))
        return tracker.update(*frame((BOX_A, 5))).track_ids.tolist()

    assert run(TrackerConfig()) == []
    assert run(TrackerConfig(duplicate_iou_distance=0.0)) == [2]


def test_empty_frames():
    tracker = Tracker(TrackerConfig())
    out = tracker.update(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, D)))
    assert len(out) == 0 and out.boxes_xyxy.shape == (0, 4) and out.track_ids.shape == (0,)
    # Frame 1 was empty, so a track born in frame 2 is unconfirmed (only frame-1 tracks are
    # activated at once) and shows in frame 3; an empty frame 4 makes it lost, frame 5 recovers it.
    assert len(tracker.update(*frame((BOX_A, 0)))) == 0
    assert tracker.update(*frame((BOX_A, 0))).track_ids.tolist() == [1]
    assert len(tracker.update(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, D)))) == 0
    assert tracker.update(*frame((BOX_A, 0))).track_ids.tolist() == [1]


def test_boxes_mode_needs_no_embeddings():
    tracker = Tracker(TrackerConfig(mode="boxes"))
    assert tracker.update(np.array([BOX_A]), np.array([SCORE]), None).track_ids.tolist() == [1]
    assert tracker.update(np.array([BOX_A]), np.array([SCORE]), None).track_ids.tolist() == [1]


def test_low_scores():
    # min_score 0.4: a 0.4 detection is dropped before association; det_thresh 0.6 here:
    # a 0.5 detection can keep a track alive but cannot start one.
    tracker = Tracker(TrackerConfig(det_thresh=0.6))
    boxes, _, emb = frame((BOX_A, 0), (BOX_B, 1))
    assert tracker.update(boxes, np.array([0.9, 0.5]), emb).track_ids.tolist() == [1]
    out = tracker.update(boxes, np.array([0.5, 0.4]), emb)
    assert out.track_ids.tolist() == [1] and out.scores.tolist() == [0.5]


def test_filter_output_by_hand():
    # w*h: 10x10 = 100 (dropped, <= 100), 10x11 = 110 (kept);
    # w/h: 16/10 = 1.6 (kept), 17/10 = 1.7 (dropped).
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 16, 10], [0, 0, 17, 10]], float)
    tracks = ActiveTracks(boxes, np.arange(1, 5), np.ones(4))
    assert filter_output(tracks, TrackerConfig()).track_ids.tolist() == [2, 3]


def test_wide_box_tracked_but_not_output():
    tracker = Tracker(TrackerConfig())
    wide = [0.0, 0.0, 200.0, 100.0]  # w/h = 2 > 1.6
    assert len(tracker.update(*frame((wide, 0), (BOX_A, 1)))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((2, 3)), np.ones(2), np.ones((2, D))), "boxes_xyxy must be"),
        ((np.zeros((2, 4)) + [0, 0, 1, 1], np.ones(3), np.ones((2, D))), "2 boxes but 3 scores"),
        ((np.array([[0, 0, 1, 1.0]]), np.ones(1), np.ones((2, D))), "embeddings must be"),
        ((np.array([[0, 0, np.nan, 1.0]]), np.ones(1), np.ones((1, D))), "non-finite"),
        ((np.array([[0, 5, 1, 5.0]]), np.ones(1), np.ones((1, D))), "y2 <= y1"),
        ((np.array([[0, 0, 1, 1.0]]), np.ones(1), np.zeros((1, D))), "zero or non-finite"),
        ((np.array([[0, 0, 1, 1.0]]), np.ones(1), None), "needs embeddings"),
    ],
)
def test_bad_input_names_the_frame(args, message):
    with pytest.raises(ValueError, match=message) as err:
        Tracker(TrackerConfig()).update(*args)
    assert "frame 1" in str(err.value)


def test_embedding_size_change_is_an_error():
    tracker = Tracker(TrackerConfig())
    tracker.update(*frame((BOX_A, 0)))
    with pytest.raises(ValueError, match="frame 2: embeddings have D=4"):
        tracker.update(np.array([BOX_A]), np.array([SCORE]), np.ones((1, 4)))


def test_bad_config():
    with pytest.raises(ValueError, match="mode"):
        Tracker(TrackerConfig(mode="iou"))
    with pytest.raises(ValueError, match="frame_rate"):
        Tracker(TrackerConfig(), frame_rate=0)
