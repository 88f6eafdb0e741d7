"""CenterNet target encoding: boxes in network-input pixels -> dense and per-object tensors.

Conventions (``kdtrack.decode`` inverts exactly these):

- Output map ``(h, w) = (H / r, W / r)`` with stride ``r = down_ratio``; cell
  ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)`` in output units.
- A box is divided by ``r`` and clipped to ``[0, w] x [0, h]``; a box left with
  zero width or height (degenerate, or entirely outside the image) is skipped
  and counted in ``num_skipped``.
- Centre ``c`` = centre of the clipped box (output units); centre cell
  ``p = floor(c)`` (kept inside the map); offset ``o = c - p``.
- Size in INPUT pixels, measured from the real centre ``c * r``:
  4 channels = ``(l, t, r, b)`` distances to the edges of the unclipped
  (amodal) box, as FairMOT's ``ltrb`` mode; 2 channels = ``(w, h)`` of the
  clipped box.
- Heatmap: a Gaussian at ``p`` with CenterNet's adaptive radius, merged by max.
  Every valid box gets its Gaussian, also those beyond ``max_objects`` (the
  heatmap stays truthful); only the first ``max_objects`` get per-object slots,
  the rest are counted in ``num_dropped``.
- Ignore map: 1 on every cell that overlaps an ignore box, except where some
  person's Gaussian is non-zero; the focal loss drops the negatives there.
- Centre region (dense contrastive loss, IDF's "centre-region points"): the
  cells of the ``(2 r_c + 1)^2`` square around ``p`` that lie in the map and
  whose cell centre lies inside the clipped box (``p`` itself always counts).
  A cell claimed by two people goes to the person whose centre is nearer
  (ties: the earlier slot), so no point is a positive of two identities.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

# Per-object keys whose first axis (after the batch axis) is the slot axis K.
SLOT_KEYS = ("index", "mask", "offset", "size", "ids", "box_index", "region_index", "region_mask", "teacher")


def gaussian_radius(det_size: tuple[float, float], min_overlap: float = 0.7) -> float:
    """CenterNet's radius rule: the smallest of three quadratic-case radii.

    ``det_size = (height, width)`` of the box in output cells. The three cases
    are a box shifted so that both corners move inward, one inward/one outward,
    both outward, each keeping IoU >= ``min_overlap`` with the ground truth.
    As in CenterNet/FairMOT, each root is ``(b + sqrt(b^2 - 4ac)) / 2`` (the
    published rule, kept so that radii match the reference implementations).
    """
    height, width = float(det_size[0]), float(det_size[1])
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1**2 - 4 * c1, 0.0))) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2**2 - 4 * a2 * c2, 0.0))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3**2 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_2d(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` kernel with peak 1 and sigma = diameter / 6 (CenterNet)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6.0
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g.astype(np.float32)


def draw_gaussian(heatmap: np.ndarray, centre_xy: tuple[int, int], radius: int) -> np.ndarray:
    """Max-merge a Gaussian of ``radius`` centred on integer cell ``centre_xy`` into ``(h, w)``, in place."""
    g = gaussian_2d(radius)
    x, y = int(centre_xy[0]), int(centre_xy[1])
    h, w = heatmap.shape
    left, right = min(x, radius), min(w - x, radius + 1)
    top, bottom = min(y, radius), min(h - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap
    patch = heatmap[y - top : y + bottom, x - left : x + right]
    g_patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(patch, g_patch, out=patch)
    return heatmap


def _region_offsets(radius: int) -> np.ndarray:
    """``(R, 2)`` integer (dx, dy) of the square window, centre first."""
    d = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(d, d, indexing="xy")
    offs = np.stack([dx.ravel(), dy.ravel()], axis=1)
    order = np.argsort(np.abs(offs).sum(1), kind="stable")  # centre cell in column 0
    return offs[order]


def encode_targets(
    boxes_xyxy: np.ndarray,
    ids: np.ndarray | None,
    ignore_boxes_xyxy: np.ndarray | None,
    input_size: tuple[int, int],
    *,
    down_ratio: int = 4,
    size_channels: int = 4,
    max_objects: int = 500,
    min_overlap: float = 0.7,
    centre_region_radius: int = 1,
    teacher_embeddings: np.ndarray | None = None,
    source: str = "",
) -> dict[str, torch.Tensor]:
    """Encode one image's boxes (network-input pixels) as CenterNet training targets.

    Args: ``boxes_xyxy (N, 4)``, ``ids (N,)`` int (-1 unknown; for the
    contrastive loss these must be globally unique person keys, see
    ``person_keys``), ``ignore_boxes_xyxy (M, 4)``, ``input_size = (H, W)``,
    optional ``teacher_embeddings (N, D)`` aligned with the boxes.
    Returns (K = max_objects, R = (2 r_c + 1)^2, h = H/r, w = W/r):
    ``heatmap (1,h,w)`` f32, ``ignore (1,h,w)`` f32, ``index (K,)`` i64 flat
    ``y * w + x`` of the centre cell, ``mask (K,)`` bool, ``offset (K,2)`` f32
    output cells, ``size (K,S)`` f32 input pixels, ``ids (K,)`` i64 (-1 empty),
    ``box_index (K,)`` i64 source row (-1 empty), ``region_index (K,R)`` i64,
    ``region_mask (K,R)`` bool, ``num_dropped``/``num_skipped`` i64 scalars,
    ``teacher (K,D)`` f32 when teacher embeddings are given.
    """
    where = f"{source}: " if source else ""
    H, W = int(input_size[0]), int(input_size[1])
    if H % down_ratio or W % down_ratio:
        raise ValueError(f"{where}input size {H}x{W} is not a multiple of down_ratio {down_ratio}")
    if size_channels not in (2, 4):
        raise ValueError(f"{where}size_channels must be 2 or 4, got {size_channels}")
    h, w = H // down_ratio, W // down_ratio
    boxes, id_arr, teacher_embeddings = _checked_boxes(boxes_xyxy, ids, teacher_embeddings, where)
    K = int(max_objects)
    slots = _fill_slots(boxes, id_arr, (h, w), down_ratio=down_ratio, size_channels=size_channels, max_objects=K,
                        min_overlap=min_overlap)
    k = slots.pop("count")
    centres, clipped_slots = slots.pop("centres"), slots.pop("clipped")
    region_index, region_mask = _centre_regions(
        slots["index"][:k], centres[:k], clipped_slots[:k], (h, w), centre_region_radius, K
    )
    heatmap = slots.pop("heatmap")
    ignore = _ignore_map(ignore_boxes_xyxy, heatmap, down_ratio, where)

    result = {
        "heatmap": torch.from_numpy(heatmap[None]),
        "ignore": torch.from_numpy(ignore[None]),
        "index": torch.from_numpy(slots["index"]),
        "mask": torch.from_numpy(slots["mask"]),
        "offset": torch.from_numpy(slots["offset"]),
        "size": torch.from_numpy(slots["size"]),
        "ids": torch.from_numpy(slots["ids"]),
        "box_index": torch.from_numpy(slots["box_index"]),
        "region_index": torch.from_numpy(region_index),
        "region_mask": torch.from_numpy(region_mask),
        "num_dropped": torch.tensor(slots["num_dropped"], dtype=torch.int64),
        "num_skipped": torch.tensor(slots["num_skipped"], dtype=torch.int64),
    }
    if teacher_embeddings is not None:
        teacher = np.zeros((K, teacher_embeddings.shape[1]), np.float32)
        used = slots["box_index"][:k]
        teacher[:k] = teacher_embeddings[used]
        result["teacher"] = torch.from_numpy(teacher)
    return result


def _checked_boxes(boxes_xyxy: np.ndarray, ids: np.ndarray | None, teacher_embeddings: np.ndarray | None,
                   where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(boxes (N, 4) f64, ids (N,) i64, teacher embeddings (N, D) f32 or None)``; a non-finite box or a
    length that does not match the boxes' is a ``ValueError`` naming ``where``."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if not np.isfinite(boxes).all():
        bad = int(np.nonzero(~np.isfinite(boxes).all(1))[0][0])
        raise ValueError(f"{where}box {bad} is not finite: {boxes[bad].tolist()}")
    id_arr = np.full((n,), -1, np.int64) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(id_arr) != n:
        raise ValueError(f"{where}{n} boxes but {len(id_arr)} ids")
    if teacher_embeddings is not None:
        teacher_embeddings = np.asarray(teacher_embeddings, dtype=np.float32)
        if teacher_embeddings.ndim != 2 or len(teacher_embeddings) != n:
            raise ValueError(f"{where}{n} boxes but teacher embeddings of shape {teacher_embeddings.shape}")
    return boxes, id_arr, teacher_embeddings


def _fill_slots(boxes: np.ndarray, id_arr: np.ndarray, map_hw: tuple[int, int], *, down_ratio: int,
                size_channels: int, max_objects: int, min_overlap: float) -> dict[str, Any]:
    """The heatmap and the first ``max_objects`` slots of the boxes inside the map (in box order): every
    box draws its Gaussian, one past the slots counts as dropped, one clipped to nothing as skipped.
    ``count`` is the number of slots filled; ``centres``/``clipped`` (output cells) feed the centre regions."""
    h, w = map_hw
    K = max_objects
    heatmap = np.zeros((h, w), np.float32)
    index = np.zeros((K,), np.int64)
    mask = np.zeros((K,), bool)
    offset = np.zeros((K, 2), np.float32)
    size = np.zeros((K, size_channels), np.float32)
    slot_ids = np.full((K,), -1, np.int64)
    box_index = np.full((K,), -1, np.int64)
    centres = np.zeros((K, 2), np.float64)
    clipped_slots = np.zeros((K, 4), np.float64)

    out = boxes / down_ratio
    clipped = out.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    valid = (bw > 0) & (bh > 0)
    num_skipped = int((~valid).sum())
    num_dropped = 0
    k = 0
    for i in np.nonzero(valid)[0]:
        c = np.array([(clipped[i, 0] + clipped[i, 2]) / 2, (clipped[i, 1] + clipped[i, 3]) / 2])
        p = np.array([min(int(np.floor(c[0])), w - 1), min(int(np.floor(c[1])), h - 1)])
        radius = max(0, int(gaussian_radius((math.ceil(bh[i]), math.ceil(bw[i])), min_overlap)))
        draw_gaussian(heatmap, (p[0], p[1]), radius)
        if k >= K:
            num_dropped += 1
            continue
        index[k] = p[1] * w + p[0]
        mask[k] = True
        offset[k] = c - p
        if size_channels == 4:
            cx, cy = c * down_ratio
            size[k] = [cx - boxes[i, 0], cy - boxes[i, 1], boxes[i, 2] - cx, boxes[i, 3] - cy]
        else:
            size[k] = [bw[i] * down_ratio, bh[i] * down_ratio]
        slot_ids[k] = id_arr[i]
        box_index[k] = i
        centres[k] = c
        clipped_slots[k] = clipped[i]
        k += 1
    return {"heatmap": heatmap, "index": index, "mask": mask, "offset": offset, "size": size, "ids": slot_ids,
            "box_index": box_index, "centres": centres, "clipped": clipped_slots, "count": k,
            "num_dropped": num_dropped, "num_skipped": num_skipped}


def _ignore_map(ignore_boxes_xyxy: np.ndarray | None, heatmap: np.ndarray, down_ratio: int, where: str) -> np.ndarray:
    """``(h, w)`` 1 inside the ignore regions (output cells, rounded outwards), 0 wherever a person's
    Gaussian reaches: a labelled person inside a crowd region still trains."""
    h, w = heatmap.shape
    ignore = np.zeros((h, w), np.float32)
    if ignore_boxes_xyxy is not None:
        ign = np.asarray(ignore_boxes_xyxy, dtype=np.float64).reshape(-1, 4) / down_ratio
        for x1, y1, x2, y2 in ign:
            if not np.isfinite([x1, y1, x2, y2]).all():
                raise ValueError(f"{where}ignore box is not finite: {[x1, y1, x2, y2]}")
            x0, x3 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
            y0, y3 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
            if x3 > x0 and y3 > y0:
                ignore[y0:y3, x0:x3] = 1.0
        ignore[heatmap > 0] = 0.0
    return ignore


def _centre_regions(
    index: np.ndarray,
    centres: np.ndarray,
    clipped: np.ndarray,
    map_hw: tuple[int, int],
    radius: int,
    K: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(K, R)`` flat cell indices and validity of each object's centre region (see module doc)."""
    h, w = map_hw
    offs = _region_offsets(radius)
    R = len(offs)
    region_index = np.zeros((K, R), np.int64)
    region_mask = np.zeros((K, R), bool)
    k = len(index)
    if k == 0:
        return region_index, region_mask
    px, py = index % w, index // w
    cx = px[:, None] + offs[None, :, 0]  # (k, R)
    cy = py[:, None] + offs[None, :, 1]
    inside_map = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    mx, my = cx + 0.5, cy + 0.5  # cell centres, output units
    inside_box = (
        (mx >= clipped[:, 0:1]) & (mx <= clipped[:, 2:3]) & (my >= clipped[:, 1:2]) & (my <= clipped[:, 3:4])
    )
    claim = inside_map & (inside_box | (offs[None, :, 0] == 0) & (offs[None, :, 1] == 0))
    flat = np.where(claim, cy * w + cx, -1)
    dist = (mx - centres[:, 0:1]) ** 2 + (my - centres[:, 1:2]) ** 2
    # Resolve cells claimed by several objects: the nearest centre wins, ties -> earlier slot.
    obj, col = np.meshgrid(np.arange(k), np.arange(R), indexing="ij")  # (k, R) slot and window column
    sel = claim.ravel()
    cells, d, o, r = flat.ravel()[sel], dist.ravel()[sel], obj.ravel()[sel], col.ravel()[sel]
    order = np.lexsort((o, d, cells))
    cells, o, r = cells[order], o[order], r[order]
    first = np.ones(len(cells), bool)
    first[1:] = cells[1:] != cells[:-1]
    keep = np.zeros((k, R), bool)
    keep[o[first], r[first]] = True
    region_index[:k] = np.where(keep, flat, 0)
    region_mask[:k] = keep
    return region_index, region_mask


