"""Constant-velocity Kalman filter on (x, y, a, h), batched over tracks.

State per track (8,): centre x, centre y, aspect a = w / h, height h (pixels,
a unitless) and their velocities vx, vy, va, vh (per frame). Noise is
proportional to the box height (FairMOT / DeepSORT's choice), so one filter
serves near and far people.

The 8x8 covariance of this model never couples different coordinates: the
motion matrix only links each position to its own velocity, and the initial,
process and measurement noises are diagonal. So it is exactly block-diagonal
in the pairs (x, vx), (y, vy), (a, va), (h, vh), and we store just those four
2x2 blocks: ``covariance (T, 3, 4)`` = [position variance, position-velocity
covariance, velocity variance] per coordinate. Every step is then a handful
of element-wise operations on ``(T, 4)`` arrays (no batched matrix inverses);
``full_covariance`` expands to the usual ``(T, 8, 8)`` for inspection.
"""

from __future__ import annotations

import numpy as np

NDIM = 4  # measured coordinates: x, y, a, h
POS, CROSS, VEL = 0, 1, 2  # rows of the compact covariance
ASPECT_POS_STD = 1e-2  # process / initial std of the aspect ratio
ASPECT_VEL_STD = 1e-5  # process / initial std of the aspect velocity
ASPECT_MEAS_STD = 1e-1  # measurement std of the aspect ratio
INIT_POS_SCALE = 2.0  # initial position std = 2 * std_weight_position * h
INIT_VEL_SCALE = 10.0  # initial velocity std = 10 * std_weight_velocity * h


