"""FairMOT-style letterbox: resize keeping the aspect ratio, pad with grey, RGB / 255.

The network sees a fixed ``(input_height, input_width)`` canvas (1088x608 in
FairMOT). The image is scaled by ``scale = min(H_in / H, W_in / W)`` and centred
on a canvas filled with ``pad_value`` (127.5 on the 0-255 scale, i.e. 0.5 after
the division by 255). ``LetterboxTransform`` remembers the mapping so that
boxes can go to the canvas (targets) and back to the original image (decode).

Multi-scale training (IDF / PointID) uses ``resize_pad`` instead: the shorter
side is resized to a drawn length (the longer side capped), the image is placed
at the top-left corner and the canvas padded with the same grey up to multiples
of 32, so its size varies per image and ``kdtrack.data.dataset.collate`` pads a batch
further (right and bottom) without moving any pixel or box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kdtrack.config import Config

DEFAULT_PAD_VALUE = 127.5  # FairMOT's grey, on the 0-255 scale
CANVAS_MULTIPLE = 32  # resize_pad rounds the canvas up to this (the coarsest backbone stride)


@dataclass(frozen=True)
class LetterboxTransform:
    """``canvas = original * scale + (pad_x, pad_y)``; sizes in pixels."""

    scale: float
    pad_x: float
    pad_y: float
    orig_width: int
    orig_height: int

    def boxes_to_letterbox(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """``(N, 4)`` original-image pixels -> canvas pixels."""
        b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        return b * np.float32(self.scale) + pad

    def boxes_from_letterbox(self, boxes_xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """``(N, 4)`` canvas pixels -> original-image pixels (clipped to the image when ``clip``)."""
        b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        out = (b - pad) / np.float32(self.scale)
        if clip:
            out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.orig_width)
            out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.orig_height)
        return out


def letterbox_transform(
    orig_width: int, orig_height: int, input_width: int, input_height: int
) -> LetterboxTransform:
    """The transform FairMOT's ``letterbox`` applies (padding rounded as it does)."""
    if orig_width <= 0 or orig_height <= 0:
        raise ValueError(f"letterbox: image size must be positive, got {orig_width}x{orig_height}")
    scale = min(input_height / orig_height, input_width / orig_width)
    new_w, new_h = round(orig_width * scale), round(orig_height * scale)
    # FairMOT: left = round(dw - 0.1), top = round(dh - 0.1) with dw, dh the half paddings.
    pad_x = round((input_width - new_w) / 2 - 0.1)
    pad_y = round((input_height - new_h) / 2 - 0.1)
    return LetterboxTransform(float(scale), float(pad_x), float(pad_y), int(orig_width), int(orig_height))


