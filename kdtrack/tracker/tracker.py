"""FairMOT's online tracker (METHOD.md section 5) with track state held in arrays.

All tracks live in one slot store (``_TrackStore``): row ``i`` of every array
is one track. FairMOT keeps two ordered lists (tracked, lost) whose order
decides assignment ties; here each track carries a ``list_key`` that is
renewed whenever it joins a list, so sorting a list's slots by key recovers
exactly FairMOT's list order without moving any data. Kalman predict,
gating, distances and updates run once per frame over all tracks at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdtrack.tracker.config import TrackerConfig
from kdtrack.tracker.kalman import KalmanFilter, xyah_to_xyxy, xyxy_to_xyah
from kdtrack.tracker.matching import cosine_distance, gate_and_fuse, iou_distance, linear_assignment

TRACKED, LOST = 1, 2  # track states; removed tracks free their slot
MODES = ("both", "boxes", "embeddings")
BASE_FRAME_RATE = 30.0  # track_buffer is given in frames at this rate
INITIAL_CAPACITY = 64  # slots allocated up front; doubled when full
EMBEDDING_DTYPE = np.float32  # track/detection embeddings: half the memory traffic of float64


@dataclass
class ActiveTracks:
    """One frame's output: ``boxes_xyxy (M, 4)`` pixels, ``track_ids (M,)`` int64, ``scores (M,)``."""

    boxes_xyxy: np.ndarray
    track_ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.track_ids)

    def __getitem__(self, keep) -> "ActiveTracks":
        return ActiveTracks(self.boxes_xyxy[keep], self.track_ids[keep], self.scores[keep])


def filter_output(tracks: ActiveTracks, cfg: TrackerConfig) -> ActiveTracks:
    """Drop boxes with ``w * h <= min_box_area`` or ``w / h > max_aspect_ratio`` (FairMOT's demo loop)."""
    w = tracks.boxes_xyxy[:, 2] - tracks.boxes_xyxy[:, 0]
    h = tracks.boxes_xyxy[:, 3] - tracks.boxes_xyxy[:, 1]
    keep = (w * h > cfg.min_box_area) & ~(w > cfg.max_aspect_ratio * h)
    return tracks[keep]


