"""Kalman filter: hand-computed single-track values, batched == per-track reference."""

from __future__ import annotations

import numpy as np
import pytest
from _reference_tracker import RefKalman

from kdtrack.tracker.kalman import KalmanFilter, full_covariance, xyah_to_xyxy, xyxy_to_xyah

W_POS, W_VEL = 1.0 / 20, 1.0 / 160
Z = np.array([[100.0, 200.0, 0.5, 80.0]])  # one measurement: x, y, a, h


def test_box_conversions_round_trip():
    # [10, 20, 50, 100]: w = 40, h = 80 -> centre (30, 60), a = 0.5.
    xyah = xyxy_to_xyah(np.array([[10.0, 20.0, 50.0, 100.0]]))
    np.testing.assert_allclose(xyah, [[30.0, 60.0, 0.5, 80.0]])
    np.testing.assert_allclose(xyah_to_xyxy(xyah), [[10.0, 20.0, 50.0, 100.0]])


def test_initiate_by_hand():
    mean, cov = KalmanFilter(W_POS, W_VEL).initiate(Z)
    np.testing.assert_array_equal(mean, [[100, 200, 0.5, 80, 0, 0, 0, 0]])
    # position std 2 * (1/20) * 80 = 8 -> 64; velocity std 10 * (1/160) * 80 = 5 -> 25;
    # aspect 1e-2 -> 1e-4, aspect velocity 1e-5 -> 1e-10.
    expected = np.diag([64.0, 64.0, 1e-4, 64.0, 25.0, 25.0, 1e-10, 25.0])
    np.testing.assert_allclose(full_covariance(cov)[0], expected, rtol=1e-12, atol=0)


def test_predict_by_hand():
    kf = KalmanFilter(W_POS, W_VEL)
    mean, cov = kf.multi_predict(*kf.initiate(Z))
    # Velocities are zero, so the mean does not move.
    np.testing.assert_array_equal(mean, [[100, 200, 0.5, 80, 0, 0, 0, 0]])
    # F P F^T: position var = P_pos + P_vel, pos/vel covariance = P_vel, vel var = P_vel;
    # process noise Q: position (80/20)^2 = 16, aspect 1e-4, velocity (80/160)^2 = 0.25, va 1e-10.
    # x: 64 + 25 + 16 = 105, vx: 25 + 0.25 = 25.25, x-vx: 25;
    # a: 1e-4 + 1e-10 + 1e-4, va: 1e-10 + 1e-10, a-va: 1e-10.
    c = full_covariance(cov)[0]
    for pos, vel in ((0, 4), (1, 5), (3, 7)):
        assert c[pos, pos] == pytest.approx(105.0)
        assert c[vel, vel] == pytest.approx(25.25)
        assert c[pos, vel] == pytest.approx(25.0) and c[vel, pos] == pytest.approx(25.0)
    assert c[2, 2] == pytest.approx(2e-4 + 1e-10, rel=1e-12)
    assert c[6, 6] == pytest.approx(2e-10, rel=1e-12)
    assert c[2, 6] == pytest.approx(1e-10, rel=1e-12)
    assert c[0, 1] == 0.0 and c[0, 3] == 0.0


def test_predict_moves_by_velocity():
    kf = KalmanFilter(W_POS, W_VEL)
    mean, cov = kf.initiate(Z)
    mean[0, 4:] = [3.0, -2.0, 0.01, 1.0]
    new_mean, _ = kf.multi_predict(mean, cov)
    np.testing.assert_allclose(new_mean[0], [103, 198, 0.51, 81, 3, -2, 0.01, 1])
    assert mean[0, 0] == 100.0  # inputs are not modified


