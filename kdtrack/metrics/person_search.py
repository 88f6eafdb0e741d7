"""Person-search mAP and top-k (CUHK-SYSU / PRW protocol of EVALUATION.md), on plain arrays.

Per query: every gallery detection with score >= ``score_threshold`` is scored
by cosine similarity to the query embedding. In a gallery image that holds the
query person (gt box w x h) the IoU threshold is
``min(iou_threshold, w*h / ((w+m)*(h+m)))`` (m = 10 px: small people get a
looser threshold); after sorting that image's detections by similarity only
the first one at or above the threshold is a true positive. All detections of
all gallery images are pooled:
``AP = sklearn.average_precision_score(y_true, y_score) * found / present``
(0 if nothing found), top-k = any true positive among the k most similar.

Galleries: a query either carries its own gallery lists keyed by size
(CUHK-SYSU ``TestG50 .. TestG4000``; pick one with ``gallery_size``) or, with
``gallery_size=None``/-1 or no lists, the gallery is every gallery image except
the query's own (PRW), optionally only images from other cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from kdtrack.boxes import box_iou_xyxy
from kdtrack.config import EvalConfig
from kdtrack.io import atomic_save

if TYPE_CHECKING:
    from kdtrack.formats.person_search import PersonSearchManifest


@dataclass(frozen=True)
class GalleryImage:
    """Detections of one gallery image: ``boxes_xyxy (N, 4)`` px, ``scores (N,)``, ``embeddings (N, D)``."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    camera: int = -1  # camera id (PRW cross-camera option); -1 = unknown


@dataclass(frozen=True)
class Query:
    """One query person.

    ``gt_boxes_xyxy`` maps a gallery image id to the query person's box there
    (images without the person are absent). ``galleries`` maps a gallery size
    to that size's image list (CUHK-SYSU); empty = all-frames gallery.
    """

    embedding: np.ndarray  # (D,)
    pid: int
    image_id: str  # the query's own image (never part of its gallery)
    gt_boxes_xyxy: Mapping[str, np.ndarray] = field(default_factory=dict)
    galleries: Mapping[int, Sequence[str]] = field(default_factory=dict)
    camera: int = -1


def small_box_iou_threshold(box_xyxy: np.ndarray, iou_threshold: float, margin: float) -> float:
    """``min(iou_threshold, w*h / ((w+margin)*(h+margin)))`` for a gt box in pixels."""
    w = float(box_xyxy[2] - box_xyxy[0])
    h = float(box_xyxy[3] - box_xyxy[1])
    return min(iou_threshold, w * h / ((w + margin) * (h + margin)))


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: embeddings must be finite and non-zero for cosine similarity")
    return x / norms


def _gallery_ids(query: Query, gallery: Mapping[str, GalleryImage], gallery_size: int | None,
                 cross_camera_only: bool) -> list[str]:
    if gallery_size is not None and gallery_size > 0:
        if gallery_size not in query.galleries:
            raise ValueError(
                f"query pid {query.pid} ({query.image_id}): no gallery list of size {gallery_size} "
                f"(has {sorted(query.galleries)})"
            )
        ids = [i for i in query.galleries[gallery_size] if i != query.image_id]
        missing = [i for i in ids if i not in gallery]
        if missing:
            raise KeyError(f"query pid {query.pid}: gallery image {missing[0]!r} has no detections entry")
        return ids
    ids = [i for i in gallery if i != query.image_id]
    if cross_camera_only:
        ids = [i for i in ids if gallery[i].camera != query.camera]
    return ids