class _TrackStore:
    """Growable per-track arrays; ``alive`` marks used slots."""

    def __init__(self, embedding_dim: int, capacity: int = INITIAL_CAPACITY):
        self.embedding_dim = embedding_dim
        self.mean = np.zeros((capacity, 8))
        self.cov = np.zeros((capacity, 3, 4))  # compact block-diagonal covariance (kalman.py)
        self.emb = np.zeros((capacity, embedding_dim), EMBEDDING_DTYPE)
        self.track_id = np.zeros(capacity, np.int64)
        self.state = np.zeros(capacity, np.int8)
        self.activated = np.zeros(capacity, bool)
        self.score = np.zeros(capacity)
        self.end_frame = np.zeros(capacity, np.int64)  # last frame the track was matched
        self.start_frame = np.zeros(capacity, np.int64)
        self.list_key = np.zeros(capacity, np.int64)  # order inside the tracked / lost list
        self.alive = np.zeros(capacity, bool)

    def allocate(self, n: int) -> np.ndarray:
        """``n`` free slot indices, growing every array when needed."""
        free = np.flatnonzero(~self.alive)
        if len(free) < n:
            old = len(self.alive)
            new = max(2 * old, old + n - len(free))
            for name in ("mean", "cov", "emb", "track_id", "state", "activated", "score",
                         "end_frame", "start_frame", "list_key", "alive"):
                arr = getattr(self, name)
                grown = np.zeros((new,) + arr.shape[1:], arr.dtype)
                grown[:old] = arr
                setattr(self, name, grown)
            free = np.flatnonzero(~self.alive)
        return free[:n]

    def lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the tracked list and of the lost list, each in list order."""
        slots = np.flatnonzero(self.alive)
        slots = slots[np.argsort(self.list_key[slots], kind="stable")]
        state = self.state[slots]
        return slots[state == TRACKED], slots[state == LOST]


class Tracker:
    """Online multi-object tracker; one instance per video sequence.

    ``update(boxes_xyxy (N, 4), scores (N,), embeddings (N, D))`` consumes one
    frame and returns the activated tracks after ``filter_output``. Ids start
    at 1 for every new tracker (or after ``reset``).

    Modes: ``"both"`` is FairMOT (embedding + motion stage, then IoU stages);
    ``"boxes"`` replaces the embedding stage by IoU on the same track pool
    (tracked + lost, predicted boxes, ``iou_cost_limit``); ``"embeddings"``
    drops the IoU stage on tracked tracks and matches unconfirmed tracks by the
    gated embedding cost (``embedding_cost_limit``) instead of IoU.

    Small, deliberate differences from FairMOT's code: IoU is continuous
    (no +1 pixel as in cython_bbox); a re-activated lost track takes the new
    detection's score (FairMOT keeps the stale one); embeddings are stored as
    float32; the removed-track list FairMOT grows forever is not kept.
    """

    def __init__(self, cfg: TrackerConfig | None = None, frame_rate: float = 30.0):
        self.cfg = cfg if cfg is not None else TrackerConfig()
        if self.cfg.mode not in MODES:
            raise ValueError(f"TrackerConfig.mode must be one of {MODES}, got {self.cfg.mode!r}")
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        self.frame_rate = float(frame_rate)
        self.max_time_lost = int(self.frame_rate / BASE_FRAME_RATE * self.cfg.track_buffer)
        self.kf = KalmanFilter(self.cfg.std_weight_position, self.cfg.std_weight_velocity)
        self.reset()

    def reset(self) -> None:
        """Forget every track; the next id is 1 and the next frame is frame 1."""
        self.frame_id = 0
        self._next_id = 1
        self._next_key = 0
        self._store: _TrackStore | None = None

    @property
    def uses_embeddings(self) -> bool:
        return self.cfg.mode != "boxes"

    # -- input -------------------------------------------------------------------------------

    def _check_inputs(self, boxes_xyxy, scores, embeddings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame = self.frame_id + 1
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"frame {frame}: boxes_xyxy must be (N, 4), got shape {boxes.shape}")
        n = len(boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != n:
            raise ValueError(f"frame {frame}: {n} boxes but {len(scores)} scores")
        if embeddings is None:
            if self.uses_embeddings:
                raise ValueError(f"frame {frame}: mode {self.cfg.mode!r} needs embeddings")
            embeddings = np.zeros((n, 0))
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or len(emb) != n:
            raise ValueError(f"frame {frame}: embeddings must be (N={n}, D), got shape {emb.shape}")
        bad = ~(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
        if bad.any():
            raise ValueError(f"frame {frame}: detection {int(np.flatnonzero(bad)[0])} has a non-finite box or score")
        flat = (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 2] < boxes[:, 0])
        if flat.any():
            i = int(np.flatnonzero(flat)[0])
            raise ValueError(f"frame {frame}: detection {i} box {boxes[i].tolist()} has x2 < x1 or y2 <= y1")
        return boxes, scores, emb

    def _normalise(self, emb: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> unit rows (float32); zero or non-finite rows are an error."""
        emb = np.asarray(emb, dtype=EMBEDDING_DTYPE)
        norm = np.sqrt(np.einsum("nd,nd->n", emb, emb))
        if not np.all(np.isfinite(norm) & (norm > 0)):
            i = int(np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))[0])
            raise ValueError(f"frame {self.frame_id}: embedding of detection {i} is zero or non-finite")
        return emb / norm[:, None]

    # -- one frame ---------------------------------------------------------------------------

    def update(self, boxes_xyxy: np.ndarray, scores: np.ndarray,
               embeddings: np.ndarray | None) -> ActiveTracks:
        """Consume one frame of detections; return this frame's active tracks (filtered)."""
        boxes, scores, emb = self._check_inputs(boxes_xyxy, scores, embeddings)
        self.frame_id += 1
        cfg = self.cfg
        keep = scores > cfg.min_score
        if not keep.all():
            boxes, scores, emb = boxes[keep], scores[keep], emb[keep]
        det_xyah = xyxy_to_xyah(boxes)
        if self.uses_embeddings:
            det_emb = self._normalise(emb)
        else:
            det_emb = np.zeros((len(boxes), 0), EMBEDDING_DTYPE)
        if self._store is None or (not self._store.alive.any() and self._store.embedding_dim != det_emb.shape[1]):
            self._store = _TrackStore(det_emb.shape[1])
        st = self._store
        if det_emb.shape[1] != st.embedding_dim and len(boxes):
            raise ValueError(f"frame {self.frame_id}: embeddings have D={det_emb.shape[1]}, "
                             f"earlier frames had D={st.embedding_dim}")

        tracked, lost_before = st.lists()
        confirmed = st.activated[tracked]
        unconfirmed = tracked[~confirmed]
        tracked = tracked[confirmed]
        pool = np.concatenate([tracked, lost_before])

        # (1) predict the pool; non-tracked tracks stop growing/shrinking (vh = 0).
        if len(pool):
            mean = st.mean[pool]
            mean[st.state[pool] != TRACKED, 7] = 0.0
            st.mean[pool], st.cov[pool] = self.kf.multi_predict(mean, st.cov[pool])

        # (2) embedding + motion (or IoU in "boxes" mode) on the whole pool.
        if cfg.mode == "boxes":
            cost = iou_distance(xyah_to_xyxy(st.mean[pool]), boxes)
            limit = cfg.iou_cost_limit
        else:
            cost = self._embedding_cost(pool, det_xyah, det_emb)
            limit = cfg.embedding_cost_limit
        matches, u_pool, u_det = linear_assignment(cost, limit)
        m_slots = pool[matches[:, 0]]
        upd_slots = [m_slots]
        upd_dets = [matches[:, 1]]
        refound = m_slots[st.state[m_slots] != TRACKED]  # pool order = lost-list order

        # (3) IoU between leftover detections and leftover *tracked* tracks.
        r_tracked = pool[u_pool]
        r_tracked = r_tracked[st.state[r_tracked] == TRACKED]
        if cfg.mode == "embeddings" or len(r_tracked) == 0 or len(u_det) == 0:
            newly_lost = r_tracked
        else:
            cost = iou_distance(xyah_to_xyxy(st.mean[r_tracked]), boxes[u_det])
            matches, u_r, u_det2 = linear_assignment(cost, cfg.iou_cost_limit)
            upd_slots.append(r_tracked[matches[:, 0]])
            upd_dets.append(u_det[matches[:, 1]])
            newly_lost = r_tracked[u_r]
            u_det = u_det[u_det2]

        # (4) unconfirmed tracks (one frame old) vs what is left; unmatched ones die.
        if len(unconfirmed) and len(u_det):
            if cfg.mode == "embeddings":
                cost = self._embedding_cost(unconfirmed, det_xyah[u_det], det_emb[u_det])
                limit = cfg.embedding_cost_limit
            else:
                cost = iou_distance(xyah_to_xyxy(st.mean[unconfirmed]), boxes[u_det])
                limit = cfg.unconfirmed_cost_limit
            matches, u_unc, u_det3 = linear_assignment(cost, limit)
            upd_slots.append(unconfirmed[matches[:, 0]])
            upd_dets.append(u_det[matches[:, 1]])
            st.alive[unconfirmed[u_unc]] = False
            u_det = u_det[u_det3]
        else:
            st.alive[unconfirmed] = False

        # Apply every match of stages 2-4 in one batched Kalman update.
        upd_slots = np.concatenate(upd_slots)
        upd_dets = np.concatenate(upd_dets)
        if len(upd_slots):
            st.mean[upd_slots], st.cov[upd_slots] = self.kf.update(
                st.mean[upd_slots], st.cov[upd_slots], det_xyah[upd_dets])
            if self.uses_embeddings:
                m = cfg.embedding_momentum
                smooth = m * st.emb[upd_slots] + (1.0 - m) * det_emb[upd_dets]
                smooth /= np.linalg.norm(smooth, axis=1, keepdims=True)
                st.emb[upd_slots] = smooth
            st.state[upd_slots] = TRACKED
            st.activated[upd_slots] = True
            st.score[upd_slots] = scores[upd_dets]
            st.end_frame[upd_slots] = self.frame_id
        st.state[newly_lost] = LOST

        # (5) new tracks from confident leftovers, then refound tracks join the tracked list.
        new_dets = u_det[scores[u_det] >= cfg.det_thresh]
        if len(new_dets):
            slots = st.allocate(len(new_dets))
            st.mean[slots], st.cov[slots] = self.kf.initiate(det_xyah[new_dets])
            st.emb[slots] = det_emb[new_dets]
            st.track_id[slots] = np.arange(self._next_id, self._next_id + len(slots))
            self._next_id += len(slots)
            st.state[slots] = TRACKED
            st.activated[slots] = self.frame_id == 1
            st.score[slots] = scores[new_dets]
            st.end_frame[slots] = self.frame_id
            st.start_frame[slots] = self.frame_id
            st.alive[slots] = True
            self._assign_keys(slots)
        self._assign_keys(refound)
        self._assign_keys(newly_lost)

        # (6) lost tracks (from before this frame) expire after max_time_lost frames.
        still_lost = lost_before[st.state[lost_before] == LOST]
        expired = still_lost[self.frame_id - st.end_frame[still_lost] > self.max_time_lost]
        st.alive[expired] = False

        # (7) a tracked and a lost track on the same box: keep the longer one.
        tracked_now, lost_now = st.lists()
        n_tracked = len(tracked_now)
        boxes_now = xyah_to_xyxy(st.mean[np.concatenate([tracked_now, lost_now])])
        tracked_boxes = boxes_now[:n_tracked]
        keep = st.activated[tracked_now]
        if n_tracked and len(lost_now):
            dist = iou_distance(tracked_boxes, boxes_now[n_tracked:])
            p, q = np.nonzero(dist < cfg.duplicate_iou_distance)
            if len(p):
                tp, tq = tracked_now[p], lost_now[q]
                tracked_older = st.end_frame[tp] - st.start_frame[tp] > st.end_frame[tq] - st.start_frame[tq]
                st.alive[tq[tracked_older]] = False
                st.alive[tp[~tracked_older]] = False
                keep &= st.alive[tracked_now]

        out = tracked_now[keep]
        tracks = ActiveTracks(tracked_boxes[keep], st.track_id[out], st.score[out])
        return filter_output(tracks, cfg)

    def _embedding_cost(self, slots: np.ndarray, det_xyah: np.ndarray, det_emb: np.ndarray) -> np.ndarray:
        """Cosine distance gated and blended with the Mahalanobis distance, ``(len(slots), N)``.

        The gate is computed first; cosine distances are only computed for the
        tracks that have at least one detection inside it (all other rows are
        ``inf`` whatever their cosine), which skips the ``(T, D) x (D, N)``
        product for far-away lost tracks.
        """
        st, cfg = self._store, self.cfg
        maha = self.kf.gating_distance(st.mean[slots], st.cov[slots], det_xyah)
        rows = np.flatnonzero((maha <= cfg.gating_threshold).any(axis=1))
        if len(rows) == len(slots):
            cos = cosine_distance(st.emb[slots], det_emb)
            return gate_and_fuse(cos, maha, cfg.gating_threshold, cfg.motion_lambda)
        cost = np.full(maha.shape, np.inf)
        if len(rows):
            cos = cosine_distance(st.emb[slots[rows]], det_emb)
            cost[rows] = gate_and_fuse(cos, maha[rows], cfg.gating_threshold, cfg.motion_lambda)
        return cost

    def _assign_keys(self, slots: np.ndarray) -> None:
        """Append ``slots`` (in this order) at the end of their list."""
        n = len(slots)
        if n:
            self._store.list_key[slots] = np.arange(self._next_key, self._next_key + n)
            self._next_key += n