def test_update_by_hand():
    kf = KalmanFilter(W_POS, W_VEL)
    mean, cov = kf.multi_predict(*kf.initiate(Z))
    new_mean, new_cov = kf.update(mean, cov, np.array([[104.0, 200.0, 0.5, 80.0]]))
    # S_xx = 105 + (80/20)^2 = 121; K_x = 105/121, K_vx = 25/121; innovation 4 px.
    # x = 100 + 4 * 105/121 = 103.47107..., vx = 4 * 25/121 = 0.82644...
    assert new_mean[0, 0] == pytest.approx(100 + 4 * 105 / 121)
    assert new_mean[0, 4] == pytest.approx(4 * 25 / 121)
    np.testing.assert_allclose(new_mean[0, [1, 2, 3, 5, 6, 7]], [200, 0.5, 80, 0, 0, 0], atol=1e-12)
    # P' = P - K S K^T: xx = 105 - 105^2/121 = 105 * 16/121, x-vx = 25 * 16/121,
    # vx-vx = 25.25 - 25^2/121.
    full = full_covariance(new_cov)[0]
    assert full[0, 0] == pytest.approx(105 * 16 / 121)
    assert full[0, 4] == pytest.approx(25 * 16 / 121) and full[4, 0] == full[0, 4]
    assert full[4, 4] == pytest.approx(25.25 - 625 / 121)


def test_gating_distance_by_hand():
    kf = KalmanFilter(W_POS, W_VEL)
    mean, cov = kf.multi_predict(*kf.initiate(Z))
    # S is diagonal: x, y, h: 121 (std 11); a: 2e-4 + 1e-10 + (1e-1)^2.
    s_a = 2e-4 + 1e-10 + 1e-2
    z = np.array([[111.0, 200.0, 0.5, 80.0],  # 11 px right: 11^2 / 121 = 1
                  [100.0, 178.0, 0.5, 91.0],  # 22 px up, 11 px taller: 4 + 1 = 5
                  [100.0, 200.0, 0.6, 80.0]])  # aspect +0.1: 0.01 / s_a
    d2 = kf.gating_distance(mean, cov, z)
    np.testing.assert_allclose(d2, [[1.0, 5.0, 0.01 / s_a]], rtol=1e-9)
    assert kf.gating_distance(mean, cov, np.zeros((0, 4))).shape == (1, 0)
    assert kf.gating_distance(mean[:0], cov[:0], z).shape == (0, 3)


def _random_tracks(rng, n):
    kf = KalmanFilter(W_POS, W_VEL)
    z = np.c_[rng.uniform(0, 1000, (n, 2)), rng.uniform(0.3, 0.6, n), rng.uniform(40, 300, n)]
    mean, cov = kf.initiate(z)
    for _ in range(3):  # a few predict/update rounds give full, correlated covariances
        mean, cov = kf.multi_predict(mean, cov)
        mean, cov = kf.update(mean, cov, z + rng.normal(0, 2, z.shape) * [1, 1, 0.01, 1])
    mean[:, 4:] += rng.normal(0, 1, (n, 4)) * [2, 2, 0.01, 1]
    return kf, mean, cov


def test_batched_equals_per_track_reference():
    rng = np.random.default_rng(0)
    kf, mean, cov = _random_tracks(rng, 7)
    ref = RefKalman(W_POS, W_VEL)
    z = np.c_[rng.uniform(0, 1000, (5, 2)), rng.uniform(0.3, 0.6, 5), rng.uniform(40, 300, 5)]

    b_mean, b_cov = kf.multi_predict(mean, cov)
    gating = kf.gating_distance(b_mean, b_cov, z)
    u_mean, u_cov = kf.update(b_mean[:5], b_cov[:5], z)
    full_cov, b_full, u_full = full_covariance(cov), full_covariance(b_cov), full_covariance(u_cov)
    for t in range(7):
        # The per-track reference works on full 8x8 matrices (its own predict / cho_solve update).
        r_mean, r_cov = ref.predict(mean[t], full_cov[t])
        np.testing.assert_allclose(b_mean[t], r_mean, rtol=1e-12)
        np.testing.assert_allclose(b_full[t], r_cov, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gating[t], ref.gating(r_mean, r_cov, z), rtol=1e-7, atol=1e-8)
        if t < 5:
            r_mean, r_cov = ref.update(r_mean, r_cov, z[t])
            np.testing.assert_allclose(u_mean[t], r_mean, rtol=1e-10)
            np.testing.assert_allclose(u_full[t], r_cov, rtol=1e-8, atol=1e-10)


def test_empty_batch():
    kf = KalmanFilter(W_POS, W_VEL)
    mean, cov = kf.initiate(np.zeros((0, 4)))
    assert mean.shape == (0, 8) and cov.shape == (0, 3, 4)
    p_mean, p_cov = kf.multi_predict(mean, cov)
    assert p_mean.shape == (0, 8) and full_covariance(p_cov).shape == (0, 8, 8)
