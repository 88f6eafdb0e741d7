"""IDF stage 2 pseudo-labels: DBSCAN over the person embeddings of one video, and their quality.

PointID (METHOD.md section 4) clusters all detected person embeddings of one
unlabeled video; each cluster is a pseudo identity, outliers get none, and
because a person never appears in two videos the identities are made unique
across the dataset by numbering videos one after another. Everything here is
per video and free of Ray: ``jobs.pseudo_label`` runs it over a cluster.

Quality is measured against the hidden truth the synthetic world writes beside
its clips (MOT ``gt.txt`` rows): detections are matched to true boxes per frame
(Hungarian, IoU >= a threshold), then the pseudo ids of the matched boxes are
compared with the true track ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from kdtrack.boxes import box_iou_xyxy, xywh_to_xyxy


@dataclass
class VideoDetections:
    """What the stage-1 network found in one clip: ``frames`` 1-based, ``boxes_xyxy`` original pixels,
    ``embeddings`` L2-normalised rows; ``num_frames`` decoded frames of the clip (before the stride)."""

    video: str
    frames: np.ndarray  # (N,) int
    boxes_xyxy: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    embeddings: np.ndarray  # (N, k) float32
    num_frames: int

    def __len__(self) -> int:
        return len(self.frames)


def dbscan_labels(embeddings: np.ndarray, *, eps: float, min_samples: int, metric: str = "cosine") -> np.ndarray:
    """scikit-learn DBSCAN of one video's embeddings: ``(N,)`` int cluster labels 0..C-1, -1 = outlier."""
    from sklearn.cluster import DBSCAN

    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, k), got shape {embeddings.shape}")
    if len(embeddings) == 0:
        return np.zeros(0, np.int64)
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings hold NaN or inf")
    return DBSCAN(eps=eps, min_samples=min_samples, metric=metric).fit_predict(embeddings).astype(np.int64)


