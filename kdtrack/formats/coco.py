"""COCO instances JSON (``annotations/instances_<split>.json``) to person ``ImageRecord``s.

Only the person category (id 1) is read; ``iscrowd = 1`` boxes become ignore
regions, and images with no non-crowd person are left out (counted as
``filtered_records``) because they teach the detector nothing about people.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from kdtrack.boxes import xywh_to_xyxy
from kdtrack.formats.common import (
    FormatError,
    MissingFileError,
    OnError,
    ReadStats,
    check_on_error,
    file_exists,
    sanitize_boxes_xyxy,
    where,
)
from kdtrack.io import atomic_write_json
from kdtrack.structures import POLYGONS_KEY, UNKNOWN_ID, ImageRecord

PERSON_CATEGORY_ID = 1
PERSON_CATEGORY = {"supercategory": "person", "id": PERSON_CATEGORY_ID, "name": "person"}


def write_coco(
    path: str | os.PathLike,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    *,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a COCO instances file atomically (``info`` and ``licenses`` added as in the real files).

    Checks the cross references the reader relies on (unique image ids,
    annotations pointing at known images and categories) before writing.
    """
    image_ids = [img["id"] for img in images]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"{path}: duplicate image ids")
    known_images, known_cats = set(image_ids), {c["id"] for c in categories}
    for i, ann in enumerate(annotations):
        if ann.get("image_id") not in known_images or ann.get("category_id") not in known_cats:
            raise ValueError(f"{where(path, f'annotations[{i}]')}: unknown image_id or category_id")
    payload = {
        "info": info or {"description": "kdtrack", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return atomic_write_json(path, payload, indent=None)


def _require(obj: Any, keys: tuple[str, ...], loc: str) -> None:
    if not isinstance(obj, dict):
        raise FormatError(f"{loc}: expected an object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise FormatError(f"{loc}: missing {', '.join(missing)}")


def segmentation_polygons(segmentation: Any, loc: str) -> list[np.ndarray] | None:
    """A person's COCO polygons as ``(n_i, 2)`` float32 arrays (image pixels), or None when it has none
    (missing, empty, or run-length encoded): copy-paste falls back to its box. A malformed polygon is a
    ``FormatError`` naming the record."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    polygons = []
    for j, poly in enumerate(segmentation):
        try:
            points = np.asarray(poly, dtype=np.float32)
        except (TypeError, ValueError):
            points = np.zeros(1, np.float32)
        if points.ndim != 1 or len(points) < 6 or len(points) % 2 or not np.isfinite(points).all():
            raise FormatError(f"{loc}: segmentation[{j}] must be a flat list of >= 3 x, y pairs")
        polygons.append(points.reshape(-1, 2))
    return polygons


def read_coco_persons(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    on_error: OnError = "raise",
    check_images: bool = True,
    category_id: int = PERSON_CATEGORY_ID,
) -> tuple[list[ImageRecord], ReadStats]:
    """Person boxes of a COCO instances file, one ``ImageRecord`` per image that has a person.

    Errors name the file and the record (``instances_val2017.json:annotations[17]: ...``). Each person's
    polygons (``segmentation``) are kept in ``record.extra[POLYGONS_KEY]``, one entry per box (None without).
    """
    check_on_error(on_error)
    json_path, image_dir = Path(json_path), Path(image_dir)
    stats = ReadStats()
    try:
        with open(json_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where(json_path, exc.lineno)}: invalid JSON ({exc.msg})") from None
    _require(data, ("images", "annotations"), where(json_path))

    images: dict[Any, tuple[int, dict[str, Any]]] = {}  # id -> (index in file, image)
    for i, img in enumerate(data["images"]):
        loc = where(json_path, f"images[{i}]")
        try:
            _require(img, ("id", "file_name", "width", "height"), loc)
            if int(img["width"]) <= 0 or int(img["height"]) <= 0:
                raise FormatError(f"{loc}: non-positive width/height")
        except (FormatError, TypeError, ValueError) as exc:
            stats.skip(exc if isinstance(exc, FormatError) else FormatError(f"{loc}: {exc}"), on_error)
            continue
        images[img["id"]] = (i, img)

    persons: dict[Any, list[np.ndarray]] = defaultdict(list)
    person_polygons: dict[Any, list[list[np.ndarray] | None]] = defaultdict(list)
    crowds: dict[Any, list[np.ndarray]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        loc = where(json_path, f"annotations[{i}]")
        try:
            _require(ann, ("image_id", "category_id", "bbox"), loc)
            if ann["category_id"] != category_id:
                continue
            if ann["image_id"] not in images:
                raise FormatError(f"{loc}: image_id {ann['image_id']!r} not in images")
            try:
                bbox = np.asarray(ann["bbox"], dtype=np.float64)
            except (TypeError, ValueError):
                bbox = np.zeros(0)
            if bbox.shape != (4,):
                raise FormatError(f"{loc}: bbox must be 4 numbers, got {ann['bbox']!r}")
            if ann.get("iscrowd", 0) not in (0, 1):
                raise FormatError(f"{loc}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
            polygons = None if ann.get("iscrowd", 0) == 1 else segmentation_polygons(ann.get("segmentation"), loc)
        except FormatError as exc:
            stats.skip(exc, on_error)
            continue
        if ann.get("iscrowd", 0) == 1:
            crowds[ann["image_id"]].append(bbox)
        else:
            persons[ann["image_id"]].append(bbox)
            person_polygons[ann["image_id"]].append(polygons)

    records: list[ImageRecord] = []
    for image_id, (i, img) in images.items():
        width, height = int(img["width"]), int(img["height"])
        boxes, keep = sanitize_boxes_xyxy(xywh_to_xyxy(np.reshape(persons.get(image_id, []), (-1, 4))),
                                          width, height, stats)
        ignore, keep_ignore = sanitize_boxes_xyxy(
            xywh_to_xyxy(np.reshape(crowds.get(image_id, []), (-1, 4))), width, height, stats)
        if not keep.any():
            stats.filtered_records += 1
            continue
        image_path = image_dir / str(img["file_name"])
        if check_images and not file_exists(image_path):
            stats.missing(MissingFileError(f"{where(json_path, f'images[{i}]')}: image not found: {image_path}"),
                          on_error)
            continue
        n = int(keep.sum())
        polygons = np.empty(len(keep), object)
        for j, person in enumerate(person_polygons.get(image_id, [])):
            polygons[j] = person
        records.append(ImageRecord(
            image_path=str(image_path),
            width=width,
            height=height,
            boxes_xyxy=boxes[keep],
            ids=np.full(n, UNKNOWN_ID, np.int64),
            visibility=np.ones(n, np.float32),
            ignore_boxes_xyxy=ignore[keep_ignore],
            image_id=str(image_id),
            source="coco",
            extra={POLYGONS_KEY: polygons[keep]},
        ))
    stats.records = len(records)
    return records, stats
