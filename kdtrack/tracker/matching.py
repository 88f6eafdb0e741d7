"""Association costs and the assignment solver (whole matrices, no per-track loops).

Cost matrices are ``(T, N)`` float64: rows are tracks, columns detections;
``inf`` marks a forbidden pair.
"""

from __future__ import annotations

import lap
import numpy as np

from kdtrack.tracker.kalman import KalmanFilter

MIN_UNION = 1e-12  # px^2; keeps IoU finite for degenerate (zero-area) boxes


def cosine_distance(track_embeddings: np.ndarray, det_embeddings: np.ndarray) -> np.ndarray:
    """``1 - cos`` between L2-normalised rows, clipped at 0: ``(T, D) x (N, D) -> (T, N)``."""
    if len(track_embeddings) == 0 or len(det_embeddings) == 0:
        return np.zeros((len(track_embeddings), len(det_embeddings)))
    cost = 1.0 - track_embeddings @ det_embeddings.T
    return np.maximum(cost, 0.0, out=cost)


def gate_and_fuse(cost: np.ndarray, maha: np.ndarray, gating_threshold: float,
                  motion_lambda: float) -> np.ndarray:
    """``inf`` where ``maha > gating_threshold``, else ``motion_lambda * cost + (1 - motion_lambda) * maha``.

    ``cost`` and ``maha`` (squared Mahalanobis distances) are ``(T, N)``; returns a new float64 array.
    """
    fused = motion_lambda * cost.astype(np.float64) + (1.0 - motion_lambda) * maha
    fused[maha > gating_threshold] = np.inf
    return fused


def fuse_motion(kf: KalmanFilter, cost: np.ndarray, mean: np.ndarray, covariance: np.ndarray,
                measurements_xyah: np.ndarray, gating_threshold: float, motion_lambda: float) -> np.ndarray:
    """Gate ``cost`` ``(T, N)`` by the tracks' Mahalanobis distance to the measurements and blend it in."""
    if cost.size == 0:
        return cost
    maha = kf.gating_distance(mean, covariance, measurements_xyah)
    return gate_and_fuse(cost, maha, gating_threshold, motion_lambda)


def iou_distance(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """``1 - IoU``, ``(T, 4) x (N, 4) -> (T, N)`` float64 (empty in, empty out).

    Lean twin of ``kdtrack.boxes.box_iou_xyxy`` for float64 inputs: the tracker
    calls it several times per frame.
    """
    if len(a_xyxy) == 0 or len(b_xyxy) == 0:
        return np.ones((len(a_xyxy), len(b_xyxy)))
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    iw = np.minimum(a_xyxy[:, None, 2], b_xyxy[None, :, 2])
    iw -= np.maximum(a_xyxy[:, None, 0], b_xyxy[None, :, 0])
    ih = np.minimum(a_xyxy[:, None, 3], b_xyxy[None, :, 3])
    ih -= np.maximum(a_xyxy[:, None, 1], b_xyxy[None, :, 1])
    inter = np.maximum(iw, 0.0, out=iw)
    inter *= np.maximum(ih, 0.0, out=ih)
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    np.maximum(union, MIN_UNION, out=union)
    inter /= union
    return np.subtract(1.0, inter, out=inter)


def linear_assignment(cost: np.ndarray, cost_limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost matching that leaves pairs costing more than ``cost_limit`` unmatched.

    Same optimum as ``lap.lapjv(cost, extend_cost=True, cost_limit=cost_limit)``
    on the whole matrix, which minimises sum(matched cost - cost_limit). Two
    exact reductions make it cheap on tracking matrices (mostly gated out):
    rows / columns with no entry <= cost_limit can never be matched and are
    dropped, and a row and column whose only admissible entry is each other
    (< cost_limit) form a component of their own and are matched directly.
    lapjv solves what is left. Returns ``matches (K, 2)`` of (row, col) sorted by
    row, ``unmatched_rows`` and ``unmatched_cols`` (ascending index arrays).
    """
    n_rows, n_cols = cost.shape
    if cost.size == 0:
        return np.empty((0, 2), dtype=np.int64), np.arange(n_rows), np.arange(n_cols)
    admissible = cost <= cost_limit
    if not admissible.any():
        return np.empty((0, 2), dtype=np.int64), np.arange(n_rows), np.arange(n_cols)
    row_deg = admissible.sum(axis=1)
    col_deg = admissible.sum(axis=0)
    row_of = np.full(n_cols, -1, dtype=np.int64)  # matched row of each column
    # Isolated pairs: the row's single admissible column has this row as its single admissible row.
    single_rows = np.flatnonzero(row_deg == 1)
    single_cols = admissible[single_rows].argmax(axis=1)
    isolated = (col_deg[single_cols] == 1) & (cost[single_rows, single_cols] < cost_limit)
    row_of[single_cols[isolated]] = single_rows[isolated]
    open_rows = row_deg > 0
    open_rows[single_rows[isolated]] = False
    rest_rows = np.flatnonzero(open_rows)
    if len(rest_rows):
        rest_cols = np.flatnonzero((col_deg > 0) & (row_of < 0))
        _, x, _ = lap.lapjv(cost[np.ix_(rest_rows, rest_cols)], extend_cost=True, cost_limit=cost_limit)
        hit = x >= 0
        row_of[rest_cols[x[hit]]] = rest_rows[hit]
    matched_cols = np.flatnonzero(row_of >= 0)
    matches = np.stack([row_of[matched_cols], matched_cols], axis=1)
    matches = matches[np.argsort(matches[:, 0], kind="stable")]
    col_of = np.full(n_rows, -1, dtype=np.int64)
    col_of[matches[:, 0]] = matches[:, 1]
    return matches, np.flatnonzero(col_of < 0), np.flatnonzero(row_of < 0)