def evaluate_query(
    query: Query,
    gallery: Mapping[str, GalleryImage],
    *,
    gallery_size: int | None,
    cfg: EvalConfig,
) -> dict[str, float]:
    """AP and top-k hits of one query: ``{"AP", "found", "present", "top1", ...}``."""
    q = _unit(np.asarray(query.embedding).reshape(1, -1), f"query pid {query.pid}")[0]
    y_true: list[np.ndarray] = []
    y_score: list[np.ndarray] = []
    present = found = 0
    for image_id in _gallery_ids(query, gallery, gallery_size, cfg.ps_cross_camera_only):
        image = gallery[image_id]
        gt_box = query.gt_boxes_xyxy.get(image_id)
        present += gt_box is not None
        keep = np.asarray(image.scores).reshape(-1) >= cfg.ps_score_threshold
        if not keep.any():
            continue
        boxes = np.asarray(image.boxes_xyxy, dtype=np.float64).reshape(-1, 4)[keep]
        sim = _unit(np.asarray(image.embeddings).reshape(len(keep), -1)[keep], f"gallery image {image_id}") @ q
        label = np.zeros(len(sim), dtype=np.int64)
        if gt_box is not None:
            gt_box = np.asarray(gt_box, dtype=np.float64).reshape(4)
            threshold = small_box_iou_threshold(gt_box, cfg.ps_iou_threshold, cfg.ps_small_box_margin)
            order = np.argsort(-sim, kind="stable")
            sim, boxes = sim[order], boxes[order]
            ious = box_iou_xyxy(boxes, gt_box[None])[:, 0]
            hits = np.flatnonzero(ious >= threshold)
            if len(hits):
                label[hits[0]] = 1
                found += 1
        y_true.append(label)
        y_score.append(sim)
    labels = np.concatenate(y_true) if y_true else np.zeros(0, np.int64)
    scores = np.concatenate(y_score) if y_score else np.zeros(0)
    if present == 0:
        raise ValueError(f"query pid {query.pid} ({query.image_id}): the person is in no gallery image")
    ap = 0.0 if found == 0 else float(average_precision_score(labels, scores)) * found / present
    ranked = labels[np.argsort(-scores, kind="stable")]
    out = {"AP": ap, "found": found, "present": present}
    for k in cfg.ps_top_k:
        out[f"top{k}"] = float(ranked[:k].any())
    return out


def evaluate_person_search(
    queries: Sequence[Query],
    gallery: Mapping[str, GalleryImage],
    *,
    gallery_size: int | None = None,
    cfg: EvalConfig | None = None,
) -> dict[str, object]:
    """``{"mAP", "top1", "top5", "top10", "num_queries", "gallery_size", "per_query": [...]}``; ratios in 0..1.

    ``gallery_size=None`` or -1: all-frames gallery (PRW); a positive size picks
    each query's gallery list of that size (CUHK-SYSU).
    """
    cfg = cfg or EvalConfig()
    if not queries:
        raise ValueError("person search: no queries")
    per_query = [evaluate_query(q, gallery, gallery_size=gallery_size, cfg=cfg) for q in queries]
    out: dict[str, object] = {"mAP": float(np.mean([r["AP"] for r in per_query]))}
    for k in cfg.ps_top_k:
        out[f"top{k}"] = float(np.mean([r[f"top{k}"] for r in per_query]))
    out["num_queries"] = len(per_query)
    out["gallery_size"] = -1 if gallery_size is None or gallery_size <= 0 else int(gallery_size)
    out["cross_camera_only"] = bool(cfg.ps_cross_camera_only)
    out["per_query"] = per_query
    return out


