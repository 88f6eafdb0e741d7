"""Tracker thresholds; defaults are FairMOT's published values (METHOD.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrackerConfig:
    """Every constant of FairMOT's online solver, named."""

    mode: Literal["both", "boxes", "embeddings"] = "both"  # association ablation (KDMOT Table 3)
    min_score: float = 0.4  # detections with score <= this are dropped before association (FairMOT conf_thres)
    det_thresh: float = 0.4  # min score for a detection to start a new track
    track_buffer: int = 30  # frames a lost track is kept at 30 fps (scaled by frame_rate / 30)
    embedding_cost_limit: float = 0.4  # lapjv cost_limit of the embedding (+motion) stage
    motion_lambda: float = 0.98  # fused cost = lambda * cosine + (1 - lambda) * mahalanobis^2
    gating_threshold: float = 9.4877  # chi2inv95 with 4 dof on (x, y, a, h)
    iou_cost_limit: float = 0.5  # 1 - IoU threshold of the second (box) stage
    unconfirmed_cost_limit: float = 0.7  # 1 - IoU threshold for unconfirmed tracks
    duplicate_iou_distance: float = 0.15  # tracked/lost pairs closer than this are duplicates
    embedding_momentum: float = 0.9  # s = momentum * s + (1 - momentum) * f, renormalised
    std_weight_position: float = 1.0 / 20  # Kalman process/measurement noise on position
    std_weight_velocity: float = 1.0 / 160  # Kalman process noise on velocity
    min_box_area: float = 100.0  # output filter: drop tracks with w*h <= this
    max_aspect_ratio: float = 1.6  # output filter: drop tracks with w/h > this