def xyxy_to_xyah(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(N, 4)`` corners -> centre x, centre y, aspect w / h, height (float64)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    return np.stack([b[:, 0] + w / 2, b[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """``(N, >=4)`` state or measurement -> ``(N, 4)`` corners (float64)."""
    half = np.empty((len(xyah), 2))
    np.multiply(xyah[:, 2], xyah[:, 3], out=half[:, 0])
    half[:, 1] = xyah[:, 3]
    half *= 0.5
    return np.concatenate([xyah[:, :2] - half, xyah[:, :2] + half], axis=1)


def full_covariance(covariance: np.ndarray) -> np.ndarray:
    """Compact ``(T, 3, 4)`` -> the full ``(T, 8, 8)`` covariance of (x, y, a, h, vx, vy, va, vh)."""
    t = len(covariance)
    full = np.zeros((t, 2 * NDIM, 2 * NDIM))
    i = np.arange(NDIM)
    full[:, i, i] = covariance[:, POS]
    full[:, i, i + NDIM] = covariance[:, CROSS]
    full[:, i + NDIM, i] = covariance[:, CROSS]
    full[:, i + NDIM, i + NDIM] = covariance[:, VEL]
    return full


class KalmanFilter:
    """Batched Kalman filter; holds only constants, never track state.

    Means are ``(T, 8)``, covariances compact ``(T, 3, 4)`` (see the module
    docstring), measurements ``(T, 4)`` or ``(N, 4)`` in xyah.
    """

    def __init__(self, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160):
        self.std_weight_position = wp = float(std_weight_position)
        self.std_weight_velocity = wv = float(std_weight_velocity)
        # Every noise variance is (weight * h)^2, except the aspect entries, which are constant:
        # variance = h^2 * scale + offset, per coordinate (x, y, a, h).
        iwp, iwv = INIT_POS_SCALE * wp, INIT_VEL_SCALE * wv
        self._init_pos = (np.array([iwp, iwp, 0, iwp]) ** 2, np.array([0, 0, ASPECT_POS_STD, 0]) ** 2)
        self._init_vel = (np.array([iwv, iwv, 0, iwv]) ** 2, np.array([0, 0, ASPECT_VEL_STD, 0]) ** 2)
        self._process_pos = (np.array([wp, wp, 0, wp]) ** 2, np.array([0, 0, ASPECT_POS_STD, 0]) ** 2)
        self._process_vel = (np.array([wv, wv, 0, wv]) ** 2, np.array([0, 0, ASPECT_VEL_STD, 0]) ** 2)
        self._measure = (np.array([wp, wp, 0, wp]) ** 2, np.array([0, 0, ASPECT_MEAS_STD, 0]) ** 2)

    @staticmethod
    def _variances(h2: np.ndarray, scale_offset: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``(T,)`` squared heights -> ``(T, 4)`` variances ``h^2 * scale + offset``."""
        scale, offset = scale_offset
        return h2[:, None] * scale + offset

    def initiate(self, measurements_xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at rest: ``(T, 4)`` -> means ``(T, 8)``, covariances ``(T, 3, 4)``."""
        z = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, NDIM)
        mean = np.concatenate([z, np.zeros_like(z)], axis=1)
        h2 = z[:, 3] * z[:, 3]
        cov = np.zeros((len(z), 3, NDIM))
        cov[:, POS] = self._variances(h2, self._init_pos)
        cov[:, VEL] = self._variances(h2, self._init_vel)
        return mean, cov

    def multi_predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One time step for all tracks at once (new arrays, inputs untouched).

        Per coordinate, F = [[1, 1], [0, 1]]: F P F^T = [[p + 2c + v, c + v], [c + v, v]], plus Q.
        """
        new_mean = mean.copy()
        new_mean[:, :NDIM] += mean[:, NDIM:]
        p, c, v = covariance[:, POS], covariance[:, CROSS], covariance[:, VEL]
        h2 = mean[:, 3] * mean[:, 3]
        new_cov = np.empty_like(covariance)
        np.add(c, v, out=new_cov[:, CROSS])
        np.add(p, c, out=new_cov[:, POS])
        new_cov[:, POS] += new_cov[:, CROSS]
        new_cov[:, POS] += self._variances(h2, self._process_pos)
        np.add(v, self._variances(h2, self._process_vel), out=new_cov[:, VEL])
        return new_mean, new_cov

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """State -> measurement space: ``(T, 4)`` means and ``(T, 4)`` innovation variances.

        The innovation covariance S = H P H^T + R is diagonal; its diagonal is returned.
        """
        h2 = mean[:, 3] * mean[:, 3]
        return mean[:, :NDIM].copy(), covariance[:, POS] + self._variances(h2, self._measure)

    def update(self, mean: np.ndarray, covariance: np.ndarray,
               measurements_xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct ``T`` tracks with one ``(T, 4)`` measurement each.

        Per coordinate: gains k_p = p / s, k_v = c / s; mean += k * (z - x);
        P - K H P = [[p - k_p p, c - k_p c], [., v - k_v c]].
        """
        proj_mean, s = self.project(mean, covariance)
        p, c, v = covariance[:, POS], covariance[:, CROSS], covariance[:, VEL]
        gain_pos, gain_vel = p / s, c / s
        innovation = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, NDIM) - proj_mean
        new_mean = np.concatenate([mean[:, :NDIM] + gain_pos * innovation,
                                   mean[:, NDIM:] + gain_vel * innovation], axis=1)
        new_cov = np.empty_like(covariance)
        np.subtract(p, gain_pos * p, out=new_cov[:, POS])
        np.subtract(c, gain_pos * c, out=new_cov[:, CROSS])
        np.subtract(v, gain_vel * c, out=new_cov[:, VEL])
        return new_mean, new_cov

    def gating_distance(self, mean: np.ndarray, covariance: np.ndarray,
                        measurements_xyah: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of every measurement to every track.

        ``(T, 8)``, ``(T, 3, 4)``, ``(N, 4)`` -> ``(T, N)``; compare with
        chi-square 95 % quantiles (4 degrees of freedom: 9.4877).
        """
        z = np.asarray(measurements_xyah, dtype=np.float64).reshape(-1, NDIM)
        if len(mean) == 0 or len(z) == 0:
            return np.zeros((len(mean), len(z)))
        proj_mean, s = self.project(mean, covariance)
        inv_s = 1.0 / s  # (T, 4)
        # sum_i (z_i - mu_i)^2 / s_i expanded so every (T, N) term is one small matmul:
        # (1/s) . z^2 - 2 (mu/s) . z + sum mu^2/s. Coordinates are centred first to keep
        # the cancellation error tiny (~1e-12 for pixel-sized values).
        origin = z.mean(axis=0)
        z = z - origin
        mu = proj_mean - origin
        mu_inv_s = mu * inv_s
        maha = inv_s @ (z * z).T
        maha -= 2.0 * (mu_inv_s @ z.T)
        maha += np.einsum("ti,ti->t", mu_inv_s, mu)[:, None]
        return np.maximum(maha, 0.0, out=maha)
