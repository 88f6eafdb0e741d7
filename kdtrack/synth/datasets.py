"""One work unit per output format: each renders its images/videos and writes them to disk.

Every unit is a pure function of ``(cfg, out_dir, unit arguments)``: it draws
from ``unit_rng(cfg.seed, <unit name>)`` only, writes its own media files, and
returns a small JSON-able dict (annotation entries, boxes) that
``kdtrack.synth.world`` gathers into each dataset's annotation file. Layouts
and annotation files go through the ``kdtrack.formats`` writers.

Who appears where: still images (CrowdHuman, COCO) and Kinetics clips only
hold fresh people that exist in that one image / clip, as the id-free recipe
assumes of in-the-wild images. The identity bank is dealt out once, by
:func:`identity_populations`, into disjoint populations (MOT sequences,
person-search train / val / test, Market-1501 train / test), so no evaluation
identity is ever seen in training data.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kdtrack.config import SynthConfig
from kdtrack.formats import crowdhuman as ch_format
from kdtrack.formats import market1501 as market_format
from kdtrack.formats import mot as mot_format
from kdtrack.formats import person_search as ps_format
from kdtrack.formats.kinetics import clip_relpath
from kdtrack.formats.video import write_video
from kdtrack.io import atomic_write_bytes
from kdtrack.synth.appearance import (
    Identity,
    appearance_key,
    clone_attributes,
    make_clone,
    make_identity_bank,
    mannequin,
    random_identity,
)
from kdtrack.synth.motion import simulate_walkers
from kdtrack.synth.render import VIEWS
from kdtrack.synth.rng import unit_rng
from kdtrack.synth.scene import (
    Camera,
    Occluder,
    PersonActor,
    Placement,
    apply_lighting,
    compose_scene,
    encode_jpeg,
    jpeg_roundtrip,
    make_background,
    motion_blur,
    random_camera,
    random_occluder,
    random_poster,
    random_tint,
    visible_polygons,
)

OCCLUDED_BELOW = 0.95  # CrowdHuman extra.occ = 1 when visibility is below this
HEAD_OCCLUDED_BELOW = 0.5  # CrowdHuman head_attr.occ = 1 when head visibility is below this
NOISE_STD = 3.0  # sensor noise, grey levels
MOTION_BLUR_PX = (3, 7)  # blur kernel length range
COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "outdoor", "id": 15, "name": "bench"},  # real COCO ids
    {"supercategory": "accessory", "id": 33, "name": "suitcase"},
]
OCCLUDER_CATEGORY = {"bench": 15, "box": 33}  # poles are not annotated
KINETICS_LABELS = ("marching", "jogging", "queuing", "busking")
YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MOT_CLASS_PEDESTRIAN, MOT_CLASS_STATIC, MOT_CLASS_DISTRACTOR, MOT_CLASS_REFLECTION = 1, 7, 8, 12
PERSON_SEARCH_SPLITS = ("train", "val", "test")
# Disjoint slices of the identity bank, in the order they are dealt, and the SynthConfig field sizing each.
POPULATION_FIELDS = {
    "mot": "mot_ids",
    "person_search_train": "person_search_train_ids",
    "person_search_val": "person_search_val_ids",
    "person_search_test": "person_search_test_ids",
    "market_train": "reid_train_ids",
    "market_test": "reid_test_ids",
}
POPULATIONS = tuple(POPULATION_FIELDS)


# --------------------------------------------------------------------------- identities


@functools.lru_cache(maxsize=4)
def _cached_bank(seed: int, num_identities: int, hard_negative_fraction: float) -> tuple[Identity, ...]:
    return tuple(make_identity_bank(seed, num_identities, hard_negative_fraction))


def identity_bank(cfg: SynthConfig) -> list[Identity]:
    """The world's persistent people (cached: every unit in a worker process asks for it)."""
    return list(_cached_bank(cfg.seed, cfg.num_identities, cfg.hard_negative_fraction))


def population_sizes(cfg: SynthConfig) -> dict[str, int]:
    """Requested size of each population, from its ``POPULATION_FIELDS`` config field."""
    return {name: int(getattr(cfg, field)) for name, field in POPULATION_FIELDS.items()}


def check_populations(cfg: SynthConfig) -> None:
    """Raise ``ValueError`` naming the fields when the bank cannot hold the populations (or their queries)."""
    sizes = population_sizes(cfg)
    for name, n in sizes.items():
        if n < 0:
            raise ValueError(f"synth.{POPULATION_FIELDS[name]} must be >= 0, got {n}")
    need = sum(sizes.values())
    if need > cfg.num_identities:
        terms = " + ".join(f"{POPULATION_FIELDS[name]} {n}" for name, n in sizes.items())
        raise ValueError(f"synth.num_identities = {cfg.num_identities} is too small for the disjoint identity "
                         f"populations: {terms} = {need}; raise synth.num_identities to >= {need} or lower those "
                         f"fields")
    for queries, ids, images in (("person_search_queries", "person_search_test_ids", "person_search_test_images"),
                                 ("person_search_val_queries", "person_search_val_ids", "person_search_val_images")):
        if getattr(cfg, images) > 0 and getattr(cfg, queries) > getattr(cfg, ids):
            raise ValueError(f"synth.{queries} = {getattr(cfg, queries)} exceeds synth.{ids} = {getattr(cfg, ids)} "
                             f"(one query per identity)")


