"""Teacher soft targets for KD: crop every ground-truth box, run the frozen teacher.

Crops are cut from the UN-augmented image (before photometric/affine
augmentation). Embeddings come back as one (N_i, D) tensor per image in the
order of that image's boxes; the data pipeline carries each box's original
index through augmentation, and ``select_kept`` keeps embedding j exactly
when box j survived (the KDMOT public code loses this alignment).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

DEFAULT_CROP_SIZE = (256, 128)  # (height, width), the teacher's input
DEFAULT_BATCH_SIZE = 64  # crops per teacher forward


def _as_boxes(boxes: torch.Tensor | np.ndarray, index: int, device: torch.device) -> torch.Tensor:
    boxes_xyxy = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if isinstance(boxes, np.ndarray) else boxes)
    boxes_xyxy = boxes_xyxy.to(device=device, dtype=torch.float32)
    if boxes_xyxy.numel() == 0:
        return boxes_xyxy.reshape(0, 4)
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] != 4:
        raise ValueError(f"boxes_list[{index}]: expected (N, 4) xyxy boxes, got shape {tuple(boxes_xyxy.shape)}")
    if not torch.isfinite(boxes_xyxy).all():
        raise ValueError(f"boxes_list[{index}]: boxes contain NaN or inf")
    return boxes_xyxy


def _rois(images: torch.Tensor, boxes_list: Sequence[torch.Tensor | np.ndarray]) -> tuple[torch.Tensor, list[int]]:
    """(K, 5) rows (image index, x1, y1, x2, y2) and the per-image box counts."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float RGB in [0, 1] (the teacher normalises itself), got {images.dtype}")
    if len(boxes_list) != images.shape[0]:
        raise ValueError(f"boxes_list has {len(boxes_list)} entries for {images.shape[0]} images")
    rows, counts = [], []
    for i, boxes in enumerate(boxes_list):
        boxes_xyxy = _as_boxes(boxes, i, images.device)
        counts.append(len(boxes_xyxy))
        rows.append(torch.cat([torch.full((len(boxes_xyxy), 1), float(i), device=images.device), boxes_xyxy], 1))
    return torch.cat(rows) if rows else torch.zeros(0, 5, device=images.device), counts


def _crop_rois(images: torch.Tensor, rois: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    if len(rois) == 0:
        return images.new_zeros((0, 3, *out_size))
    # aligned=True: pixel i covers [i, i+1), so an integer box [x1, x2) maps its pixels exactly
    return roi_align(images, rois.to(images.dtype), output_size=out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def crop_boxes(images: torch.Tensor, boxes_list: Sequence[torch.Tensor | np.ndarray],
               out_size: tuple[int, int] = DEFAULT_CROP_SIZE) -> torch.Tensor:
    """images (B, 3, H, W) float; boxes_list[i] (N_i, 4) xyxy in that image's pixels
    -> (sum N_i, 3, out_h, out_w) crops, image by image, box by box (bilinear, adaptive sampling)."""
    rois, _ = _rois(images, boxes_list)
    return _crop_rois(images, rois, tuple(out_size))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _embed_fn(teacher: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return teacher.embed if hasattr(teacher, "embed") else teacher


def _teacher_device(teacher: nn.Module, fallback: torch.device) -> torch.device:
    param = next(teacher.parameters(), None)
    return param.device if param is not None else fallback


def teacher_embeddings(teacher: nn.Module, images: torch.Tensor, boxes_list: Sequence[torch.Tensor | np.ndarray],
                       out_size: tuple[int, int] = DEFAULT_CROP_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                       keep: Sequence[torch.Tensor | np.ndarray] | None = None) -> list[torch.Tensor]:
    """One (N_i, D) tensor per image, row j = teacher feature of box j (no gradients, eval mode).

    ``keep`` (optional, one index array per image) returns only the rows of
    the boxes that survived augmentation, in ``keep`` order. Crops are cut
    and embedded ``batch_size`` at a time so memory stays bounded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rois, counts = _rois(images, boxes_list)
    embed = _embed_fn(teacher)
    device = _teacher_device(teacher, images.device)
    chunks = []
    with torch.no_grad(), _eval_mode(teacher):
        for start in range(0, len(rois), batch_size):
            crops = _crop_rois(images, rois[start:start + batch_size], tuple(out_size))
            chunks.append(embed(crops.to(device)))
    if chunks:
        per_image = list(torch.cat(chunks).split(counts))
    else:
        dim = _probe_dim(teacher, embed, out_size, device)
        per_image = [torch.zeros(0, dim, device=device) for _ in counts]
    return select_kept(per_image, keep) if keep is not None else per_image


def _probe_dim(teacher: nn.Module, embed: Callable, out_size: tuple[int, int], device: torch.device) -> int:
    """Feature size when no image has a box: ``feature_dim`` if the teacher states it, else one dummy forward."""
    dim = getattr(teacher, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    with torch.no_grad(), _eval_mode(teacher):
        return int(embed(torch.zeros(1, 3, *out_size, device=device)).shape[1])


def select_kept(embeddings: Sequence[torch.Tensor], keep: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
    """embeddings[i] (N_i, D), keep[i] original indices of the surviving boxes -> [(len(keep[i]), D)]."""
    if len(keep) != len(embeddings):
        raise ValueError(f"keep has {len(keep)} entries for {len(embeddings)} images")
    out = []
    for i, (emb, idx) in enumerate(zip(embeddings, keep)):
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64) if not torch.is_tensor(idx) else idx,
                                dtype=torch.long, device=emb.device).reshape(-1)
        if idx_t.numel() and (idx_t.min() < 0 or idx_t.max() >= len(emb)):
            raise ValueError(f"keep[{i}]: indices must be in [0, {len(emb)}), got {idx_t.tolist()}")
        out.append(emb[idx_t])
    return out


def embed_crops(teacher: nn.Module, crops: torch.Tensor | Sequence[torch.Tensor],
                size: tuple[int, int] | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """Teacher features of ready-cut crops (person-search queries, two-step tracking).

    crops: (N, 3, h, w) RGB [0, 1], or a list of (3, h_i, w_i); ``size`` = (H, W)
    resizes each crop (bilinear, antialiased; required for a list of mixed sizes). -> (N, D).
    """
    if isinstance(crops, torch.Tensor):
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be (N, 3, h, w), got {tuple(crops.shape)}")
        items: Sequence[torch.Tensor] = crops
    else:
        items = list(crops)
        if size is None and len({tuple(c.shape) for c in items}) > 1:
            raise ValueError("embed_crops: crops of different sizes need size=(H, W)")
    embed = _embed_fn(teacher)
    device = _teacher_device(teacher, torch.device("cpu"))
    outs = []
    with torch.no_grad(), _eval_mode(teacher):
        for start in range(0, len(items), batch_size):
            batch = [c.float() for c in items[start:start + batch_size]]
            if size is not None:
                batch = [F.interpolate(c.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False,
                                       antialias=True)[0] for c in batch]
            outs.append(embed(torch.stack(batch).to(device)))
    if not outs:
        probe = size or (tuple(crops.shape[-2:]) if isinstance(crops, torch.Tensor) else DEFAULT_CROP_SIZE)
        return torch.zeros(0, _probe_dim(teacher, embed, probe, device), device=device)
    return torch.cat(outs)
