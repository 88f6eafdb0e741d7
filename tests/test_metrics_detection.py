"""Detection recall / precision / AP against a hand-computed case."""

import numpy as np
import pytest

from kdtrack.metrics.detection import detection_metrics, match_detections


def test_hand_computed_recall_precision_ap() -> None:
    gt1 = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    gt2 = np.array([[0, 0, 10, 10]], np.float32)
    boxes1 = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]], np.float32)
    scores1 = np.array([0.9, 0.8, 0.3])
    # d2 overlaps A (IoU 0.82) but A is taken by the higher-scored d1: a duplicate is a false positive
    assert match_detections(boxes1, scores1, gt1).tolist() == [True, False, True]
    m = detection_metrics([(boxes1, scores1), (np.zeros((0, 4)), np.zeros(0))], [gt1, gt2], score_threshold=0.4)
    assert m["recall"] == pytest.approx(1 / 3) and m["precision"] == pytest.approx(1 / 2)
    # ranked TP, FP, TP over 3 gt: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3
    assert m["ap"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    assert m["ground_truth"] == 3 and m["detections"] == 2


def test_no_detections_and_no_ground_truth() -> None:
    m = detection_metrics([(np.zeros((0, 4)), np.zeros(0))], [np.array([[0, 0, 5, 5]])])
    assert m["recall"] == 0.0 and np.isnan(m["precision"]) and m["ap"] == 0.0
    with pytest.raises(ValueError):
        detection_metrics([], [np.zeros((0, 4))])
