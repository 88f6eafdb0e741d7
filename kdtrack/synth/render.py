"""Drawing one person: an articulated, viewpoint-dependent sprite with its own mask.

The sprite is drawn with OpenCV anti-aliased primitives at sub-pixel precision
into a patch the size of the amodal full box. ``image`` is premultiplied by
``alpha`` (edges fade to black), so compositing is ``bg * (1 - a) + image``.
Body geometry is expressed in fractions of the body height ``h`` (y from the
top of the box, x from the box centre); side views are drawn facing right and
mirrored for ``"left"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from kdtrack.synth.appearance import Color, Identity

VIEWS = ("front", "back", "left", "right")
BODY_ASPECT = 0.4  # full-box width / height at width_scale 1 (pedestrian boxes are ~0.41)
MIN_SPRITE_HEIGHT = 6  # pixels; smaller people are drawn at this size
SHIFT = 4  # OpenCV fractional bits for sub-pixel drawing
ONE = 1 << SHIFT
FAR_SIDE_SHADE = 0.72  # far arm / leg in side view are darker (self-shadow)

# Body layout, fractions of the body height.
HEAD_CY, HEAD_R = 0.085, 0.068
SHOULDER_Y, HIP_Y, FOOT_Y = 0.19, 0.53, 0.975
ARM_LEN = 0.33
LEG_SWING = 0.42  # radians, side view
ARM_SWING = 0.5  # radians, side view


@dataclass
class Sprite:
    """A drawn person: ``image`` (h, w, 3) uint8 premultiplied BGR, ``alpha`` (h, w) uint8,
    ``head_xyxy`` (4,) float32 head box in sprite pixels."""

    image: np.ndarray
    alpha: np.ndarray
    head_xyxy: np.ndarray


def sprite_size(height_px: float, width_scale: float) -> tuple[int, int]:
    """(height, width) in pixels of the sprite (= amodal full box) for a person this tall."""
    h = max(int(round(height_px)), MIN_SPRITE_HEIGHT)
    w = max(int(round(h * BODY_ASPECT * width_scale)), 3)
    return h, w


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(255, c * factor)) for c in color)  # type: ignore[return-value]


class _Painter:
    """Draws the same primitive into the colour patch and the mask; coordinates in body units."""

    def __init__(self, image: np.ndarray, alpha: np.ndarray) -> None:
        self.image, self.alpha = image, alpha
        self.h = image.shape[0]
        self.cx = image.shape[1] / 2.0

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return int(round((self.cx + x * self.h) * ONE)), int(round(y * self.h * ONE))

    def poly(self, pts: list[tuple[float, float]], color: Color, target: np.ndarray | None = None) -> None:
        arr = np.array([self.pt(x, y) for x, y in pts], np.int32)
        if target is not None:
            cv2.fillPoly(target, [arr], 255, cv2.LINE_AA, SHIFT)
            return
        cv2.fillPoly(self.image, [arr], color, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.alpha, [arr], 255, cv2.LINE_AA, SHIFT)

    def rect(self, x1: float, y1: float, x2: float, y2: float, color: Color) -> None:
        self.poly([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], color)

    def limb(self, p1: tuple[float, float], p2: tuple[float, float], thick: float, color: Color) -> None:
        t = max(1, int(round(thick * self.h)))
        a, b = self.pt(*p1), self.pt(*p2)
        cv2.line(self.image, a, b, color, t, cv2.LINE_AA, SHIFT)
        cv2.line(self.alpha, a, b, 255, t, cv2.LINE_AA, SHIFT)

    def ellipse(self, c: tuple[float, float], axes: tuple[float, float], start: float, end: float,
                color: Color) -> None:
        center = self.pt(*c)
        ax = (max(1, int(round(axes[0] * self.h * ONE))), max(1, int(round(axes[1] * self.h * ONE))))
        cv2.ellipse(self.image, center, ax, 0, start, end, color, -1, cv2.LINE_AA, SHIFT)
        cv2.ellipse(self.alpha, center, ax, 0, start, end, 255, -1, cv2.LINE_AA, SHIFT)


def _pattern(ident: Identity, shape: tuple[int, int], top_y: float, bottom_y: float) -> np.ndarray:
    """(h, w, 3) float32 texture of the top garment (stripes / checks / two-tone) over the patch."""
    h, w = shape
    period = max(2, int(round(0.045 * h)))
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    if ident.top_pattern == "hstripes":
        sel = (yy // period) % 2 == 1
    elif ident.top_pattern == "vstripes":
        sel = (xx // period) % 2 == 1
    elif ident.top_pattern == "checks":
        sel = ((yy // period) + (xx // period)) % 2 == 1
    elif ident.top_pattern == "two_tone":
        sel = yy >= (top_y + bottom_y) / 2 * h
    else:
        return np.broadcast_to(np.array(ident.top_color, np.float32), (h, w, 3))
    c1 = np.array(ident.top_color, np.float32)
    c2 = np.array(ident.top_color2, np.float32)
    return np.where(np.broadcast_to(sel, (h, w))[..., None], c2, c1)


def _draw_torso(p: _Painter, ident: Identity, pts: list[tuple[float, float]]) -> None:
    mask = np.zeros_like(p.alpha)
    p.poly(pts, (0, 0, 0), target=mask)
    a = mask.astype(np.float32)[..., None] / 255.0
    tex = _pattern(ident, mask.shape, SHOULDER_Y, HIP_Y)
    p.image[:] = (p.image.astype(np.float32) * (1 - a) + tex * a).astype(np.uint8)
    np.maximum(p.alpha, mask, out=p.alpha)


def _draw_leg(p: _Painter, ident: Identity, hip: tuple[float, float], foot: tuple[float, float],
              thick: float, shade: float, facing: float) -> None:
    bottom = _shade(ident.bottom_color, shade)
    skin = _shade(ident.skin_color, shade)
    if ident.bottom_style == "trousers":
        p.limb(hip, foot, thick, bottom)
    else:
        split = 0.4 if ident.bottom_style == "shorts" else 0.0
        knee = (hip[0] + (foot[0] - hip[0]) * split, hip[1] + (foot[1] - hip[1]) * split)
        p.limb(hip, foot, thick * 0.8, skin)
        if split > 0:
            p.limb(hip, knee, thick * 1.05, bottom)
    shoe = _shade(ident.shoe_color, shade)
    p.limb(foot, (foot[0] + 0.04 * facing, foot[1] + 0.005), thick * 0.8, shoe)


def _draw_arm(p: _Painter, ident: Identity, shoulder: tuple[float, float], hand: tuple[float, float],
              thick: float, shade: float) -> None:
    top = _shade(ident.top_color, shade)
    if ident.sleeves == "long":
        p.limb(shoulder, hand, thick, top)
    else:
        elbow = (shoulder[0] + (hand[0] - shoulder[0]) * 0.45, shoulder[1] + (hand[1] - shoulder[1]) * 0.45)
        p.limb(shoulder, hand, thick * 0.8, _shade(ident.skin_color, shade))
        p.limb(shoulder, elbow, thick * 1.05, top)


def _draw_head(p: _Painter, ident: Identity, view: str) -> float:
    """Head, hair and hat; returns the extra height a hat adds above the head (body units)."""
    c = (0.0, HEAD_CY)
    r = HEAD_R
    p.limb((0.0, HEAD_CY + r * 0.6), (0.0, SHOULDER_Y), 0.045, ident.skin_color)  # neck
    hair, skin = ident.hair_color, ident.skin_color
    long_hair = ident.hair_style == "long"
    if view == "back":
        if long_hair:
            p.rect(-r * 0.95, HEAD_CY, r * 0.95, SHOULDER_Y + 0.05, hair)
        p.ellipse(c, (r, r * 1.05), 0, 360, skin if ident.hair_style == "bald" else hair)
    elif view == "front":
        if long_hair:
            p.rect(-r * 1.05, HEAD_CY - 0.01, r * 1.05, SHOULDER_Y + 0.03, hair)
        p.ellipse(c, (r * 0.9, r * 1.05), 0, 360, skin)
        if ident.hair_style != "bald":
            p.ellipse((0.0, HEAD_CY - r * 0.25), (r * 0.95, r * 0.8), 180, 360, hair)
    else:  # side, facing right: hair covers the back half
        if long_hair:
            p.rect(-r * 0.95, HEAD_CY, 0.0, SHOULDER_Y + 0.05, hair)
        p.ellipse(c, (r * 0.95, r * 1.05), 0, 360, skin)
        if ident.hair_style != "bald":
            p.ellipse((-r * 0.1, HEAD_CY - r * 0.1), (r * 0.9, r * 0.95), 90, 315, hair)
    extra = 0.0
    if ident.hat == "cap":
        p.ellipse((0.0, HEAD_CY - r * 0.3), (r * 1.0, r * 0.85), 180, 360, ident.hat_color)
        if view == "front":
            p.ellipse((0.0, HEAD_CY - r * 0.3), (r * 1.1, r * 0.18), 0, 360, _shade(ident.hat_color, 0.8))
        elif view in ("left", "right"):
            p.limb((0.0, HEAD_CY - r * 0.3), (r * 1.6, HEAD_CY - r * 0.25), 0.015, _shade(ident.hat_color, 0.8))
        extra = r * 0.15
    elif ident.hat == "beanie":
        p.ellipse((0.0, HEAD_CY - r * 0.15), (r * 1.05, r * 1.1), 180, 360, ident.hat_color)
        extra = r * 0.25
    return extra


def render_person(ident: Identity, height_px: float, view: str, phase: float) -> Sprite:
    """Draw ``ident`` ``height_px`` tall, seen from ``view`` (one of VIEWS) at gait ``phase`` (radians)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    h, w = sprite_size(height_px, ident.width_scale)
    image = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    p = _Painter(image, alpha)
    ws = ident.width_scale
    s = math.sin(phase)
    leg_t, arm_t = 0.07 * ws, 0.05 * ws
    leg_len = FOOT_Y - HIP_Y
    side = view in ("left", "right")

    if side:  # drawn facing right, mirrored below for "left"
        half = 0.075 * ws
        a, b = LEG_SWING * s, -ARM_SWING * s
        hip = (0.0, HIP_Y)
        shoulder = (0.0, SHOULDER_Y + 0.02)
        far_foot = (hip[0] - leg_len * math.sin(a), hip[1] + leg_len * math.cos(a))
        near_foot = (hip[0] + leg_len * math.sin(a), hip[1] + leg_len * math.cos(a))
        far_hand = (shoulder[0] - ARM_LEN * math.sin(b), shoulder[1] + ARM_LEN * math.cos(b))
        near_hand = (shoulder[0] + ARM_LEN * math.sin(b), shoulder[1] + ARM_LEN * math.cos(b))
        if ident.bag == "backpack":
            p.rect(-half - 0.07, 0.21, -half + 0.01, 0.45, ident.bag_color)
        _draw_arm(p, ident, shoulder, far_hand, arm_t, FAR_SIDE_SHADE)
        _draw_leg(p, ident, hip, far_foot, leg_t, FAR_SIDE_SHADE, 1.0)
        _draw_leg(p, ident, hip, near_foot, leg_t, 1.0, 1.0)
        if ident.bottom_style == "skirt":
            p.poly([(-half, HIP_Y - 0.02), (half, HIP_Y - 0.02), (half + 0.05, HIP_Y + 0.19),
                    (-half - 0.05, HIP_Y + 0.19)], ident.bottom_color)
        _draw_torso(p, ident, [(-half, SHOULDER_Y), (half, SHOULDER_Y), (half * 0.9, HIP_Y + 0.02),
                               (-half * 0.9, HIP_Y + 0.02)])
        extra = _draw_head(p, ident, view)
        if ident.bag == "shoulder":
            p.rect(-0.03, 0.46, 0.07, 0.58, ident.bag_color)
        _draw_arm(p, ident, shoulder, near_hand, arm_t, 1.0)
    else:
        sh, hh = 0.15 * ws, 0.11 * ws
        lift = 0.03
        for sign, swing in ((-1.0, s), (1.0, -s)):
            hip = (sign * 0.055 * ws, HIP_Y)
            foot = (sign * 0.06 * ws, FOOT_Y - lift * max(0.0, swing))
            _draw_leg(p, ident, hip, foot, leg_t, 1.0, 0.0)
        if ident.bottom_style == "trousers":
            p.poly([(-hh, HIP_Y - 0.02), (hh, HIP_Y - 0.02), (hh * 0.8, HIP_Y + 0.07), (-hh * 0.8, HIP_Y + 0.07)],
                   ident.bottom_color)
        elif ident.bottom_style == "skirt":
            p.poly([(-hh, HIP_Y - 0.02), (hh, HIP_Y - 0.02), (hh + 0.05, HIP_Y + 0.19), (-hh - 0.05, HIP_Y + 0.19)],
                   ident.bottom_color)
        else:  # shorts
            p.poly([(-hh, HIP_Y - 0.02), (hh, HIP_Y - 0.02), (hh * 1.05, HIP_Y + 0.1), (-hh * 1.05, HIP_Y + 0.1)],
                   ident.bottom_color)
        for sign, swing in ((-1.0, -s), (1.0, s)):
            shoulder = (sign * (sh - 0.025), SHOULDER_Y + 0.02)
            hand = (sign * (sh + 0.01), SHOULDER_Y + 0.02 + ARM_LEN * (1 - 0.06 * swing))
            _draw_arm(p, ident, shoulder, hand, arm_t, 1.0)
        _draw_torso(p, ident, [(-sh, SHOULDER_Y), (sh, SHOULDER_Y), (hh, HIP_Y + 0.02), (-hh, HIP_Y + 0.02)])
        if view == "front":
            if ident.logo_color is not None:
                p.ellipse((0.0, 0.3), (0.035, 0.035), 0, 360, ident.logo_color)
            if ident.bag == "backpack":  # only the straps show from the front
                for sign in (-1.0, 1.0):
                    p.limb((sign * 0.09 * ws, SHOULDER_Y), (sign * 0.08 * ws, 0.37), 0.02, ident.bag_color)
        else:
            if ident.bag == "backpack":
                p.rect(-0.1 * ws, 0.21, 0.1 * ws, 0.46, ident.bag_color)
        if ident.bag == "shoulder":
            sign = 1.0 if view == "front" else -1.0
            p.limb((-sign * 0.12 * ws, SHOULDER_Y), (sign * 0.1 * ws, 0.5), 0.015, _shade(ident.bag_color, 0.8))
            x0 = sign * 0.08 * ws
            p.rect(min(x0, x0 + sign * 0.1), 0.46, max(x0, x0 + sign * 0.1), 0.58, ident.bag_color)
        extra = _draw_head(p, ident, view)

    head = np.array([w / 2 - HEAD_R * h, (HEAD_CY - HEAD_R * 1.05 - extra) * h,
                     w / 2 + HEAD_R * h, (HEAD_CY + HEAD_R * 1.05) * h], np.float32)
    head[[0, 2]] = np.clip(head[[0, 2]], 0, w)
    head[[1, 3]] = np.clip(head[[1, 3]], 0, h)
    if view == "left":
        image = np.ascontiguousarray(image[:, ::-1])
        alpha = np.ascontiguousarray(alpha[:, ::-1])
        head = np.array([w - head[2], head[1], w - head[0], head[3]], np.float32)
    return Sprite(image=image, alpha=alpha, head_xyxy=head)
