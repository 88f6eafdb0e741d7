"""MOTChallenge scoring: motmetrics (CLEAR + identity) and TrackEval (HOTA), wrapped.

Nothing here re-implements a metric. This module only does what the
MOTChallenge devkit does *before* scoring, identically for both libraries:

* MOT16/17 ground truth: keep class ``pedestrian_class`` rows with
  consider != 0; a tracker box matched (Hungarian on IoU, IoU >= 0.5) to a gt
  box of a distractor class (2 person on vehicle, 7 static person,
  8 distractor, 12 reflection) is removed — it is neither TP nor FP.
  MOT15-style gt (e.g. TUD) has no classes: no preprocessing.
* Every frame ``1 .. seq_length`` is scored, including frames where the tracker
  wrote nothing (their gt boxes are misses; FairMOT's evaluator skips them).

Per sequence, :func:`evaluate_sequence` returns the motmetrics event table and
TrackEval's HOTA counts; :func:`summarize_sequences` turns a list of them into
per-sequence metrics and a combined row whose counts are SUMMED across
sequences before ratios are derived (motmetrics ``compute_many(...,
generate_overall=True)``, TrackEval ``HOTA.combine_sequences``).

Box rows follow the MOT text layout (FORMATS.md): gt ``(N, 9)`` = frame, id,
x, y, w, h, consider, class, visibility; results ``(M, >=6)`` = frame, id, x,
y, w, h, ... (pixels, top-left + size). Ratios come out as fractions in 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from kdtrack.boxes import box_iou_xyxy
from kdtrack.config import EvalConfig
from kdtrack.metrics._motmetrics_compat import import_motmetrics

BENCHMARKS = ("MOT15", "MOT16", "MOT17")  # MOT20 would add distractor class 6 (non_mot_vehicle): not supported

# gt column indices of the MOT text layout
_FRAME, _ID, _X, _Y, _W, _H, _CONSIDER, _CLASS = range(8)
_EPS = float(np.finfo(float).eps)

# motmetrics metric name -> our key; ratios are fractions, counts are ints
_MOTMETRICS_KEYS = {
    "mota": "MOTA",
    "motp": "MOTP",
    "idf1": "IDF1",
    "idp": "IDP",
    "idr": "IDR",
    "recall": "Rcll",
    "precision": "Prcn",
    "num_switches": "IDs",
    "num_fragmentations": "FM",
    "num_false_positives": "FP",
    "num_misses": "FN",
    "num_detections": "TP",  # matches + id switches (CLEAR TP)
    "mostly_tracked": "MT",
    "partially_tracked": "PT",
    "mostly_lost": "ML",
    "num_objects": "num_gt",
    "num_predictions": "num_predictions",
    "num_unique_objects": "num_gt_ids",
}
_COUNT_KEYS = {"IDs", "FM", "FP", "FN", "TP", "MT", "PT", "ML", "num_gt", "num_predictions", "num_gt_ids"}
_HOTA_KEYS = ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr")


def import_trackeval():
    """TrackEval (HOTA), installed ``--no-deps`` by the Makefile: its opencv-python pin clashes with cv2-headless."""
    try:
        import trackeval
    except ImportError as exc:  # depends on how the environment was installed
        raise ImportError(
            "HOTA needs TrackEval: pip install --no-deps trackeval==1.3.0 "
            "(without --no-deps it pulls opencv-python, which clobbers opencv-python-headless)"
        ) from exc
    return trackeval


@dataclass
class SequenceEvaluation:
    """Everything needed to score one sequence alone or combined with others (picklable)."""

    name: str
    num_frames: int  # frames scored (1 .. seq_length)
    events: pd.DataFrame  # motmetrics MOTAccumulator.events (RAW rows included: the ID metrics need them)
    hota: dict[str, Any]  # TrackEval HOTA.eval_sequence output (arrays over alpha)
    num_tracker_removed: int = 0  # tracker boxes dropped on distractors
    num_gt_ignored: int = 0  # gt rows dropped (consider == 0 or non-pedestrian class)


# --------------------------------------------------------------------------- preprocessing


def _rows(array: np.ndarray | None, min_cols: int, what: str) -> np.ndarray:
    a = np.zeros((0, min_cols)) if array is None else np.asarray(array, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, max(min_cols, a.shape[-1] if a.ndim == 2 else 0)))
    if a.ndim != 2 or a.shape[1] < min_cols:
        raise ValueError(f"{what}: expected an (N, >={min_cols}) array of MOT rows, got shape {a.shape}")
    return a


def _xywh_to_xyxy64(rows: np.ndarray) -> np.ndarray:
    """``(N, >=6)`` MOT rows -> ``(N, 4)`` float64 x1, y1, x2, y2 (no float32 rounding)."""
    xy = rows[:, _X:_Y + 1]
    return np.concatenate([xy, xy + rows[:, _W:_H + 1]], axis=1)


def uses_preprocessing(benchmark: str) -> bool:
    """MOT16/17 gt carries classes and consider flags; MOT15 gt does not."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r} (known: {', '.join(BENCHMARKS)})")
    return benchmark != "MOT15"