def queries_from_manifest(manifest: "PersonSearchManifest", query_embeddings: Sequence[np.ndarray]) -> list[Query]:
    """Evaluation queries for a ``kdtrack.formats.person_search`` manifest, one embedding per manifest query.

    The gt boxes of each query person are every labelled box with its pid in a
    test image other than the query's own; gallery lists keep their sizes
    (CUHK-SYSU), an empty one means the all-frames gallery (PRW).
    """
    from kdtrack.boxes import xywh_to_xyxy

    if len(query_embeddings) != len(manifest.queries):
        raise ValueError(f"{manifest.name}: {len(query_embeddings)} embeddings for {len(manifest.queries)} queries")
    boxes_by_pid: dict[int, dict[str, np.ndarray]] = {}
    for img in manifest.images:
        if img.split != "test":
            continue
        boxes_xyxy = xywh_to_xyxy(img.boxes_xywh)
        for box, pid in zip(boxes_xyxy, img.pids):
            if pid >= 0:
                boxes_by_pid.setdefault(int(pid), {})[img.file_name] = box
    queries = []
    for q, embedding in zip(manifest.queries, query_embeddings):
        gt = {name: box for name, box in boxes_by_pid.get(int(q.pid), {}).items() if name != q.file_name}
        queries.append(Query(
            embedding=np.asarray(embedding), pid=int(q.pid), image_id=q.file_name,
            gt_boxes_xyxy=gt, galleries={int(size): list(ids) for size, ids in q.galleries.items()},
            camera=int(manifest.image(q.file_name).camera),
        ))
    return queries


# --------------------------------------------------------------------------- npz file format

NPZ_FORMAT = """\
Person-search detections file (.npz, columnar; D detections, G gallery images,
Q queries, T gt boxes, L gallery-list entries, E embedding dims):
  gallery_image_ids   (G,) str     gallery image ids
  gallery_cameras     (G,) int     camera per gallery image (-1 unknown)
  det_image_index     (D,) int     row of gallery_image_ids each detection belongs to
  det_boxes_xyxy      (D, 4) float detection boxes, pixels
  det_scores          (D,) float   detection confidences
  det_embeddings      (D, E) float identity embeddings
  query_image_ids     (Q,) str     the image each query comes from
  query_pids          (Q,) int     person id of each query
  query_cameras       (Q,) int     camera of each query image (-1 unknown)
  query_embeddings    (Q, E) float query embeddings (of the query's gt box)
  gt_query_index      (T,) int     query row of each gt box of the query person in a gallery image
  gt_image_index      (T,) int     gallery image row of that box
  gt_boxes_xyxy       (T, 4) float the box, pixels
  list_query_index    (L,) int     optional CUHK-SYSU gallery lists: query row,
  list_image_index    (L,) int       gallery image row,
  list_gallery_size   (L,) int       and the gallery size the entry belongs to
"""

_REQUIRED = (
    "gallery_image_ids", "gallery_cameras", "det_image_index", "det_boxes_xyxy", "det_scores", "det_embeddings",
    "query_image_ids", "query_pids", "query_cameras", "query_embeddings",
    "gt_query_index", "gt_image_index", "gt_boxes_xyxy",
)


def save_person_search_npz(path: str | Path, queries: Sequence[Query], gallery: Mapping[str, GalleryImage]) -> Path:
    """Write queries + gallery detections in the documented columnar npz layout (atomically)."""
    image_ids = list(gallery)
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    dims = {np.asarray(q.embedding).size for q in queries}
    dim = dims.pop() if len(dims) == 1 else None
    if dim is None:
        raise ValueError("queries must share one embedding dimension")
    det_index, boxes, scores, embs = [], [], [], []
    for image_id, image in gallery.items():
        n = len(np.asarray(image.scores).reshape(-1))
        det_index.append(np.full(n, row[image_id], np.int64))
        boxes.append(np.asarray(image.boxes_xyxy, np.float32).reshape(n, 4))
        scores.append(np.asarray(image.scores, np.float32).reshape(n))
        embs.append(np.asarray(image.embeddings, np.float32).reshape(n, dim))
    gt_q, gt_i, gt_b, lq, li, ls = [], [], [], [], [], []
    for qi, q in enumerate(queries):
        for image_id, box in q.gt_boxes_xyxy.items():
            gt_q.append(qi), gt_i.append(row[image_id]), gt_b.append(np.asarray(box, np.float32).reshape(4))
        for size, ids in q.galleries.items():
            for image_id in ids:
                lq.append(qi), li.append(row[image_id]), ls.append(int(size))
    arrays = {
        "gallery_image_ids": np.asarray(image_ids, dtype=str),
        "gallery_cameras": np.asarray([gallery[i].camera for i in image_ids], np.int64),
        "det_image_index": np.concatenate(det_index) if det_index else np.zeros(0, np.int64),
        "det_boxes_xyxy": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        "det_scores": np.concatenate(scores) if scores else np.zeros(0, np.float32),
        "det_embeddings": np.concatenate(embs) if embs else np.zeros((0, dim), np.float32),
        "query_image_ids": np.asarray([q.image_id for q in queries], dtype=str),
        "query_pids": np.asarray([q.pid for q in queries], np.int64),
        "query_cameras": np.asarray([q.camera for q in queries], np.int64),
        "query_embeddings": np.stack([np.asarray(q.embedding, np.float32).reshape(dim) for q in queries]),
        "gt_query_index": np.asarray(gt_q, np.int64),
        "gt_image_index": np.asarray(gt_i, np.int64),
        "gt_boxes_xyxy": np.asarray(gt_b, np.float32).reshape(-1, 4),
        "list_query_index": np.asarray(lq, np.int64),
        "list_image_index": np.asarray(li, np.int64),
        "list_gallery_size": np.asarray(ls, np.int64),
    }
    return atomic_save(path, lambda handle: np.savez(handle, **arrays))


