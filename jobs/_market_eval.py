"""Market-1501 evaluation of a checkpoint (``jobs.evaluate market1501``): query vs ``bounding_box_test``.

``run_market1501(checkpoint, data_root)`` embeds every ``query`` and
``bounding_box_test`` crop of ``<data_root>/market1501`` (or of an unpacked
Market-1501 given as ``data_root``) and scores them with the Market protocol
(:mod:`kdtrack.metrics.market1501`: same-id same-camera gallery entries
removed per query, junk -1 removed, distractors 0000 kept). Embedders, all on
the same crops, each crop decoded once for all of them:

- ``teacher``: a checkpoint of ``train.recipe=teacher`` (the Re-ID teacher on
  the crop resized to its ``crop_height x crop_width``, batched);
- ``student``: any other checkpoint (the student's identity map at the centre
  of the letterboxed crop, as ``kdtrack.metrics.reid_probe`` reads boxes);
- ``colour``: the HSV colour-histogram baseline of ``kdtrack.metrics.reid_probe``;
- ``chance``: the expected scores of a random ranking of the same queries.

Prints a table (percent), writes JSON atomically (fractions; nan -> null) and
logs ``market1501/{embedder}/{metric}`` to MLflow when given a tracking URI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from kdtrack.checkpoint import load_checkpoint
from kdtrack.data.dataset import read_image_rgb
from kdtrack.formats.market1501 import DISTRACTOR_PID, ReidCrop, read_market1501
from kdtrack.metrics.market1501 import evaluate_market1501_crops
from kdtrack.recipes import recipe_of
from kdtrack.data.reid_data import market_root

DATASET = "market1501"
CHANCE = "chance"
QUERY_SPLIT, GALLERY_SPLIT = "query", "bounding_box_test"
# images_rgb (list of (H, W, 3) uint8) -> (N, d) float32 L2-normalised
CropEmbedder = Callable[[Sequence[np.ndarray]], np.ndarray]


def teacher_crop_embedder(teacher: torch.nn.Module, cfg: Any, device: torch.device) -> CropEmbedder:
    """The frozen teacher on crops resized to ``cfg.crop_height x cfg.crop_width`` (its test transform)."""
    from kdtrack.data.reid_data import reid_eval_transform

    @torch.inference_mode()
    def embed(images: Sequence[np.ndarray]) -> np.ndarray:
        batch = torch.stack([reid_eval_transform(image, cfg) for image in images]).to(device)
        return torch.nn.functional.normalize(teacher.embed(batch).float(), dim=1).cpu().numpy()

    return embed


def whole_crop_embedder(embed_boxes: Any) -> CropEmbedder:
    """A box embedder (``kdtrack.inference.EmbedFn``, optionally with ``embed_many``) given each crop
    as an image holding one box that covers it."""

    def embed(images: Sequence[np.ndarray]) -> np.ndarray:
        boxes = [np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32) for im in images]
        many = getattr(embed_boxes, "embed_many", None)
        outputs = many(images, boxes) if many is not None else [embed_boxes(im, b) for im, b in zip(images, boxes)]
        return np.concatenate([np.asarray(o, np.float32).reshape(1, -1) for o in outputs])

    return embed


def embed_crops(crops: Sequence[ReidCrop], embedders: Mapping[str, CropEmbedder],
                batch_size: int) -> dict[str, np.ndarray]:
    """``{name: (N, d) float32}``; each crop is decoded once for all embedders."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
    for start in range(0, len(crops), max(1, int(batch_size))):
        images = [read_image_rgb(c.path) for c in crops[start:start + batch_size]]
        for name, embed in embedders.items():
            parts[name].append(np.asarray(embed(images), np.float32))
    return {name: np.concatenate(p) if p else np.zeros((0, 1), np.float32) for name, p in parts.items()}


