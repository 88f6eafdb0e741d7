"""Association costs and the assignment solver against hand values and plain lapjv."""

from __future__ import annotations

import lap
import numpy as np

from kdtrack.tracker.kalman import KalmanFilter
from kdtrack.tracker.matching import cosine_distance, fuse_motion, iou_distance, linear_assignment


def test_cosine_distance_by_hand_and_clipped():
    t = np.array([[1.0, 0.0], [0.6, 0.8]])
    d = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # 1 - dot: [1-1, 1-0, 1-0.6], [1-0.6, 1-0.8, 1-1]
    np.testing.assert_allclose(cosine_distance(t, d), [[0, 1, 0.4], [0.4, 0.2, 0]], atol=1e-12)
    # A unit vector with itself can give 1 - 1.0000000000000002 < 0: clipped to 0.
    v = np.array([[0.1, 0.2, 0.3]])
    v = v / np.linalg.norm(v)
    assert cosine_distance(v, v * (1 + 1e-15))[0, 0] == 0.0
    assert cosine_distance(np.zeros((0, 3)), v).shape == (0, 1)


def test_fuse_motion_by_hand():
    kf = KalmanFilter()
    mean, cov = kf.multi_predict(*kf.initiate(np.array([[100.0, 200.0, 0.5, 80.0]])))
    # S_xx = 121 (see test_kalman): 11 px -> maha^2 1, 44 px -> 16 > 9.4877 (gated).
    z = np.array([[111.0, 200.0, 0.5, 80.0], [144.0, 200.0, 0.5, 80.0]])
    fused = fuse_motion(kf, np.array([[0.5, 0.1]]), mean, cov, z, 9.4877, 0.98)
    # 0.98 * 0.5 + 0.02 * 1 = 0.51; second pair is infinite.
    assert abs(fused[0, 0] - 0.51) < 1e-9
    assert np.isinf(fused[0, 1])


def test_iou_distance_by_hand():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    # overlap 5x10 = 50, union 150 -> 1 - 1/3; disjoint -> 1; identical -> 0.
    np.testing.assert_allclose(iou_distance(a, b), [[2 / 3, 1.0, 0.0]], atol=1e-12)
    assert iou_distance(a, np.zeros((0, 4))).shape == (1, 0)


def test_linear_assignment_by_hand():
    cost = np.array([[0.1, np.inf], [np.inf, 0.9], [0.3, 0.2]])
    # Row 0 -> col 0 (0.1), row 2 -> col 1 (0.2); row 1's only option costs 0.9 > 0.4.
    matches, u_rows, u_cols = linear_assignment(cost, 0.4)
    assert matches.tolist() == [[0, 0], [2, 1]]
    assert u_rows.tolist() == [1] and u_cols.tolist() == []
    # Global optimum, not greedy: row 0 would grab col 0 (0.1) but 0.15 + 0.15 < 0.1 + inf.
    cost = np.array([[0.1, 0.15], [0.15, np.inf]])
    assert linear_assignment(cost, 0.4)[0].tolist() == [[0, 1], [1, 0]]


def test_linear_assignment_empty():
    for shape in ((0, 0), (0, 3), (4, 0)):
        matches, u_rows, u_cols = linear_assignment(np.zeros(shape), 0.5)
        assert matches.shape == (0, 2)
        assert u_rows.tolist() == list(range(shape[0])) and u_cols.tolist() == list(range(shape[1]))
    matches, u_rows, u_cols = linear_assignment(np.full((2, 3), np.inf), 0.5)
    assert len(matches) == 0 and u_rows.tolist() == [0, 1] and u_cols.tolist() == [0, 1, 2]


def test_linear_assignment_equals_plain_lapjv():
    # The row/column reductions must not change lapjv's answer on the whole matrix.
    rng = np.random.default_rng(0)
    for _ in range(400):
        rows, cols = rng.integers(1, 12, 2)
        cost = rng.random((rows, cols)) * rng.choice([0.6, 1.0, 3.0])
        cost[rng.random((rows, cols)) < rng.random()] = np.inf
        _, x, y = lap.lapjv(cost, extend_cost=True, cost_limit=0.4)
        matches, u_rows, u_cols = linear_assignment(cost, 0.4)
        assert matches.tolist() == [[i, int(j)] for i, j in enumerate(x) if j >= 0]
        assert u_rows.tolist() == np.flatnonzero(x < 0).tolist()
        assert u_cols.tolist() == np.flatnonzero(y < 0).tolist()