@functools.lru_cache(maxsize=4)
def _cached_populations(seed: int, num_identities: int, hard_negative_fraction: float,
                        sizes: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, ...]]:
    bank = _cached_bank(seed, num_identities, hard_negative_fraction)
    families: dict[int, list[int]] = {}  # original pid -> [original, its clones]
    for ident in bank:
        families.setdefault(ident.clone_of if ident.clone_of > 0 else ident.pid, []).append(ident.pid)
    roots = sorted(families)
    order = unit_rng(seed, "identity_populations").permutation(len(roots))
    dealt = [pid for i in order for pid in families[roots[int(i)]]]
    out, start = {}, 0
    for name, n in sizes:
        out[name] = tuple(sorted(dealt[start:start + n]))
        start += n
    return out


def identity_populations(cfg: SynthConfig) -> dict[str, list[int]]:
    """Bank pids of each population (``POPULATIONS``), pairwise disjoint: the one source of who appears where.

    Families (an identity and its hard-negative clones) are dealt in a random
    order and sliced in ``POPULATIONS`` order, so each population keeps its own
    look-alikes; only a slice boundary splits a family. Different MOT sequences
    share the "mot" population (one city), no other dataset sees it. Bank
    members past the populations are unused.
    """
    check_populations(cfg)
    sizes = tuple(population_sizes(cfg).items())
    pops = _cached_populations(cfg.seed, cfg.num_identities, cfg.hard_negative_fraction, sizes)
    return {name: list(pids) for name, pids in pops.items()}


def population_counts(cfg: SynthConfig) -> dict[str, int]:
    """Sizes of the bank, each population and the unused rest (recorded in ``world.json``)."""
    sizes = population_sizes(cfg)
    return {"bank": cfg.num_identities, **sizes, "unused": cfg.num_identities - sum(sizes.values())}


# --------------------------------------------------------------------------- shared helpers


