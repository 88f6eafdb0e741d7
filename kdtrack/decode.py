"""Batched CenterNet decode: head outputs -> per-image ``Detections`` in original-image pixels.

Inverts ``kdtrack.data.targets``: peak cell ``p`` plus offset ``o`` gives the centre
``(p + o) * r`` in input pixels; 4 size channels are ``(l, t, r, b)`` from that
centre, 2 channels are ``(w, h)`` around it. Boxes then go back through the
letterbox. Embeddings are read at the peak cells.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdtrack.config import DecodeConfig
from kdtrack.data.letterbox import LetterboxTransform
from kdtrack.readout import read_at_boxes
from kdtrack.structures import Detections


def peak_nms(heat: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Zero every cell of ``(B, C, h, w)`` scores that is not the max of its ``kernel`` window."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat).to(heat.dtype)


def gather_at(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` map, ``(B, K)`` flat cell indices -> ``(B, K, C)``."""
    b, c = feature.shape[:2]
    flat = feature.reshape(b, c, -1)
    return flat.gather(2, index[:, None, :].expand(b, c, index.shape[1])).permute(0, 2, 1)


def boxes_from_heads(
    index: torch.Tensor, offset: torch.Tensor, size: torch.Tensor, map_width: int, down_ratio: int
) -> torch.Tensor:
    """Centre cells ``(B, K)``, offsets ``(B, K, 2)``, sizes ``(B, K, S)`` -> boxes ``(B, K, 4)`` input pixels."""
    xs = (index % map_width).to(offset.dtype) + offset[..., 0]
    ys = torch.div(index, map_width, rounding_mode="floor").to(offset.dtype) + offset[..., 1]
    cx, cy = xs * down_ratio, ys * down_ratio
    if size.shape[-1] == 4:
        return torch.stack([cx - size[..., 0], cy - size[..., 1], cx + size[..., 2], cy + size[..., 3]], -1)
    if size.shape[-1] == 2:
        half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)
    raise ValueError(f"size head must have 2 or 4 channels, got {size.shape[-1]}")


@torch.no_grad()
def decode_batch(
    outputs: Mapping[str, torch.Tensor],
    top_k: int = 500,
    nms_kernel: int = 3,
    down_ratio: int = 4,
    normalize_embeddings: bool = True,
    id_readout: str = "cell",
) -> dict[str, torch.Tensor]:
    """Top-K peaks of a batch, before thresholding: tensors with a leading ``(B, K)``.

    Returns ``scores (B,K)`` (sigmoid), ``index (B,K)``, ``boxes_xyxy (B,K,4)``
    in network-input pixels, ``embeddings (B,K,k)`` (L2-normalised when asked;
    absent when the outputs have no ``"embedding"``), read at the peak cell or, with a pooled
    ``id_readout``, over each decoded box (``kdtrack.readout``; ``(B,K,readout_dim)``).
    """
    heat = torch.sigmoid(outputs["heatmap"].float())
    b, _, h, w = heat.shape
    scores = peak_nms(heat, nms_kernel).reshape(b, -1)
    k = min(int(top_k), h * w)
    scores, index = torch.topk(scores, k, dim=1)
    offset = gather_at(outputs["offset"].float(), index)
    size = gather_at(outputs["size"].float(), index)
    result = {
        "scores": scores,
        "index": index,
        "boxes_xyxy": boxes_from_heads(index, offset, size, w, down_ratio),
    }
    if "embedding" in outputs and outputs["embedding"] is not None:
        if id_readout == "cell":
            emb = gather_at(outputs["embedding"].float(), index)
        else:
            boxes = result["boxes_xyxy"].reshape(-1, 4)
            images = torch.arange(b, device=boxes.device).repeat_interleave(k)
            emb = read_at_boxes(outputs["embedding"], boxes, images, id_readout, down_ratio).reshape(b, k, -1)
        result["embeddings"] = F.normalize(emb, dim=-1) if normalize_embeddings else emb
    return result


def decode_detections(
    outputs: Mapping[str, torch.Tensor],
    cfg: DecodeConfig = DecodeConfig(),
    *,
    down_ratio: int = 4,
    transforms: Sequence[LetterboxTransform | None] | None = None,
    normalize_embeddings: bool = True,
    score_threshold: float | None = None,
    id_readout: str = "cell",
) -> list[Detections]:
    """One ``Detections`` per image: peaks with score > threshold, boxes in original pixels.

    ``transforms[i]`` maps image ``i`` back from the letterbox (``None`` keeps
    network-input pixels). ``score_threshold`` overrides ``cfg.score_threshold``.
    """
    thr = cfg.score_threshold if score_threshold is None else float(score_threshold)
    dec = decode_batch(outputs, cfg.top_k, cfg.nms_kernel, down_ratio, normalize_embeddings, id_readout)
    b = dec["scores"].shape[0]
    if transforms is not None and len(transforms) != b:
        raise ValueError(f"decode_detections: {b} images but {len(transforms)} letterbox transforms")
    scores = dec["scores"].cpu().numpy()
    boxes = dec["boxes_xyxy"].cpu().numpy()
    emb = dec["embeddings"].cpu().numpy() if "embeddings" in dec else None
    result = []
    for i in range(b):
        keep = scores[i] > thr
        boxes_i = boxes[i][keep]
        tf = transforms[i] if transforms is not None else None
        if tf is not None:
            boxes_i = tf.boxes_from_letterbox(boxes_i, clip=cfg.clip_to_image)
        # a size head can predict a negative extent (early in training): such a
        # box is not a detection, and the tracker rejects it, so drop it here
        valid = (boxes_i[:, 2] > boxes_i[:, 0]) & (boxes_i[:, 3] > boxes_i[:, 1])
        if not valid.all():
            boxes_i = boxes_i[valid]
            keep[np.flatnonzero(keep)[~valid]] = False
        emb_i = emb[i][keep] if emb is not None else np.zeros((int(keep.sum()), 0), np.float32)
        result.append(Detections(boxes_i, scores[i][keep], emb_i))
    return result
