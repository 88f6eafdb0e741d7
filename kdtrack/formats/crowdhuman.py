"""CrowdHuman ``.odgt`` annotations (one JSON object per line) to ``ImageRecord``s.

Schema of one line: ``{"ID": str, "gtboxes": [{"tag", "fbox", "vbox", "hbox",
"head_attr": {"ignore", "occ", "unsure"}, "extra": {"box_id", "occ", "ignore"}}]}``
with boxes ``[x, y, w, h]`` in pixels; ``fbox`` is the amodal full body and may
leave the image. Images are ``<image_dir>/<ID>.jpg``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kdtrack.boxes import box_area_xyxy, xywh_to_xyxy
from kdtrack.formats.common import (
    FormatError,
    MissingFileError,
    OnError,
    ReadStats,
    check_on_error,
    file_exists,
    image_size,
    sanitize_boxes_xyxy,
    where,
)
from kdtrack.io import atomic_write_text
from kdtrack.structures import UNKNOWN_ID, ImageRecord

BOX_KEYS = ("fbox", "vbox", "hbox")
IGNORE_TAG = "mask"  # reflections, posters, crowds: ignore regions, not people
IMAGE_EXT = ".jpg"


def odgt_box(
    fbox_xywh: Sequence[float],
    vbox_xywh: Sequence[float],
    hbox_xywh: Sequence[float],
    *,
    tag: str = "person",
    ignore: bool = False,
    box_id: int = 0,
    occ: int = 0,
    head_ignore: int = 0,
    head_occ: int = 0,
    head_unsure: int = 0,
) -> dict[str, Any]:
    """One ``gtboxes`` entry in the exact CrowdHuman schema (for writers such as the synthetic world)."""
    return {
        "tag": tag,
        "hbox": [float(v) for v in hbox_xywh],
        "head_attr": {"ignore": int(head_ignore), "occ": int(head_occ), "unsure": int(head_unsure)},
        "fbox": [float(v) for v in fbox_xywh],
        "vbox": [float(v) for v in vbox_xywh],
        "extra": {"box_id": int(box_id), "occ": int(occ), "ignore": int(bool(ignore))},
    }


def write_odgt(path: str | os.PathLike, entries: list[dict[str, Any]]) -> Path:
    """Write CrowdHuman entries, one compact JSON object per line, atomically.

    Each entry needs ``"ID"`` (str) and ``"gtboxes"`` (list of dicts with at
    least ``tag`` and ``fbox``); a bad entry raises before anything is written.
    """
    lines = []
    for index, entry in enumerate(entries):
        if not isinstance(entry.get("ID"), str) or not isinstance(entry.get("gtboxes"), list):
            raise ValueError(f"{where(path, f'entry {index}')}: needs 'ID' (str) and 'gtboxes' (list)")
        for box_index, box in enumerate(entry["gtboxes"]):
            if "tag" not in box or len(box.get("fbox", ())) != 4:
                raise ValueError(
                    f"{where(path, f'entry {index}')}: gtboxes[{box_index}] needs 'tag' and a 4-number 'fbox'"
                )
        lines.append(json.dumps(entry, separators=(", ", ": ")))
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def _xywh(box: Any, key: str, loc: str) -> np.ndarray:
    try:
        arr = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{loc}: {key} must be 4 numbers, got {box!r}") from None
    if arr.shape != (4,):
        raise FormatError(f"{loc}: {key} must be 4 numbers, got {box!r}")
    return arr


def _parse_line(line: str, loc: str, box_key: str) -> tuple[str, dict[str, np.ndarray]]:
    """One odgt line -> ``(ID, arrays)`` with xyxy float64 arrays per box kind and masks."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{loc}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(entry, dict):
        raise FormatError(f"{loc}: expected a JSON object, got {type(entry).__name__}")
    image_id = entry.get("ID")
    if not isinstance(image_id, str) or not image_id:
        raise FormatError(f"{loc}: missing or empty 'ID'")
    gtboxes = entry.get("gtboxes")
    if not isinstance(gtboxes, list):
        raise FormatError(f"{loc}: 'gtboxes' must be a list")
    train, vbox, hbox, ignore = [], [], [], []
    nan_box = np.full(4, np.nan)
    for i, box in enumerate(gtboxes):
        box_loc = f"{loc}: gtboxes[{i}]"
        if not isinstance(box, dict):
            raise FormatError(f"{box_loc}: expected an object")
        if "fbox" not in box:
            raise FormatError(f"{box_loc}: missing 'fbox'")
        extra = box.get("extra") or {}
        if not isinstance(extra, dict):
            raise FormatError(f"{box_loc}: 'extra' must be an object")
        fbox = _xywh(box["fbox"], "fbox", box_loc)
        # Ignore regions may lack the non-fbox kinds: fall back to the full box.
        chosen = _xywh(box.get(box_key, box["fbox"]), box_key, box_loc)
        try:
            ignored = box.get("tag") == IGNORE_TAG or int(extra.get("ignore", 0)) == 1
        except (TypeError, ValueError):
            raise FormatError(f"{box_loc}: extra.ignore must be 0 or 1, got {extra.get('ignore')!r}") from None
        if ignored:
            ignore.append(chosen)
            continue
        if box_key not in box:
            raise FormatError(f"{box_loc}: missing '{box_key}'")
        train.append((fbox, chosen))
        vbox.append(_xywh(box["vbox"], "vbox", box_loc) if "vbox" in box else nan_box)
        hbox.append(_xywh(box["hbox"], "hbox", box_loc) if "hbox" in box else nan_box)
    to_xyxy = lambda rows: xywh_to_xyxy(np.asarray(rows, np.float64).reshape(-1, 4))  # noqa: E731
    return image_id, {
        "fbox": to_xyxy([t[0] for t in train]),
        "box": to_xyxy([t[1] for t in train]),
        "vbox": to_xyxy(vbox),
        "hbox": to_xyxy(hbox),
        "ignore": to_xyxy(ignore),
    }