def _xywh(box_xyxy: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def _clip_xyxy(box_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    b = np.asarray(box_xyxy, np.float32).copy()
    b[[0, 2]] = np.clip(b[[0, 2]], 0, width)
    b[[1, 3]] = np.clip(b[[1, 3]], 0, height)
    return b


def _write_jpeg(path: Path, image: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> None:
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    atomic_write_bytes(path, encode_jpeg(image, quality))


def _foot_y_for(rng: np.random.Generator, cam: Camera, ident: Identity, cfg: SynthConfig, near_bias: bool = True) -> float:
    """A foot row below the horizon where the person is at least ``min_person_height`` tall."""
    y_min = cam.horizon_y + cfg.min_person_height / max(cam.gain * ident.height_scale, 1e-6)
    y_max = cam.height * 1.08
    if y_min >= y_max:
        return y_max
    u = math.sqrt(rng.random()) if near_bias else rng.random()
    return float(y_min + (y_max - y_min) * u)


class StillScene:
    """A rendered still image and what is in it (people, crowd members, occluders, posters)."""

    def __init__(self, image: np.ndarray, people: list[PersonActor], placements: list[Placement],
                 crowd_xyxy: np.ndarray | None, occluders: list[Occluder], occluder_placements: list[Placement],
                 poster_placements: list[Placement]) -> None:
        self.image = image
        self.people = people
        self.placements = placements
        self.crowd_xyxy = crowd_xyxy
        self.occluders = occluders
        self.occluder_placements = occluder_placements
        self.poster_placements = poster_placements


def render_still(rng: np.random.Generator, cfg: SynthConfig, identities: list[Identity] | None, *, num_people: int,
                 crowd: bool, poster: bool, num_occluders: int, camera: Camera | None = None,
                 background_styles: tuple[str, str] | None = None, gain: float | None = None,
                 tint: np.ndarray | None = None, unlabeled_prob: float = 0.0, clone_prob: float = 0.0) -> StillScene:
    """Compose one still image with ``num_people`` people.

    People come from ``identities`` without repeats; the rest (no ``identities``,
    the pool used up, or ``unlabeled_prob``) are fresh anonymous people (pid -1)
    who exist in this image only. ``clone_prob``: chance a fresh person is a
    one-attribute look-alike of someone earlier in the same image (a hard
    negative that is still a different person).
    """
    W, H = cfg.image_width, cfg.image_height
    cam = camera or random_camera(rng, W, H, cfg.horizon_fraction, cfg.person_height_gain)
    styles = background_styles or (None, None)
    background = make_background(rng, W, H, cam.horizon_y, *styles)
    people: list[PersonActor] = []
    chosen = rng.permutation(len(identities))[:num_people] if identities else []
    for k in range(num_people):
        originals = [p.identity for p in people if not p.identity.changed_attribute]
        if k < len(chosen) and rng.random() >= unlabeled_prob:
            ident = identities[int(chosen[k])]
        elif originals and clone_prob > 0 and rng.random() < clone_prob:
            base = originals[int(rng.integers(len(originals)))]
            ident = make_clone(rng, base, -1, str(rng.choice(clone_attributes(base))))
            if appearance_key(ident) in {appearance_key(p.identity) for p in people}:
                ident = random_identity(rng, -1)  # the same change twice would be one person twice
        else:
            ident = random_identity(rng, -1)
        foot_y = _foot_y_for(rng, cam, ident, cfg)
        people.append(PersonActor(identity=ident, foot_x=float(rng.uniform(-0.05, 1.05) * W), foot_y=foot_y,
                                  height=cam.person_height(foot_y, ident.height_scale),
                                  view=str(rng.choice(VIEWS)), phase=float(rng.uniform(0, 2 * math.pi)),
                                  label=ident.pid))
    n_main = len(people)
    crowd_xyxy = None
    if crowd:
        cx = rng.uniform(0.15, 0.85) * W
        base_y = cam.horizon_y + rng.uniform(0.06, 0.2) * (H - cam.horizon_y)
        members = int(rng.integers(6, 14))
        for _ in range(members):
            ident = random_identity(rng, -1)
            fy = base_y + rng.uniform(-0.03, 0.05) * (H - cam.horizon_y)
            h = max(cam.person_height(fy, ident.height_scale), 6.0)
            fx = cx + rng.normal(0, 0.6) * h
            people.append(PersonActor(ident, float(fx), float(fy), float(h), str(rng.choice(VIEWS)),
                                      float(rng.uniform(0, 6.3)), -1, "crowd"))
    occluders = [random_occluder(rng, cam) for _ in range(num_occluders)]
    posters = [random_poster(rng, cam, random_identity(rng, -1))] if poster else []
    canvas, placements, occ_pl, poster_pl = compose_scene(background, people, occluders, posters)
    if crowd:
        boxes = np.stack([pl.full_xyxy for pl in placements[n_main:]])
        crowd_xyxy = _clip_xyxy(np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(),
                                          boxes[:, 3].max()], np.float32), W, H)
    g = gain if gain is not None else rng.uniform(*cfg.lighting_gain)
    t = tint if tint is not None else random_tint(rng)
    image = apply_lighting(canvas, g, t, rng, NOISE_STD)
    return StillScene(image, people[:n_main], placements[:n_main], crowd_xyxy, occluders, occ_pl, poster_pl)


# --------------------------------------------------------------------------- CrowdHuman


def crowdhuman_image_id(split: str, index: int, rng: np.random.Generator) -> str:
    """An id shaped like CrowdHuman's ``"<digits>,<hex>"``."""
    return f"{1 if split == 'train' else 2}{index:06d},{int(rng.integers(0, 2**60)):015x}"


def crowdhuman_shard(cfg: SynthConfig, out_dir: str, split: str, shard: int) -> dict[str, Any]:
    """Render one shard of the CrowdHuman ``split``; returns its odgt entries in image order."""
    total = cfg.crowdhuman_train_images if split == "train" else cfg.crowdhuman_val_images
    entries = []
    for index in range(shard * cfg.shard_size, min(total, (shard + 1) * cfg.shard_size)):
        rng = unit_rng(cfg.seed, "crowdhuman", split, index)
        # fresh people only: in-the-wild images never share a person (the id-free recipe's assumption)
        scene = render_still(rng, cfg, None, num_people=int(rng.integers(cfg.people_per_image[0],
                                                                         cfg.people_per_image[1] + 1)),
                             crowd=rng.random() < cfg.crowd_group_prob, poster=rng.random() < cfg.poster_prob,
                             num_occluders=int(rng.integers(cfg.occluders_per_image[0],
                                                            cfg.occluders_per_image[1] + 1)),
                             clone_prob=cfg.hard_negative_fraction)
        image_id = crowdhuman_image_id(split, index, rng)
        _write_jpeg(Path(out_dir) / "crowdhuman" / "Images" / f"{image_id}.jpg", scene.image, rng, cfg)
        gtboxes = []
        for pl in scene.placements:
            if pl.visibility < cfg.min_annotated_visibility:
                continue
            gtboxes.append(ch_format.odgt_box(
                _xywh(pl.full_xyxy), _xywh(pl.visible_xyxy), _xywh(pl.head_xyxy), tag="person",
                box_id=len(gtboxes), occ=int(pl.visibility < OCCLUDED_BELOW),
                head_occ=int(pl.head_visibility < HEAD_OCCLUDED_BELOW)))
        for box in ([scene.crowd_xyxy] if scene.crowd_xyxy is not None else []):
            gtboxes.append(ch_format.odgt_box(_xywh(box), _xywh(box), _xywh(box), tag="mask", ignore=True,
                                              box_id=len(gtboxes), head_ignore=1))
        for pl in scene.poster_placements:
            if pl.visibility > 0:
                gtboxes.append(ch_format.odgt_box(_xywh(pl.full_xyxy), _xywh(pl.visible_xyxy), _xywh(pl.full_xyxy),
                                                  tag="mask", ignore=True, box_id=len(gtboxes), head_ignore=1))
        entries.append({"ID": image_id, "gtboxes": gtboxes})
    return {"entries": entries}


# --------------------------------------------------------------------------- COCO


def coco_image_id(cfg: SynthConfig, split: str, index: int) -> int:
    """Unique across splits, like real COCO ids."""
    return index + 1 if split == "train" else cfg.coco_train_images + index + 1


def coco_shard(cfg: SynthConfig, out_dir: str, split: str, shard: int) -> dict[str, Any]:
    """Render one shard of COCO ``split`` (``train2017``/``val2017``); annotations come without ``id``."""
    total = cfg.coco_train_images if split == "train" else cfg.coco_val_images
    folder = f"{split}2017"
    images, annotations = [], []
    for index in range(shard * cfg.shard_size, min(total, (shard + 1) * cfg.shard_size)):
        rng = unit_rng(cfg.seed, "coco", split, index)
        no_person = rng.random() < cfg.coco_no_person_fraction
        n_people = 0 if no_person else int(rng.integers(cfg.people_per_image[0], cfg.people_per_image[1] + 1))
        n_occ = int(rng.integers(max(1, cfg.occluders_per_image[0]), max(1, cfg.occluders_per_image[1]) + 1))
        scene = render_still(rng, cfg, None, num_people=n_people,  # fresh people only, as in CrowdHuman
                             crowd=(not no_person) and rng.random() < cfg.crowd_group_prob, poster=False,
                             num_occluders=n_occ, clone_prob=cfg.hard_negative_fraction)
        image_id = coco_image_id(cfg, split, index)
        file_name = f"{image_id:012d}.jpg"
        _write_jpeg(Path(out_dir) / "coco" / folder / file_name, scene.image, rng, cfg)
        images.append({"id": image_id, "file_name": file_name, "width": cfg.image_width,
                       "height": cfg.image_height})

        def add(pl: Placement, category: int) -> None:
            polys = visible_polygons(pl)
            if not polys:
                return
            annotations.append({"image_id": image_id, "category_id": category, "bbox": _xywh(pl.visible_xyxy),
                                "area": float(pl.visible_mask.sum()), "iscrowd": 0, "segmentation": polys})

        for pl in scene.placements:
            if pl.visibility >= cfg.min_annotated_visibility:
                add(pl, 1)
        for occ, pl in zip(scene.occluders, scene.occluder_placements):
            if occ.kind in OCCLUDER_CATEGORY and pl.visibility >= cfg.min_annotated_visibility:
                add(pl, OCCLUDER_CATEGORY[occ.kind])
        if scene.crowd_xyxy is not None:
            x1, y1, x2, y2 = (float(v) for v in scene.crowd_xyxy)
            annotations.append({"image_id": image_id, "category_id": 1, "bbox": _xywh(scene.crowd_xyxy),
                                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 1,
                                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    return {"images": images, "annotations": annotations}


# --------------------------------------------------------------------------- videos


def _camera_path(rng: np.random.Generator, cfg: SynthConfig, world_w: int, world_h: int, frames: int,
                 moving: bool) -> list[tuple[float, float, float]]:
    """Per-frame (zoom, centre x, centre y) in world pixels, the view window kept inside the world."""
    W, H = cfg.image_width, cfg.image_height
    z0, z1 = (rng.uniform(*cfg.camera_zoom), rng.uniform(*cfg.camera_zoom)) if moving else (1.0, 1.0)
    vx, vy = (rng.uniform(-1, 1) * cfg.camera_pan, rng.uniform(-0.3, 0.3) * cfg.camera_pan) if moving else (0, 0)
    cx, cy = world_w / 2 + rng.uniform(-0.1, 0.1) * W * moving, world_h / 2
    path = []
    for f in range(frames):
        s = z0 + (z1 - z0) * f / max(frames - 1, 1)
        half_w, half_h = W / (2 * s), H / (2 * s)
        if not half_w <= cx + vx / s <= world_w - half_w:
            vx = -vx
        cx = float(np.clip(cx + vx / s, half_w, world_w - half_w))
        cy = float(np.clip(cy + vy / s, half_h, world_h - half_h))
        path.append((s, cx, cy))
    return path


def render_video(rng: np.random.Generator, cfg: SynthConfig, identities: list[Identity], frames: int, fps: float, *,
                 moving_camera: bool, num_static: int = 0, num_mannequins: int = 0, poster: bool = False,
                 ) -> tuple[list[np.ndarray], np.ndarray, dict[int, int]]:
    """Frames (BGR uint8), MOT gt rows ``(N, 9)`` (frame 1-based, id, x, y, w, h, consider, class, vis) and
    each walker's track id -> identity pid (mannequins and posters are not walkers)."""
    W, H = cfg.image_width, cfg.image_height
    margin = max(cfg.camera_zoom[1], 1.0) * 1.35 if moving_camera else 1.0
    world_w, world_h = int(math.ceil(W * margin)), int(math.ceil(H * margin))
    # People live on the ground band the centred view window sees (the world's extra margin is for pan/zoom),
    # so they are as tall in the image as with a static camera.
    oy = (world_h - H) / 2
    view_cam = random_camera(rng, W, H, cfg.horizon_fraction, cfg.person_height_gain)
    cam = Camera(width=world_w, height=int(round(oy + H)), horizon_y=oy + view_cam.horizon_y, gain=view_cam.gain)
    world_bg = make_background(rng, world_w, world_h, cam.horizon_y)
    walkers = simulate_walkers(rng, cam, identities, frames, fps, cfg.people_per_video, cfg.walk_speed,
                               cfg.stride_frequency, cfg.turn_prob, num_static=num_static)
    statics = {w.track_id for w in walkers if w.speed == 0}
    next_id = max([w.track_id for w in walkers], default=0) + 1
    mannequins = []
    for _ in range(num_mannequins):
        ident = mannequin(rng)
        fy = _foot_y_for(rng, cam, ident, cfg, near_bias=False)
        mannequins.append((next_id, ident, float(rng.uniform(0.05, 0.95) * world_w), fy,
                           str(rng.choice(("front", "left", "right")))))
        next_id += 1
    occluders = [random_occluder(rng, cam) for _ in range(int(rng.integers(cfg.occluders_per_image[0],
                                                                            cfg.occluders_per_image[1] + 1)))]
    posters = [random_poster(rng, cam, random_identity(rng, -1))] if poster else []
    poster_id = next_id
    path = _camera_path(rng, cfg, world_w, world_h, frames, moving_camera)
    gain = rng.uniform(*cfg.lighting_gain)
    tint = random_tint(rng)
    gain_velocity = rng.uniform(-cfg.lighting_drift, cfg.lighting_drift)
    out_frames, rows = [], []
    for f in range(frames):
        s, cx, cy = path[f]
        tx, ty = W / 2 - s * cx, H / 2 - s * cy
        M = np.array([[s, 0, tx], [0, s, ty]], np.float32)
        bg = cv2.warpAffine(world_bg, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        actors, labels = [], []
        for w in walkers:
            st = w.states.get(f)
            if st is None:
                continue
            actors.append(PersonActor(w.identity, s * st.foot_x + tx, s * st.foot_y + ty, s * st.height, st.view,
                                      st.phase, st.track_id, "static" if st.track_id in statics else "person"))
            labels.append(MOT_CLASS_STATIC if st.track_id in statics else MOT_CLASS_PEDESTRIAN)
        for tid, ident, mx, my, view in mannequins:
            actors.append(PersonActor(ident, s * mx + tx, s * my + ty, s * cam.person_height(my), view, 0.0, tid,
                                      "mannequin"))
            labels.append(MOT_CLASS_DISTRACTOR)
        occ_f = [Occluder(o.kind, (s * o.box_xyxy[0] + tx, s * o.box_xyxy[1] + ty, s * o.box_xyxy[2] + tx,
                                   s * o.box_xyxy[3] + ty), o.color) for o in occluders]
        post_f = [type(p)(frame_xyxy=tuple(int(round(v)) for v in (s * p.frame_xyxy[0] + tx, s * p.frame_xyxy[1] + ty,
                                                                    s * p.frame_xyxy[2] + tx, s * p.frame_xyxy[3] + ty)),
                          figure=p.figure, frame_color=p.frame_color, paper_color=p.paper_color) for p in posters]
        canvas, placements, _, poster_pl = compose_scene(bg, actors, occ_f, post_f)
        for actor, cls, pl in zip(actors, labels, placements):
            full = _clip_xyxy(pl.full_xyxy, W, H)
            if full[2] <= full[0] or full[3] <= full[1]:
                continue  # entirely outside the frame
            consider = 1 if cls == MOT_CLASS_PEDESTRIAN else 0
            rows.append([f + 1, actor.label, *_xywh(pl.full_xyxy), consider, cls, round(pl.visibility, 4)])
        for pl in poster_pl:
            if pl.visibility > 0:
                rows.append([f + 1, poster_id, *_xywh(pl.full_xyxy), 0, MOT_CLASS_REFLECTION,
                             round(pl.visibility, 4)])
        gain = float(np.clip(gain + gain_velocity, *cfg.lighting_gain))
        if rng.random() < 0.05:
            gain_velocity = rng.uniform(-cfg.lighting_drift, cfg.lighting_drift)
        image = apply_lighting(canvas, gain, tint, rng, NOISE_STD)
        if rng.random() < cfg.motion_blur_prob:
            image = motion_blur(image, int(rng.integers(MOTION_BLUR_PX[0], MOTION_BLUR_PX[1] + 1)))
        if rng.random() < cfg.video_jpeg_prob:
            image = jpeg_roundtrip(image, int(rng.integers(15, 40)))
        out_frames.append(image)
    track_pids = {int(w.track_id): int(w.identity.pid) for w in walkers}
    return out_frames, np.asarray(rows, np.float64).reshape(-1, 9), track_pids


def kinetics_clip(cfg: SynthConfig, out_dir: str, split: str, index: int) -> dict[str, Any]:
    """One Kinetics-style clip (panning/zooming camera) plus its hidden identity truth beside the dataset."""
    rng = unit_rng(cfg.seed, "kinetics", split, index)
    people = [random_identity(rng, -1) for _ in range(cfg.people_per_video[1] * 3)]  # nobody is in two videos
    frames, rows, _ = render_video(rng, cfg, people, cfg.kinetics_clip_frames, cfg.kinetics_fps, moving_camera=True)
    label = KINETICS_LABELS[index % len(KINETICS_LABELS)]
    youtube_id = "".join(YOUTUBE_ALPHABET[int(i)] for i in rng.integers(0, len(YOUTUBE_ALPHABET), 11))
    start = int(rng.integers(0, 300))
    end = start + max(1, int(round(cfg.kinetics_clip_frames / cfg.kinetics_fps)))
    rel = clip_relpath(split, label, youtube_id, start, end)
    write_video(Path(out_dir) / "kinetics" / rel, frames, cfg.kinetics_fps)
    truth = Path(out_dir) / "kinetics_truth" / Path(rel).with_suffix(".txt")
    mot_format.write_gt(truth, rows)
    return {"label": label, "youtube_id": youtube_id, "time_start": start, "time_end": end, "split": split,
            "relpath": rel, "tracks": int(len(np.unique(rows[:, 1]))) if len(rows) else 0}


def mot_sequence_name(index: int) -> str:
    return f"MOT17-SYN{index + 1:02d}-SDP"


def noisy_detections(rng: np.random.Generator, cfg: SynthConfig, gt_rows: np.ndarray) -> np.ndarray:
    """Public detections from gt: jittered boxes, misses (more when occluded), false positives, scores."""
    W, H = cfg.image_width, cfg.image_height
    det = []
    frames = int(gt_rows[:, 0].max()) if len(gt_rows) else 0
    for row in gt_rows:
        frame, _, x, y, w, h, _, cls, vis = row
        if cls not in (MOT_CLASS_PEDESTRIAN, MOT_CLASS_STATIC, MOT_CLASS_DISTRACTOR):
            continue
        miss = cfg.det_miss_rate + (1 - vis) * 0.6 + (0.4 if cls == MOT_CLASS_DISTRACTOR else 0.0)
        if rng.random() < miss:
            continue
        j = rng.normal(0, cfg.det_jitter, 4)
        bx, by = x + j[0] * w, y + j[1] * h
        bw, bh = w * math.exp(j[2]), h * math.exp(j[3])
        score = float(np.clip(0.35 + 0.6 * vis + rng.normal(0, 0.08), 0.05, 1.0))
        det.append([frame, -1, round(bx, 2), round(by, 2), round(bw, 2), round(bh, 2), round(score, 3), -1, -1, -1])
    for frame in range(1, frames + 1):
        for _ in range(int(rng.poisson(cfg.det_false_positives_per_frame))):
            h = rng.uniform(0.1, 0.5) * H
            w = h * rng.uniform(0.3, 0.5)
            det.append([frame, -1, round(rng.uniform(0, W - w), 2), round(rng.uniform(0, H - h), 2), round(w, 2),
                        round(h, 2), round(float(rng.uniform(0.05, 0.6)), 3), -1, -1, -1])
    det.sort(key=lambda r: (r[0], -r[6]))
    return np.asarray(det, np.float64).reshape(-1, 10)


def mot_sequence(cfg: SynthConfig, out_dir: str, index: int) -> dict[str, Any]:
    """One MOT17-style sequence (static camera): ``seqinfo.ini``, ``img1/``, ``gt/gt.txt``, ``det/det.txt``.

    Walkers come from the "mot" population only (shared by all sequences, like
    one city); ``track_pids`` maps gt track ids to bank pids.
    """
    rng = unit_rng(cfg.seed, "mot17", index)
    bank = {ident.pid: ident for ident in identity_bank(cfg)}
    city = identity_populations(cfg)["mot"]
    identities = [bank[city[int(i)]] for i in rng.permutation(len(city))]
    frames, rows, track_pids = render_video(rng, cfg, identities, cfg.mot_sequence_frames, cfg.mot_fps,
                                            moving_camera=False, num_static=cfg.static_people_per_sequence,
                                            num_mannequins=cfg.distractors_per_sequence,
                                            poster=rng.random() < cfg.poster_prob)
    name = mot_sequence_name(index)
    seq_dir = Path(out_dir) / "MOT17" / "train" / name
    mot_format.write_seqinfo(seq_dir, mot_format.SeqInfo(name=name, frame_rate=cfg.mot_fps,
                                                         seq_length=cfg.mot_sequence_frames,
                                                         im_width=cfg.image_width, im_height=cfg.image_height))
    for f, image in enumerate(frames):
        _write_jpeg(seq_dir / "img1" / f"{f + 1:06d}.jpg", image, rng, cfg)
    order = np.lexsort((rows[:, 0], rows[:, 1]))  # MOT17 gt is sorted by id, then frame
    mot_format.write_gt(seq_dir / "gt" / "gt.txt", rows[order])
    mot_format.write_det(seq_dir / "det" / "det.txt", noisy_detections(rng, cfg, rows))
    classes = rows[:, 7].astype(int)
    return {"name": name, "frames": len(frames), "gt_rows": int(len(rows)),
            "pedestrian_tracks": int(len(np.unique(rows[classes == 1, 1]))),
            "distractor_rows": int((classes != 1).sum()),
            "track_pids": {str(t): p for t, p in sorted(track_pids.items())}}


# --------------------------------------------------------------------------- person search


def person_search_split_pids(cfg: SynthConfig) -> tuple[list[int], list[int]]:
    """Bank pids of the train and test populations (see :func:`identity_populations` for val)."""
    pops = identity_populations(cfg)
    return pops["person_search_train"], pops["person_search_test"]


def person_search_total(cfg: SynthConfig, split: str) -> int:
    """Frames of person-search ``split`` ("train", "val" or "test")."""
    if split not in PERSON_SEARCH_SPLITS:
        raise ValueError(f"person-search split {split!r} not one of {PERSON_SEARCH_SPLITS}")
    return {"train": cfg.person_search_train_images, "val": cfg.person_search_val_images,
            "test": cfg.person_search_test_images}[split]


def person_search_camera(cfg: SynthConfig, camera: int) -> dict[str, Any]:
    """Fixed look of one camera: horizon, scale, background styles, lighting."""
    from kdtrack.synth.scene import BACKGROUND_STYLES_GROUND, BACKGROUND_STYLES_TOP

    rng = unit_rng(cfg.seed, "person_search", "camera", camera)
    cam = random_camera(rng, cfg.image_width, cfg.image_height, cfg.horizon_fraction,
                        cfg.person_height_gain * rng.uniform(0.8, 1.25))
    return {"camera": cam, "styles": (str(rng.choice(BACKGROUND_STYLES_TOP)), str(rng.choice(BACKGROUND_STYLES_GROUND))),
            "gain": float(rng.uniform(*cfg.lighting_gain)), "tint": random_tint(rng, 0.15)}


def person_search_file_name(cfg: SynthConfig, split: str, index: int) -> str:
    """Numbered train, then test, then val (added last, so train/test names did not move)."""
    offset = {"train": 0, "test": cfg.person_search_train_images,
              "val": cfg.person_search_train_images + cfg.person_search_test_images}[split]
    return f"s{offset + index + 1:05d}.jpg"


def person_search_shard(cfg: SynthConfig, out_dir: str, split: str, shard: int) -> dict[str, Any]:
    """Render one shard of person-search scene images of ``split`` (its own identity population, shared
    cameras); boxes are clipped to the image."""
    total = person_search_total(cfg, split)
    bank = {ident.pid: ident for ident in identity_bank(cfg)}
    pool = [bank[p] for p in identity_populations(cfg)[f"person_search_{split}"]]
    cameras = [person_search_camera(cfg, c + 1) for c in range(cfg.person_search_cameras)]
    images = []
    for index in range(shard * cfg.shard_size, min(total, (shard + 1) * cfg.shard_size)):
        rng = unit_rng(cfg.seed, "person_search", split, index)
        camera = int(rng.integers(cfg.person_search_cameras)) + 1
        look = cameras[camera - 1]
        scene = render_still(rng, cfg, pool, num_people=int(rng.integers(cfg.people_per_image[0],
                                                                          cfg.people_per_image[1] + 1)),
                             crowd=False, poster=False,
                             num_occluders=int(rng.integers(cfg.occluders_per_image[0], cfg.occluders_per_image[1] + 1)),
                             camera=look["camera"], background_styles=look["styles"],
                             gain=look["gain"] * rng.uniform(0.9, 1.1), tint=look["tint"],
                             unlabeled_prob=cfg.unlabeled_person_prob)
        file_name = person_search_file_name(cfg, split, index)
        _write_jpeg(Path(out_dir) / "person_search" / "images" / file_name, scene.image, rng, cfg)
        boxes, pids, vis, views = [], [], [], []
        for actor, pl in zip(scene.people, scene.placements):
            box = _clip_xyxy(pl.full_xyxy, cfg.image_width, cfg.image_height)
            if pl.visibility < cfg.min_annotated_visibility or box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            boxes.append(_xywh(box))
            pids.append(int(actor.identity.pid))
            vis.append(round(float(pl.visibility), 4))
            views.append(actor.view)
        images.append({"file_name": file_name, "width": cfg.image_width, "height": cfg.image_height,
                       "camera": camera, "split": split, "boxes_xywh": boxes, "pids": pids, "visibility": vis,
                       "views": views})
    return {"images": images}


def person_search_queries(cfg: SynthConfig, images: list[dict[str, Any]],
                          split: str = "test") -> list[dict[str, Any]]:
    """CUHK-SYSU style queries of ``split`` ("test" or "val"): a person seen in >= 2 cameras; gallery per size =
    every image of the split showing it from another camera plus random images of the split without it.

    Val galleries keep the sizes that fit the (smaller) val set, at least the smallest.
    """
    if split not in ("test", "val"):
        raise ValueError(f"person-search queries are drawn for 'test' or 'val', not {split!r}")
    rng = unit_rng(cfg.seed, "person_search", "queries", *([] if split == "test" else [split]))
    pool = [img for img in images if img["split"] == split]
    count = cfg.person_search_queries if split == "test" else cfg.person_search_val_queries
    sizes = list(cfg.person_search_gallery_sizes)
    if split != "test":
        sizes = ps_format.fitting_gallery_sizes(sizes, len(pool))
    seen: dict[int, list[tuple[dict, int]]] = {}
    for img in pool:
        for k, pid in enumerate(img["pids"]):
            if pid > 0:
                seen.setdefault(pid, []).append((img, k))
    eligible = []
    for pid in sorted(seen):
        cams = {img["camera"] for img, _ in seen[pid]}
        good = [(img, k) for img, k in seen[pid] if img["visibility"][k] >= cfg.query_min_visibility]
        if len(cams) >= 2 and good:
            eligible.append((pid, good))
    pick = sorted(rng.permutation(len(eligible))[:count].tolist())
    queries = []
    for i in pick:
        pid, good = eligible[i]
        img, k = good[int(rng.integers(len(good)))]
        positives = sorted({o["file_name"] for o, _ in seen[pid] if o["camera"] != img["camera"]})
        negatives = sorted(o["file_name"] for o in pool if pid not in o["pids"])
        queries.append({"pid": pid, "file_name": img["file_name"], "box_xywh": img["boxes_xywh"][k],
                        "galleries": ps_format.draw_galleries(positives, negatives, sizes, rng)})
    return queries


# --------------------------------------------------------------------------- Market-1501 crops


def reid_split_pids(cfg: SynthConfig) -> tuple[list[int], list[int]]:
    """Bank pids of the Market-1501 train and test populations."""
    pops = identity_populations(cfg)
    return pops["market_train"], pops["market_test"]


def reid_camera_look(cfg: SynthConfig, camera: int) -> dict[str, Any]:
    from kdtrack.synth.scene import BACKGROUND_STYLES_GROUND, BACKGROUND_STYLES_TOP

    rng = unit_rng(cfg.seed, "reid", "camera", camera)
    return {"horizon": float(rng.uniform(0.3, 0.6)),
            "styles": (str(rng.choice(BACKGROUND_STYLES_TOP)), str(rng.choice(BACKGROUND_STYLES_GROUND))),
            "gain": float(rng.uniform(*cfg.lighting_gain)), "tint": random_tint(rng, 0.15)}


def render_reid_crop(rng: np.random.Generator, cfg: SynthConfig, ident: Identity | None, look: dict[str, Any],
                     fill: float = 1.0) -> np.ndarray:
    """A (crop_h, crop_w) BGR detection crop of ``ident`` (``None``: background only) in a camera's look;
    ``fill`` scales the person (>1 = badly cropped junk)."""
    ch, cw = cfg.reid_crop_size
    horizon = look["horizon"] * ch
    bg = make_background(rng, cw, ch, horizon, *look["styles"])
    people = []
    if ident is not None:
        h = ch * rng.uniform(0.82, 0.97) * fill
        people.append(PersonActor(ident, cw / 2 + rng.normal(0, 0.06) * cw, ch - rng.uniform(0, 0.05) * ch + (fill - 1) * ch * 0.6,
                                  h, str(rng.choice(VIEWS)), float(rng.uniform(0, 2 * math.pi)), ident.pid))
        if rng.random() < 0.25:  # a passer-by overlapping the crop
            other = random_identity(rng, -1)
            front = rng.random() < 0.5
            people.append(PersonActor(other, cw * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.55, 0.9)),
                                      people[0].foot_y + (3 if front else -3), h * rng.uniform(0.9, 1.05),
                                      str(rng.choice(VIEWS)), float(rng.uniform(0, 6.3))))
    occ = []
    if rng.random() < 0.1:
        w = rng.uniform(0.15, 0.35) * cw
        x = rng.uniform(0, cw - w)
        occ.append(Occluder("box", (x, ch * rng.uniform(0.55, 0.8), x + w, ch + 1.0), (90, 90, 90)))
    canvas, *_ = compose_scene(bg, people, occ)
    image = apply_lighting(canvas, look["gain"] * rng.uniform(0.85, 1.15), look["tint"], rng, NOISE_STD)
    if rng.random() < cfg.motion_blur_prob * 0.5:
        image = motion_blur(image, 3)
    return image


def market_shard(cfg: SynthConfig, out_dir: str, group: str, shard: int) -> dict[str, Any]:
    """Crops for one shard: ``group`` "train" / "test" (identities), or "junk" / "distractor" (pid -1 / 0)."""
    root = Path(out_dir) / "market1501"
    bank = {ident.pid: ident for ident in identity_bank(cfg)}
    looks = [reid_camera_look(cfg, c + 1) for c in range(cfg.reid_cameras)]
    train, test = reid_split_pids(cfg)
    written: dict[str, int] = {}

    def save(split: str, rng: np.random.Generator, pid: int, cam: int, frame: int, k: int, image: np.ndarray) -> None:
        name = market_format.crop_name(pid, cam, 1, frame, k)
        _write_jpeg(root / split / name, image, rng, cfg)
        written[split] = written.get(split, 0) + 1

    if group in ("train", "test"):
        pids = train if group == "train" else test
        for pid in pids[shard * cfg.shard_size: (shard + 1) * cfg.shard_size]:
            rng = unit_rng(cfg.seed, "reid", group, pid)
            n_cams = int(rng.integers(min(2, cfg.reid_cameras), cfg.reid_cameras + 1))
            cams = [int(c) + 1 for c in rng.choice(cfg.reid_cameras, n_cams, replace=False)]
            frame = int(rng.integers(1, 1000))
            if group == "test":  # one query from the first camera; gallery starts with another camera
                save("query", rng, pid, cams[0], frame, 1, render_reid_crop(rng, cfg, bank[pid], looks[cams[0] - 1]))
                cams = cams[1:] + cams[:1]
            split = "bounding_box_train" if group == "train" else "bounding_box_test"
            for k in range(cfg.reid_crops_per_id):
                cam = cams[k % len(cams)]
                frame += int(rng.integers(5, 60))
                save(split, rng, pid, cam, frame, 1, render_reid_crop(rng, cfg, bank[pid], looks[cam - 1]))
    else:
        count = cfg.reid_junk_crops if group == "junk" else cfg.reid_distractor_crops
        pid = -1 if group == "junk" else 0
        for i in range(shard * cfg.shard_size, min(count, (shard + 1) * cfg.shard_size)):
            rng = unit_rng(cfg.seed, "reid", group, i)
            cam = int(rng.integers(cfg.reid_cameras)) + 1
            if group == "junk":  # a bad detection: zoomed into a body part
                image = render_reid_crop(rng, cfg, random_identity(rng, -1), looks[cam - 1], fill=rng.uniform(1.8, 2.6))
            else:  # background or a stranger
                stranger = random_identity(rng, 0) if rng.random() < 0.5 else None
                image = render_reid_crop(rng, cfg, stranger, looks[cam - 1])
            save("bounding_box_test", rng, pid, cam, 10 * i + 1, 1, image)
    return {"written": written}
