"""Scene composition: textured backgrounds, perspective, occluders, posters, and visibility.

Everything is drawn far-to-near (by foot row) into one image while an owner
map records which drawable covers each pixel. After all occlusion, a person's
visibility is (pixels it still owns inside the image) / (pixels of its full
silhouette), and its visible box is the tight box of those pixels — so a
visible box always lies inside the amodal full box, and truncation by the
image border lowers visibility like in MOT17. Boxes are float32 pixel
``x1, y1, x2, y2`` (pixel edges: a 1-pixel person at column 3 is [3, 4]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from kdtrack.synth.appearance import Color, Identity, hsv_color
from kdtrack.synth.render import Sprite, render_person

MASK_THRESHOLD = 128  # alpha >= this counts as the person's pixel
BACKGROUND_STYLES_TOP = ("sky", "bricks", "windows")
BACKGROUND_STYLES_GROUND = ("tiles", "asphalt", "grass")
OCCLUDER_KINDS = ("pole", "bench", "box")
POSTER_OPACITY = 0.65  # a poster figure is a faded print of a person


@dataclass
class Camera:
    """A ground-plane perspective: a person whose feet are on row ``y`` is
    ``gain * (y - horizon_y)`` pixels tall (times the identity's height scale)."""

    width: int
    height: int
    horizon_y: float
    gain: float

    def person_height(self, foot_y: float, height_scale: float = 1.0) -> float:
        return max(self.gain * (foot_y - self.horizon_y) * height_scale, 0.0)


@dataclass
class PersonActor:
    """A person to draw: feet at (``foot_x``, ``foot_y``) image pixels, ``height`` px tall."""

    identity: Identity
    foot_x: float
    foot_y: float
    height: float
    view: str
    phase: float
    label: int = -1  # track id / pid carried to the annotation
    kind: str = "person"  # person | static | mannequin | crowd


@dataclass
class Occluder:
    """A static object (pole, bench, box) standing on row ``foot_y``; ``box_xyxy`` in image pixels."""

    kind: str
    box_xyxy: tuple[float, float, float, float]
    color: Color

    @property
    def foot_y(self) -> float:
        return self.box_xyxy[3]


@dataclass
class Poster:
    """A wall poster: a frame with a faded person-like figure (CrowdHuman "mask", MOT reflection)."""

    frame_xyxy: tuple[int, int, int, int]
    figure: Identity
    frame_color: Color
    paper_color: Color


@dataclass
class Placement:
    """Where one drawable ended up after all occlusion (image pixels)."""

    full_xyxy: np.ndarray  # (4,) amodal box, may extend past the image
    visible_xyxy: np.ndarray  # (4,) tight box of visible pixels (zeros when invisible)
    head_xyxy: np.ndarray  # (4,) amodal head box (zeros for objects)
    visibility: float  # visible pixels / silhouette pixels, in [0, 1]
    head_visibility: float
    visible_mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), bool))
    mask_origin: tuple[int, int] = (0, 0)  # (x, y) of visible_mask[0, 0] in the image


# --------------------------------------------------------------------------- backgrounds


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(height, width) float32 smooth noise in [0, 1] (random grid, bicubic upsampling)."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)


