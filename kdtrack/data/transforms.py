"""Box-aware image augmentation: one contract, ``(image, target, rng) -> (image, target)``.

``image`` is ``(H, W, 3)`` uint8 RGB; ``target`` holds ``boxes_xyxy (N, 4)``
float32 pixels, ``box_index (N,)`` int64 (each box's row in the ORIGINAL
annotation, so that per-box data computed before augmentation, e.g. teacher
embeddings for KD, stays aligned when boxes are dropped), ``ids (N,)`` int64
and ``ignore_boxes_xyxy (M, 4)``. The output image keeps the input size.

Geometry and colour run through torchvision ``transforms.v2`` on
``tv_tensors.BoundingBoxes`` (person and ignore boxes in ONE box tensor, so
every warp moves both). Boxes are transformed without clamping; afterwards a
person box cut by the border to less than ``min_visible_fraction`` of its
area is dropped, boxes are clamped, and ``SanitizeBoundingBoxes`` removes
boxes smaller than ``min_box_size`` with an explicit ``labels_getter`` that
filters ``box_index`` and ``ids`` too (the default getter only knows
``"labels"`` and would leave other per-box fields misaligned).

Randomness: every draw comes from the numpy ``Generator`` passed in (it seeds
a forked torch RNG), so a sample is a pure function of its generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

TARGET_KEYS = ("boxes_xyxy", "box_index", "ids", "ignore_boxes_xyxy")
SEED_HIGH = 2**62  # torch seeds drawn from the numpy generator lie in [0, SEED_HIGH)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small-image torch ops on one thread: intra-op threading makes a 320x192 warp
    ~80x slower on a loaded 2-core machine (measured 0.22 s vs 2.7 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of one named preset (ranges are inclusive; probabilities per image)."""

    affine_degrees: float = 0.0  # rotation drawn in [-d, d] degrees
    affine_translate: float = 0.0  # shift drawn in [-t, t] x image width / height
    affine_scale: tuple[float, float] = (1.0, 1.0)  # zoom factor range (>1 zooms in)
    affine_shear: float = 0.0  # shear drawn in [-s, s] degrees
    flip_prob: float = 0.0  # horizontal mirror
    color_prob: float = 0.0  # chance of the colour jitter below
    brightness: float = 0.0  # ColorJitter factors
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    channel_gain: float = 0.0  # white-balance jitter: each channel times 1 + U(-g, g) (with color_prob)
    motion_blur_prob: float = 0.0  # video jitter: linear motion blur
    motion_blur_kernel: tuple[int, int] = (3, 9)  # blur length range, pixels
    jpeg_prob: float = 0.0  # video jitter: JPEG re-encoding
    jpeg_quality: tuple[int, int] = (30, 90)
    occlusion_prob: float = 0.0  # random erasing with a random flat colour
    occlusion_area: tuple[float, float] = (0.02, 0.15)  # erased area / image area
    occlusion_aspect: tuple[float, float] = (0.3, 3.3)  # erased height / width
    occlusion_max_hidden: float = 0.75  # a box hidden by more than this share of its area is dropped
    fill: int = 127  # border colour of warps (FairMOT's grey)


