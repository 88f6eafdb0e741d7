"""Canvases cross the feed as uint8 and become float32 on the training device, in the train step.

A student canvas (``kdtrack.data.letterbox``) is ``k / 255`` for uint8 pixels ``k`` plus the letterbox grey
``127.5 / 255``, which is no level: :class:`~kdtrack.data.letterbox.Uint8Canvas` holds it exactly as uint8
levels and a grey mask. A feed batch (``kdtrack.data.dataset.collate(..., uint8=True)``) carries each canvas
key as ``(N, 3, H, W)`` uint8 levels and ``<key>_grey``, the grey mask with its bits packed along the width
(``(N, 3, H, ceil(W / 8))`` uint8): 1.125 bytes a value instead of float32's 4, through pinned memory to
the GPU. :func:`float_canvases` rebuilds the float32 canvas there, bit for bit what the host made before
(correctly rounded division, the grey written exactly), without reading anything back to the host.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from kdtrack.data.letterbox import DEFAULT_PAD_VALUE, Uint8Canvas

CANVAS_KEYS = ("image", "orig_image")  # a sample's letterboxed canvases (KD adds the un-augmented one)
GREY_SUFFIX = "_grey"  # <canvas key>_grey: its grey mask (bool per value in a sample, bits in a batch)
GREY = float(np.float32(DEFAULT_PAD_VALUE) / np.float32(255.0))  # the float canvas's letterbox grey
GREY_LEVEL = 128  # the level under a grey value (np.rint(127.5)); the mask decides, not the level


def as_uint8(canvas: Any) -> Uint8Canvas | None:
    """A sample's canvas as uint8 levels (a ``Uint8Canvas`` as it travelled, or a float32 array encoded),
    or None when it cannot be held exactly (it then crosses the feed as float32)."""
    packed = Uint8Canvas.encode(canvas) if isinstance(canvas, np.ndarray) else canvas
    return packed if isinstance(packed, Uint8Canvas) and packed.grey == np.float32(GREY) else None


def as_float(canvas: Any) -> np.ndarray:
    return canvas.decode() if isinstance(canvas, Uint8Canvas) else canvas


def split_canvases(samples: list[dict[str, Any]], uint8: bool) -> list[dict[str, Any]]:
    """Samples whose canvases are numpy arrays: with ``uint8``, levels plus a ``<key>_grey`` bool mask for
    every key that all samples can hold exactly (else float32, as without ``uint8``)."""
    out = [dict(s) for s in samples]
    for key in CANVAS_KEYS:
        if key not in out[0]:
            continue
        packed = [as_uint8(s[key]) for s in out] if uint8 else [None]
        if all(p is not None for p in packed):
            for s, p in zip(out, packed):
                s[key], s[key + GREY_SUFFIX] = p.levels, p.grey_mask()
        else:
            for s in out:
                s[key] = as_float(s[key])
    return out


def pack_grey(mask: np.ndarray) -> np.ndarray:
    """A batch's ``(..., W)`` bool grey mask as bits packed along the width (``float_canvases`` unpacks)."""
    return np.packbits(mask, axis=-1)


def float_canvases(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch with its uint8 canvases as float32 on their device (a float32 canvas passes untouched):
    ``levels / 255``, the grey where its bit is set. The train step calls it once, after moving the batch."""
    out = dict(batch)
    for key in CANVAS_KEYS:
        levels = out.get(key)
        if not torch.is_tensor(levels) or levels.dtype != torch.uint8:
            continue
        bits = out.pop(key + GREY_SUFFIX)
        shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)  # np.packbits: big-endian bits
        grey = ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., : levels.shape[-1]].bool()
        # a device tensor as divisor: CUDA multiplies by the reciprocal of a host scalar (not correctly rounded)
        canvas = levels.to(torch.float32) / torch.full((), 255.0, device=levels.device)
        out[key] = canvas.masked_fill_(grey, GREY)
    return out