def make_background(rng: np.random.Generator, width: int, height: int, horizon_y: float,
                    top_style: str | None = None, ground_style: str | None = None) -> np.ndarray:
    """(height, width, 3) uint8 scene: wall/sky above the horizon, a textured ground plane below."""
    top_style = top_style or str(rng.choice(BACKGROUND_STYLES_TOP))
    ground_style = ground_style or str(rng.choice(BACKGROUND_STYLES_GROUND))
    hz = int(np.clip(round(horizon_y), 1, height - 1))
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    img = np.zeros((height, width, 3), np.float32)

    top = np.zeros((hz, width, 3), np.float32)
    c1 = np.array(hsv_color(rng.integers(0, 180), rng.integers(20, 140), rng.integers(120, 240)), np.float32)
    c2 = np.array(hsv_color(rng.integers(0, 180), rng.integers(20, 140), rng.integers(60, 200)), np.float32)
    ty, tx = yy[:hz], xx
    if top_style == "sky":
        t = (ty / max(hz, 1))[..., None]
        top[:] = c1 * (1 - t) + c2 * t
    elif top_style == "bricks":
        p = int(rng.integers(5, 10))
        row = (ty // p).astype(np.int32)
        mortar = (ty % p < 1) | (((tx + (row % 2) * p) % (2 * p)) < 1)
        top[:] = c1
        top[mortar] = c1 * 0.6
    else:  # windows
        top[:] = c1
        pw, ph = int(rng.integers(14, 30)), int(rng.integers(12, 24))
        win = ((tx % pw) > pw * 0.3) & ((ty % ph) > ph * 0.35)
        top[win] = c2
    top *= (0.85 + 0.3 * _value_noise(rng, hz, width, 16))[..., None]
    img[:hz] = top

    gh = height - hz
    g = np.zeros((gh, width, 3), np.float32)
    gy = yy[hz:] - hz + 1.0
    gx = xx
    base = np.array(hsv_color(rng.integers(0, 180), rng.integers(0, 90), rng.integers(70, 190)), np.float32)
    if ground_style == "grass":
        base = np.array(hsv_color(rng.integers(35, 75), rng.integers(80, 200), rng.integers(60, 160)), np.float32)
    g[:] = base
    if ground_style == "tiles":
        vx = width / 2 + rng.uniform(-0.3, 0.3) * width
        kc, kz = rng.uniform(0.4, 0.9), rng.uniform(15, 40)
        u = (gx - vx) / gy * kc
        line_x = (u - np.floor(u)) < (kc / gy)
        z = kz / gy
        line_z = (z - np.floor(z)) < (kz / gy ** 2)
        g[line_x | line_z] = base * 0.65
    elif ground_style == "asphalt":
        stripe = ((gx - width / 2) / gy * 0.5 % 1.0) < 0.25
        band = (gy > gh * 0.45) & (gy < gh * 0.7)
        g[stripe & band] = np.array((225, 225, 225), np.float32)
    noise = _value_noise(rng, gh, width, 4 if ground_style != "tiles" else 12)
    g *= (0.8 + 0.4 * noise)[..., None]
    img[hz:] = g
    img[max(hz - 1, 0): hz + 1] *= 0.55  # kerb line at the horizon
    return np.clip(img, 0, 255).astype(np.uint8)


def random_camera(rng: np.random.Generator, width: int, height: int, horizon_fraction: tuple[float, float],
                  gain: float) -> Camera:
    horizon = rng.uniform(*horizon_fraction) * height
    return Camera(width=width, height=height, horizon_y=float(horizon), gain=float(gain * rng.uniform(0.85, 1.15)))


def random_occluder(rng: np.random.Generator, camera: Camera, kind: str | None = None) -> Occluder:
    """A pole / bench / box on the ground, sized by the perspective at its foot row."""
    kind = kind or str(rng.choice(OCCLUDER_KINDS))
    foot_y = rng.uniform(camera.horizon_y + 0.25 * (camera.height - camera.horizon_y), camera.height * 1.02)
    ph = camera.person_height(foot_y)
    x = rng.uniform(0, camera.width)
    if kind == "pole":
        w, h = max(2.0, 0.07 * ph), 1.8 * ph
    elif kind == "bench":
        w, h = 1.2 * ph, 0.3 * ph
    else:
        w, h = rng.uniform(0.3, 0.6) * ph, rng.uniform(0.3, 0.6) * ph
    color = hsv_color(rng.integers(0, 180), rng.integers(0, 120), rng.integers(40, 200))
    return Occluder(kind=kind, box_xyxy=(float(x - w / 2), float(foot_y - h), float(x + w / 2), float(foot_y)),
                    color=color)


def random_poster(rng: np.random.Generator, camera: Camera, figure: Identity) -> Poster:
    """A poster on the wall above the horizon (or low on the wall when the horizon is high)."""
    h = rng.uniform(0.2, 0.35) * camera.height
    w = h * rng.uniform(0.55, 0.8)
    x1 = rng.uniform(0, camera.width - w)
    y2 = rng.uniform(max(h, camera.horizon_y * 0.6), max(h + 1, camera.horizon_y + 0.15 * camera.height))
    frame = (int(x1), int(y2 - h), int(x1 + w), int(y2))
    paper = hsv_color(rng.integers(0, 180), rng.integers(0, 60), rng.integers(180, 250))
    return Poster(frame_xyxy=frame, figure=figure, frame_color=(40, 40, 40), paper_color=paper)


# --------------------------------------------------------------------------- composition


def _paste(canvas: np.ndarray, owner: np.ndarray, idx: int, sprite_img: np.ndarray, sprite_alpha: np.ndarray,
           x0: int, y0: int, opacity: float = 1.0) -> tuple[slice, slice, slice, slice] | None:
    """Blend a premultiplied sprite at (x0, y0) and mark its pixels in ``owner``; returns the overlap slices."""
    H, W = owner.shape
    h, w = sprite_alpha.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    cs, rs = slice(ix0, ix1), slice(iy0, iy1)
    sc, sr = slice(ix0 - x0, ix1 - x0), slice(iy0 - y0, iy1 - y0)
    a = sprite_alpha[sr, sc].astype(np.float32)[..., None] * (opacity / 255.0)
    region = canvas[rs, cs]
    region *= 1.0 - a
    region += sprite_img[sr, sc].astype(np.float32) * opacity
    owner[rs, cs][sprite_alpha[sr, sc] >= MASK_THRESHOLD] = idx
    return rs, cs, sr, sc


def _occluder_sprite(occ: Occluder) -> tuple[np.ndarray, np.ndarray, int, int]:
    x1, y1, x2, y2 = occ.box_xyxy
    X0, Y0 = int(np.floor(x1)), int(np.floor(y1))
    w, h = max(int(np.ceil(x2)) - X0, 1), max(int(np.ceil(y2)) - Y0, 1)
    img = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    dark = tuple(int(c * 0.6) for c in occ.color)
    if occ.kind == "bench":
        seat = (0, 0, w - 1, max(1, int(h * 0.45)))
        legs = [(int(w * 0.08), seat[3], int(w * 0.16), h - 1), (int(w * 0.84), seat[3], int(w * 0.92), h - 1)]
        for (a, b, c, d), col in [(seat, occ.color)] + [(leg, dark) for leg in legs]:
            cv2.rectangle(img, (a, b), (c, d), col, -1)
            cv2.rectangle(alpha, (a, b), (c, d), 255, -1)
    elif occ.kind == "pole":
        cv2.rectangle(img, (0, 0), (w - 1, h - 1), occ.color, -1)
        cv2.rectangle(img, (0, 0), (w - 1, max(1, h // 12)), dark, -1)
        alpha[:] = 255
    else:
        img[:] = occ.color
        img[: max(1, h // 4)] = dark
        alpha[:] = 255
    return img, alpha, X0, Y0


def _finish(owner: np.ndarray, idx: int, full_xyxy: np.ndarray, silhouette_px: int, head_xyxy: np.ndarray,
            head_px: int, slices) -> Placement:
    if slices is None or silhouette_px == 0:
        return Placement(full_xyxy, np.zeros(4, np.float32), head_xyxy, 0.0, 0.0)
    rs, cs = slices[0], slices[1]
    mine = owner[rs, cs] == idx
    count = int(mine.sum())
    if count == 0:
        return Placement(full_xyxy, np.zeros(4, np.float32), head_xyxy, 0.0, 0.0)
    ys, xs = np.nonzero(mine)
    ox, oy = cs.start, rs.start
    vis = np.array([xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1], np.float32)
    head_vis = 0.0
    if head_px > 0:
        hx1, hy1, hx2, hy2 = np.round(head_xyxy).astype(int)
        hx1, hy1 = max(hx1, 0), max(hy1, 0)
        head_vis = min(1.0, float((owner[hy1:max(hy2, hy1), hx1:max(hx2, hx1)] == idx).sum()) / head_px)
    return Placement(full_xyxy, vis, head_xyxy, min(1.0, count / silhouette_px), head_vis,
                     visible_mask=mine, mask_origin=(ox, oy))


def compose_scene(background: np.ndarray, people: list[PersonActor], occluders: list[Occluder] = (),
                  posters: list[Poster] = ()) -> tuple[np.ndarray, list[Placement], list[Placement], list[Placement]]:
    """Draw posters, then people and occluders far-to-near; returns the float32 image (H, W, 3) and
    placements for ``people``, ``occluders`` and ``posters`` (figure boxes), each in input order."""
    canvas = background.astype(np.float32)
    H, W = canvas.shape[:2]
    owner = np.full((H, W), -1, np.int32)
    n_p, n_o = len(people), len(occluders)
    poster_out: list[Placement] = []
    for j, poster in enumerate(posters):
        x1, y1, x2, y2 = poster.frame_xyxy
        cv2.rectangle(canvas, (x1, y1), (x2, y2), poster.frame_color, -1)
        b = max(1, (x2 - x1) // 12)
        cv2.rectangle(canvas, (x1 + b, y1 + b), (x2 - b, y2 - b), poster.paper_color, -1)
        fh = (y2 - y1 - 2 * b) * 0.85
        sprite = render_person(poster.figure, fh, "front", 0.0)
        sh, sw = sprite.alpha.shape
        fx, fy = (x1 + x2) // 2 - sw // 2, y2 - b - sh - 1
        idx = n_p + n_o + j
        sl = _paste(canvas, owner, idx, sprite.image, sprite.alpha, fx, fy, POSTER_OPACITY)
        full = np.array([fx, fy, fx + sw, fy + sh], np.float32)
        poster_out.append((idx, full, sprite, sl))

    order = sorted(range(n_p + n_o), key=lambda i: (people[i].foot_y if i < n_p else occluders[i - n_p].foot_y, i))
    records: dict[int, tuple] = {}
    for i in order:
        if i < n_p:
            actor = people[i]
            sprite: Sprite = render_person(actor.identity, actor.height, actor.view, actor.phase)
            sh, sw = sprite.alpha.shape
            x0, y0 = int(round(actor.foot_x - sw / 2)), int(round(actor.foot_y - sh))
            sl = _paste(canvas, owner, i, sprite.image, sprite.alpha, x0, y0)
            records[i] = (np.array([x0, y0, x0 + sw, y0 + sh], np.float32), sprite, x0, y0, sl)
        else:
            img, alpha, x0, y0 = _occluder_sprite(occluders[i - n_p])
            sl = _paste(canvas, owner, i, img, alpha, x0, y0)
            h, w = alpha.shape
            records[i] = (np.array([x0, y0, x0 + w, y0 + h], np.float32), None, x0, y0, sl, alpha)

    people_out, occ_out = [], []
    for i in range(n_p):
        full, sprite, x0, y0, sl = records[i]
        head = sprite.head_xyxy + np.array([x0, y0, x0, y0], np.float32)
        hx1, hy1, hx2, hy2 = np.round(sprite.head_xyxy).astype(int)
        head_px = int((sprite.alpha[hy1:hy2, hx1:hx2] >= MASK_THRESHOLD).sum())
        sil = int((sprite.alpha >= MASK_THRESHOLD).sum())
        people_out.append(_finish(owner, i, full, sil, head, head_px, sl))
    for i in range(n_p, n_p + n_o):
        full, _, x0, y0, sl, alpha = records[i]
        occ_out.append(_finish(owner, i, full, int((alpha >= MASK_THRESHOLD).sum()), np.zeros(4, np.float32), 0, sl))
    posters_out = []
    for idx, full, sprite, sl in poster_out:
        sil = int((sprite.alpha >= MASK_THRESHOLD).sum())
        posters_out.append(_finish(owner, idx, full, sil, np.zeros(4, np.float32), 0, sl))
    return canvas, people_out, occ_out, posters_out


# --------------------------------------------------------------------------- photometry


def apply_lighting(image: np.ndarray, gain: float, tint: np.ndarray, rng: np.random.Generator | None = None,
                   noise_std: float = 0.0) -> np.ndarray:
    """Global gain and per-channel tint (3,), optional Gaussian sensor noise; float in, uint8 out."""
    out = image * (gain * np.asarray(tint, np.float32))
    if rng is not None and noise_std > 0:  # luminance noise, one draw per pixel shared by the channels
        noise = rng.standard_normal(out.shape[:2], dtype=np.float32)
        noise *= noise_std
        out += noise[..., None]
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def random_tint(rng: np.random.Generator, strength: float = 0.08) -> np.ndarray:
    return (1.0 + rng.uniform(-strength, strength, size=3)).astype(np.float32)


def motion_blur(image: np.ndarray, length: int, horizontal: bool = True) -> np.ndarray:
    """Box blur along one axis, ``length`` pixels (camera shake / fast pan)."""
    if length <= 1:
        return image
    kernel = np.zeros((length, length), np.float32)
    if horizontal:
        kernel[length // 2, :] = 1.0 / length
    else:
        kernel[:, length // 2] = 1.0 / length
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress (blocky artefacts of low-bitrate video)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def visible_polygons(placement: Placement, epsilon: float = 1.0) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` tracing the visible mask (image pixels)."""
    mask = placement.visible_mask.astype(np.uint8)
    if mask.size == 0 or not mask.any():
        return []
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ox, oy = placement.mask_origin
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, epsilon, True).reshape(-1, 2)
        if len(c) < 3:
            continue
        polys.append([float(v) for xy in c for v in (xy[0] + ox, xy[1] + oy)])
    return polys