def valid_trajectories(frames: np.ndarray, labels: np.ndarray, num_frames: int, min_frames: int) -> int:
    """Clusters that can feed a "biased" frame pair: at least ``min_frames`` distinct frames, with boxes in
    both halves of the clip (frames <= num_frames // 2 and after). The paper keeps videos with one."""
    frames, labels = np.asarray(frames), np.asarray(labels)
    half = max(1, int(num_frames) // 2)
    count = 0
    for label in np.unique(labels[labels >= 0]):
        f = np.unique(frames[labels == label])
        if len(f) >= min_frames and (f <= half).any() and (f > half).any():
            count += 1
    return count


def global_pseudo_ids(local_labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unique ids across videos: videos in sorted name order, each cluster numbered after the previous
    video's (dense, from 0; outliers stay -1). Deterministic, so a resumed run numbers the same way."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for video in sorted(local_labels):
        labels = np.asarray(local_labels[video], np.int64)
        clusters = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
        out[video] = np.where(labels >= 0, labels + offset, -1)
        offset += clusters
    return out


def match_to_truth(frames: np.ndarray, boxes_xyxy: np.ndarray, truth_rows: np.ndarray,
                   iou_threshold: float = 0.5) -> np.ndarray:
    """True track id of each detection (-1 when unmatched): per frame, a one-to-one Hungarian matching of
    detections to true boxes (MOT ``gt.txt`` rows ``frame, id, x, y, w, h, ...``) on IoU >= threshold."""
    from scipy.optimize import linear_sum_assignment

    frames = np.asarray(frames, np.int64)
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    truth = np.asarray(truth_rows, np.float64)
    truth = truth.reshape(-1, truth.shape[-1] if truth.ndim == 2 else 9)
    matched = np.full(len(frames), -1, np.int64)
    if not len(frames) or not len(truth):
        return matched
    for frame in np.unique(frames):
        det_idx = np.flatnonzero(frames == frame)
        rows = truth[truth[:, 0] == frame]
        if not len(rows):
            continue
        iou = box_iou_xyxy(boxes[det_idx], xywh_to_xyxy(rows[:, 2:6].astype(np.float32)))
        r, c = linear_sum_assignment(-iou)
        ok = iou[r, c] >= iou_threshold
        matched[det_idx[r[ok]]] = rows[c[ok], 1].astype(np.int64)
    return matched


def clustering_quality(true_ids: Sequence, pseudo_ids: Sequence[int]) -> dict[str, float]:
    """Pseudo labels vs truth over boxes matched to a true person.

    ``true_ids`` must be unique across videos (e.g. ``"video/track"``); pseudo id -1 (outlier) counts as a
    singleton cluster of its own for ARI / NMI. ``purity``: share of clustered (non-outlier) boxes whose
    true id is the majority id of their cluster. ``trajectories_recovered``: share of true tracks for
    which one cluster holds more than half of the track's matched boxes and is itself more than half
    that track. ``outlier_fraction``: matched boxes labelled -1.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    true_ids = np.asarray([str(t) for t in true_ids])
    pseudo = np.asarray(pseudo_ids, np.int64)
    if len(true_ids) != len(pseudo):
        raise ValueError(f"{len(true_ids)} true ids but {len(pseudo)} pseudo ids")
    n = len(pseudo)
    if n == 0:
        return {"boxes": 0, "ari": float("nan"), "nmi": float("nan"), "purity": float("nan"),
                "trajectories_recovered": float("nan"), "outlier_fraction": float("nan"), "true_tracks": 0}
    singles = np.where(pseudo >= 0, pseudo, -1 - np.arange(n))  # each outlier its own cluster
    _, true_codes = np.unique(true_ids, return_inverse=True)
    clustered = pseudo >= 0
    purity = float("nan")
    if clustered.any():
        majority = 0
        for label in np.unique(pseudo[clustered]):
            majority += np.bincount(true_codes[pseudo == label]).max()
        purity = majority / int(clustered.sum())
    recovered = 0
    tracks = np.unique(true_codes)
    for code in tracks:
        in_track = true_codes == code
        labels = pseudo[in_track & clustered]
        if not len(labels):
            continue
        values, counts = np.unique(labels, return_counts=True)
        best = values[counts.argmax()]
        if counts.max() * 2 > in_track.sum() and counts.max() * 2 > (pseudo == best).sum():
            recovered += 1
    return {
        "boxes": int(n),
        "ari": float(adjusted_rand_score(true_codes, singles)),
        "nmi": float(normalized_mutual_info_score(true_codes, singles)),
        "purity": float(purity),
        "trajectories_recovered": recovered / len(tracks),
        "outlier_fraction": float((~clustered).mean()),
        "true_tracks": int(len(tracks)),
    }


def summarize_labels(videos: Iterable[VideoDetections], local_labels: Mapping[str, np.ndarray],
                     min_track_frames: int) -> list[dict]:
    """One row per clustered video: boxes, clusters, outliers, valid trajectories and the kept flag."""
    rows = []
    for det in videos:
        labels = np.asarray(local_labels[det.video])
        clusters = len(np.unique(labels[labels >= 0]))
        valid = valid_trajectories(det.frames, labels, det.num_frames, min_track_frames)
        rows.append({
            "video": det.video, "frames": int(det.num_frames), "boxes": int(len(labels)), "clusters": int(clusters),
            "outliers": int((labels < 0).sum()),
            "outlier_fraction": float((labels < 0).mean()) if len(labels) else float("nan"),
            "valid_trajectories": int(valid), "kept": bool(valid > 0),
        })
    return rows


def clip_frame_indices(num_frames: int, stride: int, max_frames: int = 0) -> list[int]:
    """0-based frames of a clip to run: every ``stride``-th, then at most ``max_frames`` spread evenly."""
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    indices = list(range(0, max(0, int(num_frames)), stride))
    if max_frames > 0 and len(indices) > max_frames:
        keep = np.unique(np.linspace(0, len(indices) - 1, max_frames).round().astype(int))
        indices = [indices[i] for i in keep]
    return indices


def detect_clip(detector, path: str, video: str, *, stride: int, max_frames: int = 0,
                batch_frames: int = 8) -> VideoDetections:
    """Run the stage-1 network over a clip's frames (decoded by seeking with OpenCV): every detection
    above the detector's score threshold, with its embedding. Raises ``VideoError`` on a clip OpenCV
    cannot open or decode, and when it holds no frame."""
    import cv2

    from kdtrack.formats.video import VideoError, read_video_frames, read_video_info

    num_frames = read_video_info(path)[0]
    indices = clip_frame_indices(num_frames, stride, max_frames)
    if not indices:
        raise VideoError(f"{path}: the container reports {num_frames} frames")
    frames, boxes, scores, embeddings = [], [], [], []
    for start in range(0, len(indices), max(1, batch_frames)):
        chunk = indices[start:start + batch_frames]
        images = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in read_video_frames(path, chunk)]
        dets, _, _ = detector.detect_batch(images)
        for index, det in zip(chunk, dets):
            frames.append(np.full(len(det.scores), index + 1, np.int64))
            boxes.append(det.boxes_xyxy)
            scores.append(det.scores)
            embeddings.append(det.embeddings)
    k = max((e.shape[1] for e in embeddings if e.ndim == 2), default=0)  # a frame without detections may be (0, 0)
    rows = [np.asarray(e, np.float32).reshape(-1, k) for e in embeddings if len(e)]
    return VideoDetections(
        video=video, frames=np.concatenate(frames).astype(np.int64),
        boxes_xyxy=np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        scores=np.concatenate(scores).astype(np.float32),
        embeddings=np.concatenate(rows) if rows else np.zeros((0, k), np.float32),  # no detection in the clip
        num_frames=int(num_frames))
