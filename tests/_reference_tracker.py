"""Plain per-track transcription of METHOD.md section 5, the yardstick for ``kdtrack.tracker``.

One Python object per track, one Kalman filter call per track, FairMOT's two
ordered lists (tracked, lost), scipy's ``cdist`` and ``cho_factor``. It shares
no code with the vectorised tracker except ``lap.lapjv`` (the solver METHOD.md
names). Used by ``tests/test_tracker_equivalence.py`` and as the baseline of
``bench/tracker.py``.
"""

from __future__ import annotations

from collections import Counter

import lap
import numpy as np
import scipy.linalg
from scipy.spatial.distance import cdist

CHI2INV95_4DOF = 9.4877


class RefKalman:
    """Single-track constant-velocity filter on (x, y, a, h, vx, vy, va, vh)."""

    def __init__(self, w_pos: float, w_vel: float):
        self.w_pos, self.w_vel = w_pos, w_vel
        self.F = np.eye(8)
        for i in range(4):
            self.F[i, 4 + i] = 1.0
        self.H = np.eye(4, 8)

    def initiate(self, z):
        h = z[3]
        std = [2 * self.w_pos * h, 2 * self.w_pos * h, 1e-2, 2 * self.w_pos * h,
               10 * self.w_vel * h, 10 * self.w_vel * h, 1e-5, 10 * self.w_vel * h]
        return np.r_[z, np.zeros(4)], np.diag(np.square(std))

    def predict(self, mean, cov):
        h = mean[3]
        q = np.diag(np.square([self.w_pos * h, self.w_pos * h, 1e-2, self.w_pos * h,
                               self.w_vel * h, self.w_vel * h, 1e-5, self.w_vel * h]))
        return self.F @ mean, np.linalg.multi_dot((self.F, cov, self.F.T)) + q

    def project(self, mean, cov):
        h = mean[3]
        r = np.diag(np.square([self.w_pos * h, self.w_pos * h, 1e-1, self.w_pos * h]))
        return self.H @ mean, np.linalg.multi_dot((self.H, cov, self.H.T)) + r

    def update(self, mean, cov, z):
        pm, pc = self.project(mean, cov)
        factor = scipy.linalg.cho_factor(pc, lower=True, check_finite=False)
        gain = scipy.linalg.cho_solve(factor, (cov @ self.H.T).T, check_finite=False).T
        return mean + (z - pm) @ gain.T, cov - np.linalg.multi_dot((gain, pc, gain.T))

    def gating(self, mean, cov, zs):
        pm, pc = self.project(mean, cov)
        chol = np.linalg.cholesky(pc)
        # L^-1 d (np.linalg.solve: scipy's triangular solve stalls on a loaded 2-core box).
        white = np.linalg.solve(chol, (zs - pm).T)
        return np.sum(white * white, axis=0)


def to_xyah(b):
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([b[0] + w / 2, b[1] + h / 2, w / h, h], dtype=np.float64)


