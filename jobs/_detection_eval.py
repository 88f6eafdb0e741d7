"""Person detection of a checkpoint on CrowdHuman's val split (``jobs.evaluate detection``).

``run_detection(checkpoint, data_root)`` runs the student over every image of
``<data_root>/crowdhuman/annotation_val.odgt`` (``Images/`` beside it: the
real layout, or a synthetic world) and scores its boxes against the visible
person boxes (``kdtrack.formats.crowdhuman``; ``mask`` regions are not scored)
with :func:`kdtrack.metrics.detection.detection_metrics`: AP over all scores
and recall / precision at each ``score_thresholds`` entry (person search keeps
gallery boxes at ``eval.ps_score_threshold``, so a detector that ranks well
but scores low finds nothing there). Prints a table, writes JSON atomically and
logs ``detection/{metric}`` to MLflow when given a tracking URI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from kdtrack.data.dataset import read_image_rgb

DATASET = "detection"
MIN_SCORE = 0.05  # detections below this are not decoded; AP is the area above it
DEFAULT_THRESHOLDS = (0.4, 0.5)


def run_detection(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    out: str | Path | None = None,
    score_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    iou_threshold: float = 0.5,
    batch_size: int = 16,
    mlflow_uri: str | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Detect, score, print, write ``out`` and log to MLflow; returns the record written."""
    from jobs._mlflow_eval import write_and_log_record
    from kdtrack.engine import select_device
    from kdtrack.formats.crowdhuman import read_crowdhuman
    from kdtrack.inference import Detector, load_student
    from kdtrack.metrics.detection import detection_metrics

    if not score_thresholds or any(not 0.0 <= t <= 1.0 for t in score_thresholds):
        raise ValueError(f"score thresholds must lie in [0, 1], got {list(score_thresholds)}")
    start = time.perf_counter()
    root = Path(data_root) / "crowdhuman"
    records, _ = read_crowdhuman(root / "annotation_val.odgt", root / "Images")
    if not records:
        raise ValueError(f"{root / 'annotation_val.odgt'}: no images to score")
    device = select_device(torch.cuda.is_available())
    model, cfg = load_student(checkpoint, device)
    detector = Detector(model, cfg, device, score_threshold=MIN_SCORE)
    found = []
    for s in range(0, len(records), max(1, int(batch_size))):
        images = [read_image_rgb(r.image_path, (r.width, r.height)) for r in records[s:s + batch_size]]
        found.extend(detector.detect_batch(images)[0])
    detections = [(d.boxes_xyxy, d.scores) for d in found]
    truth = [r.boxes_xyxy for r in records]
    per_threshold = {f"{t:g}": detection_metrics(detections, truth, iou_threshold=iou_threshold, score_threshold=t)
                     for t in score_thresholds}
    first = next(iter(per_threshold.values()))
    seconds = time.perf_counter() - start
    print(f"person detection on {root / 'annotation_val.odgt'}: {len(records)} images, "
          f"{first['ground_truth']} person boxes, IoU >= {iou_threshold:g}; AP {100 * first['ap']:.1f}")
    print(f"{'score >=':>9}{'recall':>9}{'precision':>11}{'boxes':>8}")
    for t, m in per_threshold.items():
        print(f"{t:>9}{100 * m['recall']:9.1f}{100 * m['precision']:11.1f}{m['detections']:8d}")
    print(f"{seconds:.1f} s on {device}")
    record = {
        "dataset": DATASET,
        "ap": first["ap"],
        "at_score": {t: {k: m[k] for k in ("recall", "precision", "detections")} for t, m in per_threshold.items()},
        "counts": {"images": len(records), "ground_truth": first["ground_truth"]},
        "settings": {"checkpoint": str(checkpoint), "data_root": str(data_root), "iou_threshold": iou_threshold,
                     "min_score": MIN_SCORE, "device": str(device), "seconds": seconds},
    }
    flat = {"ap": first["ap"], **{f"{k}/score{t}": m[k] for t, m in per_threshold.items()
                                  for k in ("recall", "precision")}}
    return write_and_log_record(record, flat, dataset=DATASET, out=out, tracking_uri=mlflow_uri,
                                experiment=experiment or cfg.mlflow.experiment, run_id=run_id,
                                checkpoint=str(checkpoint))


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.4,0.5"`` -> ``(0.4, 0.5)``; a bad entry names itself."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--score-thresholds: expected comma-separated numbers, got {text!r}") from None