def format_market_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Rows = embedders (chance last); mAP and CMC rank-1/5/10 in percent."""
    columns = (("mAP", "mAP"), ("rank1", "R1"), ("rank5", "R5"), ("rank10", "R10"))
    width = max([len(n) for n in results] + [8])
    lines = [f"{'embedder':<{width}}" + "".join(f"{title:>8}" for _, title in columns)]
    for name, row in results.items():
        cells = [row.get(key, float("nan")) for key, _ in columns]
        lines.append(f"{name:<{width}}" + "".join(f"{100 * v:8.1f}" if np.isfinite(v) else f"{'-':>8}" for v in cells))
    return "\n".join(lines)


def run_market1501(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    out: str | Path | None = None,
    mlflow_uri: str | None = None,
    run_id: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Embed, score, print, write ``out`` (JSON) and log to MLflow (``run_id``: into that run, e.g. the
    training run; else a new evaluation run). ``batch_size`` defaults to ``teacher.eval_batch_size`` of
    the checkpoint's config. Returns the record written to ``out``."""
    from jobs._mlflow_eval import write_and_log_record
    from kdtrack.inference import load_student, load_teacher
    from kdtrack.metrics.reid_probe import colour_histogram_features, student_embedder

    start = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = market_root(data_root)
    query, _ = read_market1501(root, QUERY_SPLIT)
    gallery, gallery_stats = read_market1501(root, GALLERY_SPLIT)  # junk (-1) dropped here and counted
    cfg = load_checkpoint(checkpoint)["config"]
    if not recipe_of(cfg).student:
        name = "teacher"
        network = teacher_crop_embedder(load_teacher(cfg.teacher, checkpoint, device), cfg.teacher, device)
    else:
        name = "student"
        model, cfg = load_student(checkpoint, device)
        network = whole_crop_embedder(student_embedder(model, cfg, device))
    embedders = {name: network, "colour": whole_crop_embedder(colour_histogram_features)}
    batch_size = int(batch_size or cfg.teacher.eval_batch_size)
    query_features = embed_crops(query, embedders, batch_size)
    gallery_features = embed_crops(gallery, embedders, batch_size)

    results: dict[str, dict[str, float]] = {}
    result = None
    for embedder in embedders:
        result = evaluate_market1501_crops(query, gallery, query_features[embedder], gallery_features[embedder])
        results[embedder] = result.summary()
    results[CHANCE] = result.chance_summary()  # depends on ids, cameras and junk only
    seconds = time.perf_counter() - start
    counts = {
        "query": len(query), "gallery": len(gallery), "query_identities": len({c.pid for c in query}),
        "gallery_distractors": sum(c.pid == DISTRACTOR_PID for c in gallery),
        "gallery_junk_removed": gallery_stats.filtered_records,
        "queries_scored": int(results[name]["queries"]), "queries_without_positive": int(results[name]["skipped"]),
    }
    print(f"Market-1501 protocol under {root} (query vs {GALLERY_SPLIT}; same-id same-camera and junk removed, "
          f"distractors kept), percent:")
    print(format_market_table(results))
    print(f"{counts['query']} queries ({counts['queries_without_positive']} without a cross-camera positive), "
          f"gallery {counts['gallery']} crops ({counts['gallery_distractors']} distractors, "
          f"{counts['gallery_junk_removed']} junk removed); {seconds:.1f} s on {device}")
    record = {
        "dataset": DATASET,
        "results": results,
        "counts": counts,
        "settings": {"checkpoint": str(checkpoint), "data_root": str(root), "embedders": list(embedders),
                     "batch_size": batch_size, "device": str(device), "seconds": seconds},
    }
    flat = {f"{emb}/{metric}": value for emb, row in results.items() for metric, value in row.items()}
    # nan (no query with a positive) -> null in the JSON
    return write_and_log_record(record, flat, dataset=DATASET, out=out, tracking_uri=mlflow_uri,
                                experiment=experiment or cfg.mlflow.experiment, run_id=run_id,
                                checkpoint=str(checkpoint))