def letterbox(
    image_rgb: np.ndarray,
    input_width: int = 1088,
    input_height: int = 608,
    pad_value: float = DEFAULT_PAD_VALUE,
    interpolation: int = cv2.INTER_AREA,
) -> tuple[np.ndarray, LetterboxTransform]:
    """``(H, W, 3)`` RGB uint8 (0-255) -> ``(3, input_height, input_width)`` float32 in [0, 1].

    Padding is done in float so the grey is exactly ``pad_value / 255``.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"letterbox: expected an (H, W, 3) image, got shape {image_rgb.shape}")
    h, w = image_rgb.shape[:2]
    tf = letterbox_transform(w, h, input_width, input_height)
    return _place(image_rgb, tf, input_width, input_height, pad_value, interpolation), tf


def multiscale_transform(
    orig_width: int, orig_height: int, short_side: int, max_long_side: int, multiple: int = CANVAS_MULTIPLE
) -> tuple[LetterboxTransform, int, int]:
    """``(transform, canvas_width, canvas_height)`` of :func:`resize_pad`.

    ``scale = short_side / min(W, H)``, lowered to ``max_long_side / max(W, H)`` when the
    longer side would exceed it; the resized image sits at (0, 0) and the canvas is its size
    rounded UP to multiples of ``multiple`` (pad only, never a second resize).
    """
    if orig_width <= 0 or orig_height <= 0:
        raise ValueError(f"resize_pad: image size must be positive, got {orig_width}x{orig_height}")
    if short_side <= 0 or max_long_side <= 0 or multiple <= 0:
        raise ValueError(f"resize_pad: short side {short_side}, max long side {max_long_side} and multiple "
                         f"{multiple} must be positive (data.multiscale_short_sides / multiscale_max_long_side)")
    scale = short_side / min(orig_width, orig_height)
    if max(orig_width, orig_height) * scale > max_long_side:
        scale = max_long_side / max(orig_width, orig_height)
    new_w, new_h = max(round(orig_width * scale), 1), max(round(orig_height * scale), 1)
    canvas_w, canvas_h = math.ceil(new_w / multiple) * multiple, math.ceil(new_h / multiple) * multiple
    return LetterboxTransform(float(scale), 0.0, 0.0, int(orig_width), int(orig_height)), canvas_w, canvas_h


def resize_pad(
    image_rgb: np.ndarray,
    short_side: int,
    max_long_side: int = 1024,
    multiple: int = CANVAS_MULTIPLE,
    pad_value: float = DEFAULT_PAD_VALUE,
    interpolation: int = cv2.INTER_AREA,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Multi-scale canvas: ``(H, W, 3)`` RGB uint8 -> ``(3, H', W')`` float32 in [0, 1], H' and W'
    multiples of ``multiple`` (see :func:`multiscale_transform`); padding right/bottom in ``pad_value``."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"resize_pad: expected an (H, W, 3) image, got shape {image_rgb.shape}")
    h, w = image_rgb.shape[:2]
    tf, canvas_w, canvas_h = multiscale_transform(w, h, short_side, max_long_side, multiple)
    return _place(image_rgb, tf, canvas_w, canvas_h, pad_value, interpolation), tf


def _place(image_rgb: np.ndarray, tf: LetterboxTransform, canvas_w: int, canvas_h: int, pad_value: float,
           interpolation: int) -> np.ndarray:
    """Resize by ``tf.scale``, paste at ``(tf.pad_x, tf.pad_y)`` on a ``pad_value`` canvas, CHW / 255."""
    h, w = image_rgb.shape[:2]
    new_w, new_h = max(round(w * tf.scale), 1), max(round(h * tf.scale), 1)
    resized = cv2.resize(image_rgb, (new_w, new_h), interpolation=interpolation).astype(np.float32)
    canvas = np.full((canvas_h, canvas_w, 3), pad_value, dtype=np.float32)
    x0, y0 = int(tf.pad_x), int(tf.pad_y)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1) / 255.0, dtype=np.float32)


@dataclass(frozen=True)
class Uint8Canvas:
    """A float32 canvas of ``letterbox`` / ``resize_pad`` held in a quarter of the bytes, decoded bit for bit.

    Every value of such a canvas is ``k / 255`` for an integer pixel ``k`` (the image is resized in uint8) or
    the grey ``pad_value / 255``, which is no ``k / 255`` when ``pad_value`` is fractional (127.5): the
    levels ``k`` travel as uint8 and the grey as a packed bitmask. ``encode`` refuses (returns ``None``) a
    canvas it could not give back exactly, so a caller keeps the float32 array then.
    """

    levels: np.ndarray  # uint8, the canvas's shape
    grey_bits: np.ndarray  # np.packbits of (canvas == grey), flattened
    grey: np.float32

    @classmethod
    def encode(cls, canvas: np.ndarray, pad_value: float = DEFAULT_PAD_VALUE) -> "Uint8Canvas | None":
        if canvas.dtype != np.float32:
            return None
        grey = np.float32(pad_value) / np.float32(255.0)
        is_grey = canvas == grey
        levels = np.rint(np.clip(canvas, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        packed = cls(levels, np.packbits(is_grey, axis=None), grey)
        return packed if np.array_equal(packed.decode(), canvas) else None

    def grey_mask(self) -> np.ndarray:
        """Where the canvas holds the grey: bool, the canvas's shape."""
        return np.unpackbits(self.grey_bits, count=self.levels.size).reshape(self.levels.shape).astype(bool)

    def decode(self) -> np.ndarray:
        canvas = self.levels.astype(np.float32) / np.float32(255.0)
        canvas[self.grey_mask()] = self.grey
        return canvas


def boxes_to_letterbox(boxes_xyxy: np.ndarray, transform: LetterboxTransform) -> np.ndarray:
    return transform.boxes_to_letterbox(boxes_xyxy)


def boxes_from_letterbox(
    boxes_xyxy: np.ndarray, transform: LetterboxTransform, clip: bool = True
) -> np.ndarray:
    return transform.boxes_from_letterbox(boxes_xyxy, clip=clip)


def student_canvas(image: np.ndarray, cfg: Config, short_side: int | None = None) -> tuple[np.ndarray, Any]:
    """``(canvas (3, H, W) float32, transform)``: ``image`` letterboxed to ``model.input_width x
    input_height``, or (multi-scale) resized to ``short_side`` and padded by ``resize_pad``. The one canvas
    of the student: training samples (``kdtrack.data.dataset``) and the offline teacher store
    (``kdtrack.data.teacher_store``) cut their boxes from it."""
    if short_side is None:
        return letterbox(image, cfg.model.input_width, cfg.model.input_height)
    return resize_pad(image, short_side, cfg.data.multiscale_max_long_side)