# FairMOT's random_affine (degrees 5, translate 0.1, scale 0.5-1.2, shear 2), mirror, HSV jitter 0.5 on S and V.
DETECTION = AugmentParams(
    affine_degrees=5.0, affine_translate=0.1, affine_scale=(0.5, 1.2), affine_shear=2.0, flip_prob=0.5,
    color_prob=1.0, brightness=0.5, saturation=0.5,
)
# IDF's image-level view transforms: zoom-in motion (affine zoom >= 1 with shift), mirror, small rotation,
# colour jitter, video jitter (motion blur, JPEG), occlusion (random erasing).
IDF_VIEW = AugmentParams(
    affine_degrees=10.0, affine_translate=0.1, affine_scale=(1.0, 1.5), flip_prob=0.5,
    color_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
    motion_blur_prob=0.3, jpeg_prob=0.3, occlusion_prob=0.5,
)
# kdtrack's, not the paper's: IDF's view transforms with a person's colours kept recognisable between the two
# views -- no hue shift, saturation barely moved -- so that what tells a person from the queue's is its clothing,
# the cue that holds across cameras, not its pose in this one image (docs/results/identity-learning.md, "The
# colour a person keeps between its views").
IDF_VIEW_COLOUR = dataclasses.replace(IDF_VIEW, saturation=0.1, hue=0.0)
PRESETS: dict[str, AugmentParams | None] = {
    "none": None, "detection": DETECTION, "idf_view": IDF_VIEW, "idf_view_colour": IDF_VIEW_COLOUR,
}


class MotionBlur(v2.Transform):
    """Linear motion blur of random length and angle (images only; boxes pass through)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = (int(kernel[0]), int(kernel[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        length = int(torch.randint(self.kernel[0], self.kernel[1] + 1, ()).item())
        angle = float(torch.rand(()).item()) * 180.0
        return {"length": length, "angle": angle}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = max(params["length"], 1)
        line = np.zeros((k, k), np.float32)
        line[k // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), params["angle"], 1.0)
        line = cv2.warpAffine(line, rot, (k, k))
        line /= max(float(line.sum()), 1e-6)
        hwc = inpt.permute(1, 2, 0).numpy()
        blurred = cv2.filter2D(hwc, -1, line, borderType=cv2.BORDER_REFLECT)
        return tv_tensors.wrap(torch.from_numpy(np.ascontiguousarray(blurred)).permute(2, 0, 1), like=inpt)


class ChannelGain(v2.Transform):
    """White-balance jitter: each colour channel scaled by its own factor in ``[1 - strength, 1 + strength]``.

    What one camera's colour cast does to another's: a hue shift (``ColorJitter``'s hue) turns a red coat
    into an orange one for every camera alike, a per-channel gain only tints it."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, strength: float) -> None:
        super().__init__()
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"ChannelGain: strength must be in [0, 1), got {strength}")
        self.strength = float(strength)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gains": 1.0 + (2.0 * torch.rand(3) - 1.0) * self.strength}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        gains = params["gains"].view(3, 1, 1)
        if inpt.dtype == torch.uint8:
            out = (inpt.float() * gains).round_().clamp_(0, 255).to(torch.uint8)
        else:
            out = (inpt * gains.to(inpt.dtype)).clamp_(0.0, 1.0)
        return tv_tensors.wrap(out, like=inpt)


