"""Person detection quality: recall and precision at a score threshold, and AP at an IoU threshold.

Each image's detections are matched greedily in descending score to the unmatched ground-truth box
of highest IoU (>= ``iou_threshold``), as PASCAL VOC / COCO do; AP is the area under the
all-point interpolated precision-recall curve (VOC 2010+). Used to show what IDF stages 2 and 3
do to detection (stage 2 moves the shared body under frozen detection heads, stage 3 re-fits them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdtrack.boxes import box_iou_xyxy


def match_detections(boxes_xyxy: np.ndarray, scores: np.ndarray, gt_xyxy: np.ndarray,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """``(N,)`` bool: detection i is a true positive (greedy by score, each gt box matched once)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = box_iou_xyxy(boxes_xyxy, gt_xyxy)
    taken = np.zeros(iou.shape[1], bool)
    tp = np.zeros(len(order), bool)
    for i in order:
        if iou.shape[1] == 0:
            break
        candidates = np.where(taken, -1.0, iou[i])
        j = int(candidates.argmax())
        if candidates[j] >= iou_threshold:
            taken[j] = True
            tp[i] = True
    return tp


def detection_metrics(detections: Sequence[tuple[np.ndarray, np.ndarray]], ground_truth: Sequence[np.ndarray], *,
                      iou_threshold: float = 0.5, score_threshold: float = 0.4) -> dict[str, float]:
    """``{"recall", "precision"}`` at ``score_threshold`` and ``"ap"`` over all scores, pooled over images.

    ``detections[i] = (boxes (N, 4), scores (N,))`` and ``ground_truth[i] = (M, 4)`` boxes of image i.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection sets but {len(ground_truth)} ground-truth sets")
    all_scores, all_tp, n_gt = [], [], 0
    for (boxes, scores), gt in zip(detections, ground_truth):
        gt = np.asarray(gt, np.float32).reshape(-1, 4)
        n_gt += len(gt)
        all_scores.append(np.asarray(scores, np.float64).reshape(-1))
        all_tp.append(match_detections(np.asarray(boxes, np.float32).reshape(-1, 4), all_scores[-1], gt, iou_threshold))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
    kept = scores >= score_threshold
    out = {
        "recall": float(tp[kept].sum() / n_gt) if n_gt else float("nan"),
        "precision": float(tp[kept].mean()) if kept.any() else float("nan"),
        "ground_truth": int(n_gt), "detections": int(kept.sum()),
    }
    order = np.argsort(-scores, kind="stable")
    if n_gt == 0:
        out["ap"] = float("nan")
        return out
    cum_tp = np.cumsum(tp[order])
    recall = cum_tp / n_gt
    precision = cum_tp / np.arange(1, len(order) + 1)
    # all-point interpolation: precision envelope, summed over recall steps
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    out["ap"] = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return out