def iou_cost(boxes_a, boxes_b):
    """``1 - IoU`` matrix (broadcast, as fast as FairMOT's cython_bbox would be)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return 1.0 - np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def assign(cost, limit):
    if cost.size == 0:
        return [], list(range(cost.shape[0])), list(range(cost.shape[1]))
    _, x, y = lap.lapjv(cost, extend_cost=True, cost_limit=limit)
    matches = [(i, int(j)) for i, j in enumerate(x) if j >= 0]
    return matches, [i for i in range(len(x)) if x[i] < 0], [j for j in range(len(y)) if y[j] < 0]


class RefDet:
    def __init__(self, box, score, feat):
        self.box = np.asarray(box, dtype=np.float64)
        self.score = float(score)
        self.feat = None if feat is None else feat / np.linalg.norm(feat)


class RefTrack:
    def __init__(self, det, kf, track_id, frame_id):
        self.kf = kf
        self.track_id = track_id
        self.mean, self.cov = kf.initiate(to_xyah(det.box))
        self.feat = det.feat
        self.score = det.score
        self.state = "tracked"
        self.activated = frame_id == 1
        self.end_frame = self.start_frame = frame_id

    @property
    def box(self):
        x, y, a, h = self.mean[:4]
        w = a * h
        return np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2])

    def absorb(self, det, frame_id, momentum):
        self.mean, self.cov = self.kf.update(self.mean, self.cov, to_xyah(det.box))
        if det.feat is not None:
            s = momentum * self.feat + (1 - momentum) * det.feat
            self.feat = s / np.linalg.norm(s)
        self.score = det.score
        self.state = "tracked"
        self.activated = True
        self.end_frame = frame_id


class ReferenceTracker:
    """Same constructor and ``update`` contract as ``kdtrack.tracker.Tracker``."""

    def __init__(self, cfg, frame_rate=30.0):
        self.cfg = cfg
        self.kf = RefKalman(cfg.std_weight_position, cfg.std_weight_velocity)
        self.max_time_lost = int(frame_rate / 30.0 * cfg.track_buffer)
        self.frame_id = 0
        self.next_id = 1
        self.tracked = []
        self.lost = []
        self.events = Counter()  # how often each branch ran, so tests can prove coverage

    def emb_cost(self, tracks, dets):
        if not tracks or not dets:
            return np.zeros((len(tracks), len(dets)))
        cost = np.maximum(0.0, cdist(np.array([t.feat for t in tracks]),
                                     np.array([d.feat for d in dets]), "cosine"))
        zs = np.array([to_xyah(d.box) for d in dets])
        for r, t in enumerate(tracks):
            maha = self.kf.gating(t.mean, t.cov, zs)
            cost[r] = self.cfg.motion_lambda * cost[r] + (1 - self.cfg.motion_lambda) * maha
            cost[r, maha > self.cfg.gating_threshold] = np.inf
        return cost

    def update(self, boxes_xyxy, scores, embeddings):
        cfg = self.cfg
        use_emb = cfg.mode != "boxes"
        self.frame_id += 1
        dets = [RefDet(b, s, f if use_emb else None)
                for b, s, f in zip(boxes_xyxy, scores, embeddings) if s > cfg.min_score]
        unconfirmed = [t for t in self.tracked if not t.activated]
        confirmed = [t for t in self.tracked if t.activated]
        pool = confirmed + self.lost
        for t in pool:
            if t.state != "tracked":
                t.mean[7] = 0.0
            t.mean, t.cov = self.kf.predict(t.mean, t.cov)

        refound, newly_lost = [], []
        if cfg.mode == "boxes":
            cost, limit = iou_cost([t.box for t in pool], [d.box for d in dets]), cfg.iou_cost_limit
        else:
            cost, limit = self.emb_cost(pool, dets), cfg.embedding_cost_limit
        matches, u_pool, u_det = assign(cost, limit)
        for i, j in matches:
            if pool[i].state != "tracked":
                refound.append(pool[i])
            pool[i].absorb(dets[j], self.frame_id, cfg.embedding_momentum)
        dets = [dets[j] for j in u_det]
        r_tracked = [pool[i] for i in u_pool if pool[i].state == "tracked"]
        if cfg.mode == "embeddings":
            newly_lost = r_tracked
        else:
            matches, u_r, u_det = assign(iou_cost([t.box for t in r_tracked], [d.box for d in dets]),
                                         cfg.iou_cost_limit)
            for i, j in matches:
                r_tracked[i].absorb(dets[j], self.frame_id, cfg.embedding_momentum)
            newly_lost = [r_tracked[i] for i in u_r]
            dets = [dets[j] for j in u_det]
        for t in newly_lost:
            t.state = "lost"
        self.events["refound"] += len(refound)
        self.events["lost"] += len(newly_lost)

        if cfg.mode == "embeddings":
            cost, limit = self.emb_cost(unconfirmed, dets), cfg.embedding_cost_limit
        else:
            cost = iou_cost([t.box for t in unconfirmed], [d.box for d in dets])
            limit = cfg.unconfirmed_cost_limit
        matches, u_unc, u_det = assign(cost, limit)
        for i, j in matches:
            unconfirmed[i].absorb(dets[j], self.frame_id, cfg.embedding_momentum)
        for i in u_unc:
            unconfirmed[i].state = "removed"
        self.events["confirmed"] += len(matches)
        self.events["unconfirmed_removed"] += len(u_unc)
        new_tracks = []
        for j in u_det:
            if dets[j].score >= cfg.det_thresh:
                new_tracks.append(RefTrack(dets[j], self.kf, self.next_id, self.frame_id))
                self.next_id += 1

        for t in self.lost:
            if t.state == "lost" and self.frame_id - t.end_frame > self.max_time_lost:
                t.state = "removed"
                self.events["expired"] += 1
        tracked = [t for t in self.tracked if t.state == "tracked"] + new_tracks + refound
        lost = [t for t in self.lost if t.state == "lost"] + newly_lost

        drop_t, drop_l = set(), set()
        dist = iou_cost([t.box for t in tracked], [t.box for t in lost])
        for p, q in zip(*np.nonzero(dist < cfg.duplicate_iou_distance)):
            a, b = tracked[p], lost[q]
            if a.end_frame - a.start_frame > b.end_frame - b.start_frame:
                drop_l.add(q)
            else:
                drop_t.add(p)
        self.events["duplicates"] += len(drop_t) + len(drop_l)
        self.tracked = [t for p, t in enumerate(tracked) if p not in drop_t]
        self.lost = [t for q, t in enumerate(lost) if q not in drop_l]

        out = [t for t in self.tracked if t.activated]
        out = [t for t in out
               if (t.box[2] - t.box[0]) * (t.box[3] - t.box[1]) > cfg.min_box_area
               and not (t.box[2] - t.box[0]) > cfg.max_aspect_ratio * (t.box[3] - t.box[1])]
        return (np.array([t.box for t in out]).reshape(-1, 4),
                np.array([t.track_id for t in out], dtype=np.int64),
                np.array([t.score for t in out]))


def random_walk_scene(num_frames: int, num_objects: int, embedding_dim: int, seed: int = 0,
                      birth_death_rate: float = 0.02, occlusion_rate: float = 0.05,
                      false_positive_rate: float = 0.05, image_size=(1920.0, 1080.0)):
    """Synthetic detections of people walking at random: list of (boxes_xyxy, scores, embeddings).

    About ``num_objects`` people are on screen; each frame a person may leave
    (and a new one enter) with ``birth_death_rate``, be missed (occluded)
    with ``occlusion_rate``; clutter boxes appear with ``false_positive_rate``
    per person. Embeddings are a per-person unit vector plus noise (float32);
    boxes jitter by a few pixels and scores are uniform in [0.3, 1].
    """
    rng = np.random.default_rng(seed)
    width, height = image_size

    def spawn(n):
        h = rng.uniform(60, 300, n)
        return {"xy": np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], 1),
                "v": rng.normal(0, 3, (n, 2)), "h": h, "a": rng.uniform(0.35, 0.5, n),
                "e": rng.normal(size=(n, embedding_dim))}

    people = spawn(num_objects)
    frames = []
    for _ in range(num_frames):
        leave = rng.random(num_objects) < birth_death_rate
        if leave.any():
            fresh = spawn(int(leave.sum()))
            for k in people:
                people[k][leave] = fresh[k]
        people["v"] += rng.normal(0, 0.5, people["v"].shape)
        people["xy"] += people["v"]
        people["h"] *= np.exp(rng.normal(0, 0.01, num_objects))
        seen = rng.random(num_objects) >= occlusion_rate
        w = people["a"] * people["h"]
        c = people["xy"] + rng.normal(0, 1.5, (num_objects, 2))
        boxes = np.stack([c[:, 0] - w / 2, c[:, 1] - people["h"] / 2,
                          c[:, 0] + w / 2, c[:, 1] + people["h"] / 2], 1)[seen]
        emb = (people["e"] + rng.normal(0, 0.5, people["e"].shape))[seen]
        n_fp = rng.binomial(num_objects, false_positive_rate)
        if n_fp:
            fp = spawn(n_fp)
            fw = fp["a"] * fp["h"]
            boxes = np.concatenate([boxes, np.stack([fp["xy"][:, 0], fp["xy"][:, 1],
                                                     fp["xy"][:, 0] + fw, fp["xy"][:, 1] + fp["h"]], 1)])
            emb = np.concatenate([emb, fp["e"]])
        order = rng.permutation(len(boxes))
        scores = rng.uniform(0.3, 1.0, len(boxes))
        frames.append((boxes[order].astype(np.float32), scores.astype(np.float32),
                       emb[order].astype(np.float32)))
    return frames