class JpegArtifacts(v2.Transform):
    """JPEG re-encoding at a random quality via OpenCV (torchvision's JPEG uses its deprecated image codecs)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, quality: tuple[int, int]) -> None:
        super().__init__()
        self.quality = (int(quality[0]), int(quality[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"quality": int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        hwc = np.ascontiguousarray(inpt.permute(1, 2, 0).numpy())
        ok, buf = cv2.imencode(".jpg", hwc, [cv2.IMWRITE_JPEG_QUALITY, params["quality"]])
        if not ok:
            raise RuntimeError("JpegArtifacts: OpenCV could not encode the image")
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(hwc.shape)  # channel order is irrelevant here
        return tv_tensors.wrap(torch.from_numpy(decoded).permute(2, 0, 1).contiguous(), like=inpt)


class Occlusion(v2.Transform):
    """Random erasing with a flat random colour.

    A box whose area is hidden by more than ``max_hidden`` collapses to zero
    width, so that ``SanitizeBoundingBoxes`` drops it with its fields: a person
    painted over is no longer a detection target nor a contrastive positive
    (its centre would be a flat rectangle matched to the person of the other view).
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.BoundingBoxes)

    def __init__(self, area: tuple[float, float], aspect: tuple[float, float], max_hidden: float = 0.75) -> None:
        super().__init__()
        self.area, self.aspect = area, aspect
        self.max_hidden = float(max_hidden)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        u = torch.rand(5).tolist()
        area = (self.area[0] + u[0] * (self.area[1] - self.area[0])) * h * w
        log_lo, log_hi = np.log(self.aspect[0]), np.log(self.aspect[1])
        aspect = float(np.exp(log_lo + u[1] * (log_hi - log_lo)))
        eh = int(min(h, max(1, round(np.sqrt(area * aspect)))))
        ew = int(min(w, max(1, round(np.sqrt(area / aspect)))))
        y0, x0 = int(u[2] * (h - eh + 1)), int(u[3] * (w - ew + 1))
        colour = torch.randint(0, 256, (3,), dtype=torch.uint8)
        return {"y0": y0, "x0": x0, "eh": eh, "ew": ew, "colour": colour}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        y0, x0, eh, ew = params["y0"], params["x0"], params["eh"], params["ew"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            boxes = inpt.as_subclass(torch.Tensor).float().clone()  # XYXY (BoxAugment builds them so)
            ix = (boxes[:, 2].clamp(max=x0 + ew) - boxes[:, 0].clamp(min=x0)).clamp(min=0)
            iy = (boxes[:, 3].clamp(max=y0 + eh) - boxes[:, 1].clamp(min=y0)).clamp(min=0)
            area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
            hidden = ix * iy / area > self.max_hidden
            boxes[hidden, 2] = boxes[hidden, 0]
            return tv_tensors.wrap(boxes.to(inpt.dtype), like=inpt)
        out = inpt.clone()
        out[:, y0:y0 + eh, x0:x0 + ew] = params["colour"].to(out.dtype)[:, None, None]
        return out


def with_view_changes(params: AugmentParams | None, white_balance: float = 0.0,
                      random_erasing: float = 0.0) -> AugmentParams | None:
    """``params`` with two changes a still image or one clip never shows between a person's pictures (both off,
    0, leave ``params`` as it is):

    - ``white_balance``: a per-channel gain in ``[1 - w, 1 + w]`` (:class:`ChannelGain`, a camera's colour cast)
      in its colour step, which then always runs where the preset had no colour jitter;
    - ``random_erasing``: the chance of a flat block over part of the image (:class:`Occlusion`, the preset's
      area and aspect ranges), a person seen behind something.

    Meant for a classifier over pseudo-identities from clips (each clip one camera), whose targets a view's tint
    does not change; measured there, they change nothing as Ray jobs and are off in every preset
    (docs/results/identity-learning.md, "A camera's white balance in stage 2")."""
    if not 0.0 <= white_balance < 1.0:
        raise ValueError(f"data.white_balance must be in [0, 1), got {white_balance}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"data.random_erasing must be in [0, 1], got {random_erasing}")
    if white_balance == 0.0 and random_erasing == 0.0:
        return params
    changed = params if params is not None else AugmentParams()
    if white_balance:
        changed = dataclasses.replace(changed, channel_gain=white_balance, color_prob=changed.color_prob or 1.0)
    if random_erasing:
        changed = dataclasses.replace(changed, occlusion_prob=random_erasing)
    return changed


def build_pipeline(params: AugmentParams | None) -> v2.Transform:
    """The v2 pipeline of a preset (boxes move with every geometric op)."""
    if params is None:
        return v2.Identity()
    ops: list[v2.Transform] = []
    p = params
    if p.affine_degrees or p.affine_translate or p.affine_scale != (1.0, 1.0) or p.affine_shear:
        ops.append(v2.RandomAffine(
            degrees=p.affine_degrees, translate=(p.affine_translate, p.affine_translate),
            scale=p.affine_scale, shear=p.affine_shear or None,
            interpolation=v2.InterpolationMode.BILINEAR, fill={tv_tensors.Image: p.fill, tv_tensors.Mask: 0},
        ))
    if p.flip_prob:
        ops.append(v2.RandomHorizontalFlip(p.flip_prob))
    if p.color_prob:
        colour: list[v2.Transform] = [v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)]
        if p.channel_gain:
            colour.append(ChannelGain(p.channel_gain))
        ops.append(v2.RandomApply(colour, p.color_prob))
    if p.motion_blur_prob:
        ops.append(v2.RandomApply([MotionBlur(p.motion_blur_kernel)], p.motion_blur_prob))
    if p.jpeg_prob:
        ops.append(v2.RandomApply([JpegArtifacts(p.jpeg_quality)], p.jpeg_prob))
    if p.occlusion_prob:
        ops.append(v2.RandomApply([Occlusion(p.occlusion_area, p.occlusion_aspect, p.occlusion_max_hidden)],
                                  p.occlusion_prob))
    return v2.Compose(ops) if ops else v2.Identity()


def _labels_getter(inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every per-box field SanitizeBoundingBoxes must filter together with the boxes."""
    sample = inputs[0] if isinstance(inputs, tuple) else inputs  # one positional input arrives unwrapped
    return sample["tags"], sample["ids"]


def check_target(target: dict[str, Any], where: str = "target") -> dict[str, np.ndarray]:
    """Validate and normalise a target dict (missing ``box_index`` -> ``arange(N)``)."""
    boxes = np.asarray(target.get("boxes_xyxy", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    n = len(boxes)
    box_index = np.asarray(target.get("box_index", np.arange(n)), np.int64).reshape(-1)
    ids = np.asarray(target.get("ids", np.full(n, -1)), np.int64).reshape(-1)
    ignore = np.asarray(target.get("ignore_boxes_xyxy", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    if len(box_index) != n or len(ids) != n:
        raise ValueError(f"{where}: {n} boxes but {len(box_index)} box_index and {len(ids)} ids")
    if (box_index < 0).any():
        raise ValueError(f"{where}: box_index must be >= 0")
    if not (np.isfinite(boxes).all() and np.isfinite(ignore).all()):
        raise ValueError(f"{where}: boxes contain NaN or inf")
    return {"boxes_xyxy": boxes, "box_index": box_index, "ids": ids, "ignore_boxes_xyxy": ignore}


def instance_map_of(target: dict[str, Any], height: int, width: int, where: str) -> np.ndarray | None:
    """``target["instance_map"]`` (person outlines, ``kdtrack.data.dataset.instance_map``) or None; one of another
    size than the image is a ValueError naming ``where``."""
    instances = target.get("instance_map")
    if instances is not None and np.shape(instances) != (height, width):
        raise ValueError(f"{where}: instance_map is {np.shape(instances)}, the image {(height, width)}")
    return instances


class BoxAugment:
    """A named preset applied to ``(image, target)``; see the module docstring.

    ``min_box_size`` (pixels) and ``min_visible_fraction`` decide which boxes
    survive; dropped boxes take their ``box_index`` and ``ids`` with them.
    """

    def __init__(self, preset: str = "none", *, min_box_size: float = 2.0, min_visible_fraction: float = 0.25,
                 white_balance: float = 0.0, random_erasing: float = 0.0) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset '{preset}' (known: {', '.join(PRESETS)})")
        self.preset = preset
        self.pipeline = build_pipeline(with_view_changes(PRESETS[preset], white_balance, random_erasing))
        self.min_box_size = float(min_box_size)
        self.min_visible_fraction = float(min_visible_fraction)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=self.min_box_size, min_area=1.0, labels_getter=_labels_getter)

    def __call__(
        self, image: np.ndarray, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"BoxAugment: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        t = check_target(target)
        h, w = image.shape[:2]
        m = len(t["ignore_boxes_xyxy"])
        # Person rows carry their original index (>= 0); ignore rows carry -1 - j.
        tags = np.concatenate([t["box_index"], -1 - np.arange(m, dtype=np.int64)])
        sample = {
            "image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)),
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(np.concatenate([t["boxes_xyxy"], t["ignore_boxes_xyxy"]])),
                format="XYXY", canvas_size=(h, w), clamping_mode=None,
            ),
            "tags": torch.from_numpy(tags),
            "ids": torch.from_numpy(np.concatenate([t["ids"], np.full(m, -1, np.int64)])),
        }
        instances = instance_map_of(target, h, w, "BoxAugment")
        if instances is not None:  # person outlines (kdtrack.data.dataset.instance_map): warped with the image, nearest
            sample["instance_map"] = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(instances, np.int32)))
        seed = int(rng.integers(0, SEED_HIGH))
        with torch.random.fork_rng(devices=[]), single_thread():
            torch.manual_seed(seed)
            sample = self.pipeline(sample)
            sample = self._clamp_and_drop(sample)
            sample = self.sanitize(sample)
        tags = sample["tags"].numpy()
        boxes = sample["boxes"].as_subclass(torch.Tensor).numpy().astype(np.float32)
        person = tags >= 0
        out_image = sample["image"].permute(1, 2, 0).contiguous().numpy()
        out = {
            "boxes_xyxy": boxes[person].reshape(-1, 4),
            "box_index": tags[person].astype(np.int64),
            "ids": sample["ids"].numpy()[person].astype(np.int64),
            "ignore_boxes_xyxy": boxes[~person].reshape(-1, 4),
        }
        if "instance_map" in sample:
            out["instance_map"] = sample["instance_map"].as_subclass(torch.Tensor).numpy()
        return out_image, out

    def _clamp_and_drop(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Clamp boxes to the canvas; a person box left with < min_visible_fraction of its area collapses
        to zero size so that SanitizeBoundingBoxes drops it with its fields."""
        bb = sample["boxes"]
        h, w = bb.canvas_size
        raw = bb.as_subclass(torch.Tensor).float()
        clamped = raw.clone()
        clamped[:, 0::2] = clamped[:, 0::2].clamp(0, w)
        clamped[:, 1::2] = clamped[:, 1::2].clamp(0, h)
        area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # noqa: E731
        frac = area(clamped) / area(raw).clamp(min=1e-6)
        hidden = (sample["tags"] >= 0) & (frac < self.min_visible_fraction)
        clamped[hidden, 2] = clamped[hidden, 0]
        sample["boxes"] = tv_tensors.wrap(clamped, like=bb, clamping_mode="soft")
        return sample


def two_views(
    image: np.ndarray, target: dict[str, Any], rng: np.random.Generator, augment: BoxAugment
) -> tuple[tuple[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Two independent augmentations of one image; ``box_index`` says which person each box is."""
    rng_a, rng_b = rng.spawn(2)
    return augment(image, target, rng_a), augment(image, target, rng_b)


@dataclass(frozen=True)
class PersonJitter:
    """What happens to each person on its way into a swapped view (``paste_people``), one draw per person.

    The two views of a person otherwise share its pose, its size and which way it faces, all of one image,
    which the next camera does not repeat. kdtrack's, in neither paper: a mirror and a zoom per person
    (Simple Copy-Paste's scale jitter, per person), and Random Erasing (Zhong et al., AAAI 2020; the Re-ID
    training trick) of a block of the person's patch with a flat random colour.
    """

    scale: tuple[float, float] = (1.0, 1.0)  # the person's zoom, drawn in this range (aspect kept)
    flip: float = 0.0  # chance the person is mirrored
    erase: float = 0.0  # chance a block of the person is erased
    erase_area: tuple[float, float] = (0.02, 0.4)  # erased share of the person's box (Random Erasing's)
    erase_aspect: tuple[float, float] = (0.3, 3.3)  # erased block's height / width

    @property
    def active(self) -> bool:
        return self.scale != (1.0, 1.0) or self.flip > 0 or self.erase > 0


def _jittered_person(crop: np.ndarray, mask: np.ndarray, box: np.ndarray, jitter: PersonJitter, width: int,
                     height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A person's patch, mask and box (in the patch's pixels) after ``jitter``'s mirror, zoom and erasing; the
    zoom is capped so that the patch fits a ``width`` x ``height`` image."""
    bh, bw = mask.shape
    x1, y1, x2, y2 = box
    if rng.random() < jitter.flip:
        crop, mask, x1, x2 = crop[:, ::-1], mask[:, ::-1], bw - x2, bw - x1
    zoom = min(float(rng.uniform(*jitter.scale)), width / bw, height / bh)
    nw, nh = max(int(round(bw * zoom)), 1), max(int(round(bh * zoom)), 1)
    if (nw, nh) != (bw, bh):
        crop = cv2.resize(np.ascontiguousarray(crop), (nw, nh), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(np.ascontiguousarray(mask), (nw, nh), interpolation=cv2.INTER_LINEAR)
    crop, mask = np.array(crop, np.float32), np.array(mask, np.float32)
    sx, sy = nw / bw, nh / bh
    if rng.random() < jitter.erase:
        area = rng.uniform(*jitter.erase_area) * nw * nh
        aspect = float(np.exp(rng.uniform(*np.log(jitter.erase_aspect))))
        eh = min(max(int(round(np.sqrt(area * aspect))), 1), nh)
        ew = min(max(int(round(np.sqrt(area / aspect))), 1), nw)
        ex, ey = int(rng.integers(0, nw - ew + 1)), int(rng.integers(0, nh - eh + 1))
        crop[ey:ey + eh, ex:ex + ew] = rng.integers(0, 256, 3)
        mask[ey:ey + eh, ex:ex + ew] = 1.0  # the block is pasted whole: an occluder in front of the person
    return crop, mask, np.array([x1 * sx, y1 * sy, x2 * sx, y2 * sy], np.float32)


def paste_people(
    image: np.ndarray, target: dict[str, Any], background: np.ndarray, background_boxes: np.ndarray,
    feather: float = 2.0, rng: np.random.Generator | None = None, min_visible: float = 0.25,
    jitter: PersonJitter | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``image``'s person boxes pasted onto another image (background swap, copy-paste).

    The people keep their pixels, rows and ids; everything around them becomes ``background``
    (resized to ``image``'s size). A contrastive positive pair of a view and its pasted twin then
    shares the person but not the scene, so the scene around a person stops telling it apart
    from the queue's people of other images. Without ``rng`` each box stays where it was; with it
    each box goes to a random place (in a random order, later boxes over earlier ones), so that
    the neighbours a person had are gone too, and a person left with less than ``min_visible``
    of its box showing is dropped with its fields. The background's own people
    (``background_boxes``, in its pixels) become ignore boxes: people (no background loss on
    them) without a key or a detection target. ``feather`` (pixels, Gaussian sigma) softens the
    paste edges so that a box outline is no person cue of its own. With ``target["instance_map"]``
    (``kdtrack.data.dataset.instance_map``: ``box_index + 1`` on each person's pixels) a person that has an
    outline is pasted through it, not through its box: only the person moves, not the background
    inside its box (Simple Copy-Paste, Ghiasi et al., CVPR 2021). With ``jitter`` (it needs ``rng``) each
    person is also mirrored, zoomed and partly erased on the way (``PersonJitter``); without it every draw is
    as it was.
    """
    if jitter is not None and jitter.active and rng is None:
        raise ValueError("paste_people: a person jitter needs rng (the people are moved to random places)")
    t = check_target(target)
    h, w = image.shape[:2]
    instances = instance_map_of(target, h, w, "paste_people")
    bh, bw = background.shape[:2]
    out = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR) if (bh, bw) != (h, w) else background
    out = out.astype(np.float32)
    src = image.astype(np.float32)
    boxes = t["boxes_xyxy"].copy()
    owner = np.full((h, w), -1, np.int64)
    order = rng.permutation(len(boxes)) if rng is not None else np.arange(len(boxes))
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        x0, y0 = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
        x3, y3 = max(min(int(np.ceil(x2)), w), x0 + 1), max(min(int(np.ceil(y2)), h), y0 + 1)
        bw_i, bh_i = x3 - x0, y3 - y0
        outline = None if instances is None else instances[y0:y3, x0:x3] == t["box_index"][i] + 1
        # the person's own pixels (copy-paste with a mask), else the whole box rectangle
        mask = outline.astype(np.float32) if outline is not None and outline.any() else np.ones((bh_i, bw_i), np.float32)
        crop = None
        if jitter is not None and jitter.active:
            crop, mask, box = _jittered_person(src[y0:y3, x0:x3], mask, boxes[i] - np.array([x0, y0, x0, y0], np.float32),
                                               jitter, w, h, rng)
            nx, ny = int(rng.integers(0, w - mask.shape[1] + 1)), int(rng.integers(0, h - mask.shape[0] + 1))
            boxes[i] = box + np.array([nx, ny, nx, ny], np.float32)
        else:
            nx, ny = (int(rng.integers(0, w - bw_i + 1)), int(rng.integers(0, h - bh_i + 1))) if rng is not None else (x0, y0)
            boxes[i] += np.array([nx - x0, ny - y0, nx - x0, ny - y0], np.float32)
        nh, nw = mask.shape
        pad = int(np.ceil(3 * feather)) if feather > 0 else 0
        ax0, ay0, ax3, ay3 = max(nx - pad, 0), max(ny - pad, 0), min(nx + nw + pad, w), min(ny + nh + pad, h)
        inner = (slice(ny - ay0, ny - ay0 + nh), slice(nx - ax0, nx - ax0 + nw))
        alpha = np.zeros((ay3 - ay0, ax3 - ax0), np.float32)
        alpha[inner] = mask
        if feather > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), float(feather))
        region = out[ay0:ay3, ax0:ax3]
        if crop is not None:  # around a jittered person the background itself: the feathered edge fades into it
            patch = region.copy()
            patch[inner] = crop
        else:  # the source image around the box, as it was
            patch = np.zeros((ay3 - ay0, ax3 - ax0, 3), np.float32)
            sx0, sy0 = x0 - (nx - ax0), y0 - (ny - ay0)  # the source pixel under the patch's top-left corner
            cx0, cy0 = max(sx0, 0), max(sy0, 0)
            cx3, cy3 = min(sx0 + patch.shape[1], w), min(sy0 + patch.shape[0], h)
            patch[cy0 - sy0:cy3 - sy0, cx0 - sx0:cx3 - sx0] = src[cy0:cy3, cx0:cx3]
        out[ay0:ay3, ax0:ax3] = alpha[..., None] * patch + (1.0 - alpha[..., None]) * region
        owner[ny:ny + nh, nx:nx + nw] = i
    keep = np.ones(len(boxes), bool)
    if rng is not None and len(boxes):
        shown = np.bincount(owner[owner >= 0], minlength=len(boxes))
        area = np.maximum((np.ceil(boxes[:, 2]) - np.floor(boxes[:, 0])) * (np.ceil(boxes[:, 3]) - np.floor(boxes[:, 1])), 1)
        keep = shown / area >= min_visible
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    scale = np.array([w / bw, h / bh, w / bw, h / bh], np.float32)
    bg_people = np.asarray(background_boxes, np.float32).reshape(-1, 4) * scale
    # the image's own ignore regions are not pasted: in place they still cover the same pixels (harmless), moved
    # people leave them behind
    ignore = t["ignore_boxes_xyxy"] if rng is None else t["ignore_boxes_xyxy"][:0]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), {
        "boxes_xyxy": boxes[keep], "box_index": t["box_index"][keep], "ids": t["ids"][keep],
        "ignore_boxes_xyxy": np.concatenate([ignore, bg_people]),
    }