def person_keys(image_uid: int | np.ndarray, num_boxes: int, box_bits: int = 16) -> np.ndarray:
    """Globally unique int64 keys ``image_uid << box_bits | box_index`` for "every person is its own identity".

    Both augmented views of one image must use the same ``image_uid`` (and keep
    box order through augmentation) so that a person's two views share a key.
    ``image_uid`` must be unique across the whole dataset (e.g. the global
    sample index), not per worker.
    """
    if num_boxes >= (1 << box_bits):
        raise ValueError(f"{num_boxes} boxes do not fit in {box_bits} bits of a person key")
    uid = int(image_uid)
    if uid < 0 or uid >= (1 << (62 - box_bits)):
        raise ValueError(f"image_uid {uid} out of range for a person key")
    return (np.int64(uid) << np.int64(box_bits)) | np.arange(num_boxes, dtype=np.int64)


def collate_targets(targets: Sequence[dict[str, torch.Tensor]], trim: bool = False) -> dict[str, torch.Tensor]:
    """Stack per-image targets into a batch: every tensor gains a leading ``B`` axis.

    With ``trim`` the slot axis K is cut to the largest number of objects in
    the batch (at least 1): objects are packed at the front of the slots, so
    nothing is lost and the per-object tensors (and teacher embeddings) shrink.
    """
    if not targets:
        raise ValueError("collate_targets: empty list")
    keys = set(targets[0])
    for j, t in enumerate(targets):
        if set(t) != keys:
            raise ValueError(f"collate_targets: target {j} has keys {sorted(t)}, expected {sorted(keys)}")
    batch: dict[str, Any] = {k: torch.stack([t[k] for t in targets]) for k in targets[0]}
    if trim:
        n = max(int(batch["mask"].sum(1).max()), 1)
        for k in SLOT_KEYS:
            if k in batch:
                batch[k] = batch[k][:, :n].contiguous()
    return batch