def load_person_search_npz(path: str | Path) -> tuple[list[Query], dict[str, GalleryImage]]:
    """Read the npz layout of :data:`NPZ_FORMAT`; a missing or misshapen array raises naming the file."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (format:\n{NPZ_FORMAT})")
        a = {k: data[k] for k in data.files}
    image_ids = [str(i) for i in a["gallery_image_ids"]]
    n_img, n_det = len(image_ids), len(a["det_scores"])
    det_index = a["det_image_index"].astype(np.int64)
    if len(det_index) != n_det or len(a["det_boxes_xyxy"]) != n_det or len(a["det_embeddings"]) != n_det:
        raise ValueError(f"{path}: det_* arrays must all have {n_det} rows")
    for key, index, bound in (("det_image_index", det_index, n_img), ("gt_image_index", a["gt_image_index"], n_img),
                              ("gt_query_index", a["gt_query_index"], len(a["query_pids"]))):
        if len(index) and (index.min() < 0 or index.max() >= bound):
            raise ValueError(f"{path}: {key} has a row index outside 0..{bound - 1}")
    order = np.argsort(det_index, kind="stable")
    bounds = np.searchsorted(det_index[order], np.arange(n_img + 1))
    gallery = {}
    for i, image_id in enumerate(image_ids):
        sel = order[bounds[i]:bounds[i + 1]]
        gallery[image_id] = GalleryImage(
            boxes_xyxy=a["det_boxes_xyxy"][sel], scores=a["det_scores"][sel],
            embeddings=a["det_embeddings"][sel], camera=int(a["gallery_cameras"][i]),
        )
    queries = []
    lq = a.get("list_query_index", np.zeros(0, np.int64))
    li = a.get("list_image_index", np.zeros(0, np.int64))
    ls = a.get("list_gallery_size", np.zeros(0, np.int64))
    for qi in range(len(a["query_pids"])):
        gt_rows = np.flatnonzero(a["gt_query_index"] == qi)
        galleries: dict[int, list[str]] = {}
        for r in np.flatnonzero(lq == qi):
            galleries.setdefault(int(ls[r]), []).append(image_ids[int(li[r])])
        queries.append(Query(
            embedding=a["query_embeddings"][qi], pid=int(a["query_pids"][qi]),
            image_id=str(a["query_image_ids"][qi]), camera=int(a["query_cameras"][qi]),
            gt_boxes_xyxy={image_ids[int(a["gt_image_index"][r])]: a["gt_boxes_xyxy"][r] for r in gt_rows},
            galleries=galleries,
        ))
    return queries, gallery