def distractor_tracker_mask(gt_frame: np.ndarray, trk_frame: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """``(M,)`` bool: tracker boxes of one frame matched to a distractor-class gt box.

    Matching as the MOTChallenge devkit / TrackEval: all gt boxes of the frame
    (any class) against all tracker boxes, IoU below ``mot_distractor_iou`` set
    to 0, Hungarian assignment maximising IoU; a pair counts only if IoU > 0.
    """
    removed = np.zeros(len(trk_frame), dtype=bool)
    if len(gt_frame) == 0 or len(trk_frame) == 0:
        return removed
    scores = box_iou_xyxy(_xywh_to_xyxy64(gt_frame), _xywh_to_xyxy64(trk_frame))
    scores[scores < cfg.mot_distractor_iou - _EPS] = 0.0
    rows, cols = linear_sum_assignment(-scores)
    matched = scores[rows, cols] > _EPS
    rows, cols = rows[matched], cols[matched]
    is_distractor = np.isin(gt_frame[rows, _CLASS].astype(np.int64), np.asarray(cfg.mot_distractor_classes))
    removed[cols[is_distractor]] = True
    return removed


def gt_keep_mask(gt_frame: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """``(N,)`` bool: gt rows that are scored (pedestrian class with consider != 0)."""
    return (gt_frame[:, _CONSIDER] != 0) & (gt_frame[:, _CLASS].astype(np.int64) == cfg.mot_pedestrian_class)


def _split_by_frame(rows: np.ndarray, seq_length: int, what: str) -> list[np.ndarray]:
    """Rows grouped per frame ``1..seq_length`` (index 0 = frame 1); rows elsewhere are an error."""
    frames = rows[:, _FRAME]
    if len(rows):
        if not np.all(frames == np.round(frames)):
            bad = int(np.flatnonzero(frames != np.round(frames))[0])
            raise ValueError(f"{what}: row {bad + 1} has a non-integer frame {frames[bad]}")
        out_of_range = (frames < 1) | (frames > seq_length)
        if out_of_range.any():
            bad = int(np.flatnonzero(out_of_range)[0])
            raise ValueError(
                f"{what}: row {bad + 1} has frame {int(frames[bad])} outside 1..{seq_length} "
                "(half-val results must be renumbered from 1)"
            )
    order = np.argsort(frames, kind="stable")
    rows, frames = rows[order], frames[order].astype(np.int64)
    bounds = np.searchsorted(frames, np.arange(1, seq_length + 2))
    return [rows[bounds[t]:bounds[t + 1]] for t in range(seq_length)]


def _check_unique_ids(ids: np.ndarray, frame: int, what: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{what}: frame {frame} has id {int(values[counts > 1][0])} more than once")


# --------------------------------------------------------------------------- scoring


def evaluate_sequence(
    name: str,
    gt_rows: np.ndarray,
    result_rows: np.ndarray,
    seq_length: int,
    *,
    benchmark: str,
    cfg: EvalConfig | None = None,
) -> SequenceEvaluation:
    """Score one sequence: gt ``(N, 9)`` and tracker ``(M, >=6)`` MOT rows, frames ``1..seq_length``.

    Returns the motmetrics events and TrackEval HOTA counts; turn them into
    numbers with :func:`summarize_sequences`.
    """
    trackeval = import_trackeval()

    cfg = cfg or EvalConfig()
    mm = import_motmetrics()
    preprocess = uses_preprocessing(benchmark)
    if seq_length < 1:
        raise ValueError(f"{name}: seq_length must be >= 1, got {seq_length}")
    gt = _rows(gt_rows, 8 if preprocess else 6, f"{name} gt")
    trk = _rows(result_rows, 6, f"{name} results")
    gt_frames = _split_by_frame(gt, seq_length, f"{name} gt")
    trk_frames = _split_by_frame(trk, seq_length, f"{name} results")

    acc = mm.MOTAccumulator(auto_id=False)
    max_distance = 1.0 - cfg.mot_iou_threshold  # motmetrics pairs only when 1 - IoU <= this
    gt_ids_t: list[np.ndarray] = []
    trk_ids_t: list[np.ndarray] = []
    similarity_t: list[np.ndarray] = []
    removed_total = ignored_total = 0
    for t, (g, h) in enumerate(zip(gt_frames, trk_frames), start=1):
        if preprocess:
            drop = distractor_tracker_mask(g, h, cfg)
            h = h[~drop]
            keep = gt_keep_mask(g, cfg)
            removed_total += int(drop.sum())
            ignored_total += int((~keep).sum())
            g = g[keep]
        g_ids = g[:, _ID].astype(np.int64)
        h_ids = h[:, _ID].astype(np.int64)
        _check_unique_ids(g_ids, t, f"{name} gt")
        _check_unique_ids(h_ids, t, f"{name} results")
        dists = mm.distances.iou_matrix(g[:, _X:_H + 1], h[:, _X:_H + 1], max_iou=max_distance)
        acc.update(g_ids, h_ids, dists, frameid=t)
        gt_ids_t.append(g_ids)
        trk_ids_t.append(h_ids)
        similarity_t.append(box_iou_xyxy(_xywh_to_xyxy64(g), _xywh_to_xyxy64(h)))

    hota = trackeval.metrics.HOTA().eval_sequence(_trackeval_data(gt_ids_t, trk_ids_t, similarity_t))
    return SequenceEvaluation(
        name=name,
        num_frames=seq_length,
        events=acc.events,
        hota=hota,
        num_tracker_removed=removed_total,
        num_gt_ignored=ignored_total,
    )


def _trackeval_data(gt_ids_t: list[np.ndarray], trk_ids_t: list[np.ndarray], sim_t: list[np.ndarray]) -> dict:
    """TrackEval's per-sequence dict: ids relabelled to 0..K-1 as its datasets do after preprocessing."""

    def relabel(ids_t: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        unique = np.unique(np.concatenate(ids_t)) if ids_t else np.zeros(0, np.int64)
        return [np.searchsorted(unique, ids).astype(int) for ids in ids_t], len(unique)

    gt_ids, num_gt_ids = relabel(gt_ids_t)
    trk_ids, num_trk_ids = relabel(trk_ids_t)
    return {
        "num_timesteps": len(gt_ids_t),
        "num_gt_ids": num_gt_ids,
        "num_tracker_ids": num_trk_ids,
        "num_gt_dets": int(sum(len(x) for x in gt_ids)),
        "num_tracker_dets": int(sum(len(x) for x in trk_ids)),
        "gt_ids": gt_ids,
        "tracker_ids": trk_ids,
        "similarity_scores": sim_t,
    }


def _clean(value: Any, key: str) -> Any:
    """Counts -> int, ratios -> float, NaN (0/0) -> None (valid JSON)."""
    value = float(value)
    if math.isnan(value):
        return None
    return int(round(value)) if key in _COUNT_KEYS else value


def _hota_summary(res: dict[str, Any]) -> dict[str, float]:
    """TrackEval's summary value of each field: the mean over the 19 alpha thresholds."""
    return {key: float(np.mean(res[key])) for key in _HOTA_KEYS}


def summarize_sequences(evaluations: Sequence[SequenceEvaluation]) -> dict[str, dict]:
    """``{"sequences": {name: metrics}, "combined": metrics}``; combined sums counts first.

    MOTP follows the devkit: mean IoU of matched pairs (1 - motmetrics' mean distance).
    """
    trackeval = import_trackeval()

    if not evaluations:
        raise ValueError("no sequences to summarize")
    names = [e.name for e in evaluations]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate sequence names: {names}")
    mm = import_motmetrics()
    table = mm.metrics.create().compute_many(
        [e.events for e in evaluations],
        metrics=list(_MOTMETRICS_KEYS),
        names=names,
        generate_overall=True,
    )
    hota_metric = trackeval.metrics.HOTA()
    hota_combined = hota_metric.combine_sequences({e.name: e.hota for e in evaluations})

    def row(label: str, hota_res: dict, num_frames: int, removed: int, ignored: int) -> dict[str, Any]:
        values = table.loc[label]
        out: dict[str, Any] = {}
        for mm_key, key in _MOTMETRICS_KEYS.items():
            out[key] = _clean(values[mm_key], key)
        if out["MOTP"] is not None:
            out["MOTP"] = 1.0 - out["MOTP"]
        out.update(_hota_summary(hota_res))
        out["num_frames"] = int(num_frames)
        out["num_tracker_removed"] = int(removed)
        out["num_gt_ignored"] = int(ignored)
        return out

    sequences = {
        e.name: row(e.name, e.hota, e.num_frames, e.num_tracker_removed, e.num_gt_ignored) for e in evaluations
    }
    combined = row(
        "OVERALL",
        hota_combined,
        sum(e.num_frames for e in evaluations),
        sum(e.num_tracker_removed for e in evaluations),
        sum(e.num_gt_ignored for e in evaluations),
    )
    return {"sequences": sequences, "combined": combined}


# --------------------------------------------------------------------------- printing


_TABLE_COLUMNS = (
    ("MOTA", "pct"), ("IDF1", "pct"), ("HOTA", "pct"), ("DetA", "pct"), ("AssA", "pct"), ("MOTP", "pct"),
    ("Rcll", "pct"), ("Prcn", "pct"), ("FP", "int"), ("FN", "int"), ("IDs", "int"), ("FM", "int"),
    ("MT", "int"), ("PT", "int"), ("ML", "int"), ("num_frames", "int"),
)


def format_table(metrics: dict[str, dict]) -> str:
    """Human table: ratios in percent with one decimal, counts as integers."""
    rows = [(name, values) for name, values in metrics["sequences"].items()]
    rows.append(("COMBINED", metrics["combined"]))
    width = max(len(name) for name, _ in rows)
    header = " ".join([f"{'sequence':<{width}}"] + [f"{c:>7}" for c, _ in _TABLE_COLUMNS])
    lines = [header]
    for name, values in rows:
        cells = []
        for column, kind in _TABLE_COLUMNS:
            v = values.get(column)
            cells.append(f"{'n/a':>7}" if v is None else f"{100 * v:7.1f}" if kind == "pct" else f"{int(v):7d}")
        lines.append(" ".join([f"{name:<{width}}"] + cells))
    return "\n".join(lines)