def visible_fraction(fboxes_xyxy: np.ndarray, vboxes_xyxy: np.ndarray) -> np.ndarray:
    """``area(vbox ∩ fbox) / area(fbox)`` per row, ``(N,)`` in [0, 1]; amodal fbox, unclipped.

    A missing vbox (NaN) counts as fully visible; a zero-area fbox gives 0.
    """
    f = np.asarray(fboxes_xyxy, np.float64).reshape(-1, 4)
    v = np.asarray(vboxes_xyxy, np.float64).reshape(-1, 4)
    lt = np.maximum(f[:, :2], v[:, :2])
    rb = np.minimum(f[:, 2:], v[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = box_area_xyxy(f).astype(np.float64)
    frac = np.where(area > 0, inter / np.maximum(area, 1e-12), 0.0)
    frac = np.where(np.isnan(v).any(axis=1), 1.0, frac)
    return np.clip(frac, 0.0, 1.0).astype(np.float32)


def read_crowdhuman(
    odgt_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    box: str = "fbox",
    on_error: OnError = "raise",
    check_images: bool = True,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[ImageRecord], ReadStats]:
    """Read an ``.odgt`` file into one ``ImageRecord`` per line.

    ``box`` picks the training box kind (``fbox`` amodal full body, ``vbox``
    visible part, ``hbox`` head). ``tag == "mask"`` and ``extra.ignore == 1``
    become ignore boxes. ``visibility`` = area(vbox ∩ fbox) / area(fbox).
    ``record.extra["vboxes_xyxy"]`` / ``["hboxes_xyxy"]`` are aligned with the
    boxes (clipped to the image; NaN rows where the file has none).
    ``image_sizes`` maps ID -> (width, height) to avoid opening image headers;
    otherwise the size is read from the header (PIL, no decode).
    """
    check_on_error(on_error)
    if box not in BOX_KEYS:
        raise ValueError(f"box must be one of {BOX_KEYS}, got {box!r}")
    odgt_path = Path(odgt_path)
    image_dir = Path(image_dir)
    stats = ReadStats()
    records: list[ImageRecord] = []
    with open(odgt_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            loc = where(odgt_path, line_no)
            try:
                image_id, arrays = _parse_line(line, loc, box)
            except FormatError as exc:
                stats.skip(exc, on_error)
                continue
            image_path = image_dir / f"{image_id}{IMAGE_EXT}"
            size = image_sizes.get(image_id) if image_sizes is not None else None
            if (check_images or size is None) and not file_exists(image_path):
                stats.missing(MissingFileError(f"{loc}: image not found: {image_path}"), on_error)
                continue
            if size is None:
                try:
                    size = image_size(image_path)
                except OSError as exc:
                    stats.skip(FormatError(f"{loc}: cannot read image header of {image_path}: {exc}"), on_error)
                    continue
            width, height = int(size[0]), int(size[1])
            visibility = visible_fraction(arrays["fbox"], arrays["vbox"])
            boxes, keep = sanitize_boxes_xyxy(arrays["box"], width, height, stats)
            ignore, keep_ignore = sanitize_boxes_xyxy(arrays["ignore"], width, height, stats)
            side = {k: _clip_or_nan(arrays[k], width, height) for k in ("vbox", "hbox")}
            record = ImageRecord(
                image_path=str(image_path),
                width=width,
                height=height,
                boxes_xyxy=boxes[keep],
                ids=np.full(int(keep.sum()), UNKNOWN_ID, np.int64),
                visibility=visibility[keep],
                ignore_boxes_xyxy=ignore[keep_ignore],
                image_id=image_id,
                source="crowdhuman",
                extra={"vboxes_xyxy": side["vbox"][keep], "hboxes_xyxy": side["hbox"][keep]},
            )
            records.append(record)
    stats.records = len(records)
    return records, stats


def _clip_or_nan(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip side boxes (vbox/hbox) to the image, keeping NaN rows NaN; float32 ``(N, 4)``."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b
