"""Oracle-box re-identification: how good is an identity embedding, detection left out.

PointID's "oracle detection based inference": every *ground-truth* box is
embedded (the student's identity map read at the box centre), each box is a
query against all the others, and retrieval is scored with mAP and CMC
(:mod:`kdtrack.metrics.retrieval`). It is the identity objective that training
monitors, Tune sweeps and the demo report. Two protocols over a data root laid
out as the synthetic world (``jobs.generate_synth``):

- ``person_search`` (cross-camera): the labelled boxes (pid > 0) of one split
  of ``person_search/manifest.json``; a query's gallery is every labelled box
  seen by another camera (images without a camera, as in CUHK-SYSU, count as
  their own camera: retrieval across images). Where the synthetic world's
  hidden truth of the side each person shows is beside it
  (``person_search_truth/views.json``), the scores are also split by view:
  positives showing the query's side (front, back, side = left or right: a
  flip apart) and positives showing another side, the other one junk.
- ``mot`` (cross-time): pedestrian gt boxes (class 1, consider flag set,
  visibility >= ``EvalConfig.reid_min_visibility``) of the MOT17-style
  sequences under ``MOT17/train`` (``reid_mot_split`` frames, every
  ``reid_mot_frame_stride``-th); retrieval within each sequence, a same-id pair
  counts only when its frames are >= ``reid_mot_gap`` apart (closer same-id
  pairs are junk).

Embedders are :data:`kdtrack.inference.EmbedFn` callables ``(image RGB uint8
(H, W, 3), boxes_xyxy (N, 4)) -> (N, d)`` L2-normalised; one with an
``embed_many(images, boxes_list)`` method is called on several images at once.
Every embedder sees the same boxes and each image is decoded once for all of
them, so baselines come from the same run:

- ``student``: the checkpoint's identity map at the box centres;
- ``random``: a randomly initialised student of the same architecture;
- ``colour``: an HSV colour histogram of the upper and lower half of the box;
- ``colour_centre``: the same histogram over the central 40 % x 80 % of the box
  only, where the person is: a whole-box histogram is mostly background (a
  person fills about 40 % of its box), so this one is the strong cheap yardstick;
- ``teacher`` (optional): the Re-ID teacher on box crops.

Results also hold a ``chance`` row: the expected scores of a uniformly random
ranking of the same queries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from kdtrack.config import Config, EvalConfig
from kdtrack.data.dataset import read_image_rgb
from kdtrack.formats.common import FormatError, MissingFileError
from kdtrack.formats.mot import dedupe_detector_copies, list_sequences, read_mot_sequence
from kdtrack.formats.person_search import MANIFEST_NAME, UNKNOWN_CAMERA, read_manifest
from kdtrack.inference import Detector, EmbedFn, embeddings_at_boxes
from kdtrack.data.letterbox import DEFAULT_PAD_VALUE
from kdtrack.metrics.retrieval import JunkRule, Positives, RetrievalResult, evaluate_leave_one_out, l2_normalize
from kdtrack.models import build_student
from kdtrack.readout import central_boxes
from kdtrack.synth.world import PERSON_SEARCH_TRUTH

PROTOCOLS = ("person_search", "mot")
BASELINES = ("random", "colour", "colour_centre")
CHANCE = "chance"  # results row: expected scores of a random ranking
TEACHER = "teacher"  # the Re-ID teacher on box crops (optional embedder)
TEACHER_COSINE = "teacher_cosine"  # results field: mean cosine to the teacher's feature of the same box
PERSON_SEARCH_DIR = "person_search"
MOT_DIR = "MOT17/train"
COLOUR_BINS = (8, 4, 4)  # hue x saturation x value bins per box half
VIEW_SIDE = {"front": "front", "back": "back", "left": "side", "right": "side"}  # a flip maps left onto right
VIEW_SPLITS = (("same_view", "same_tag"), ("other_view", "other_tag"))  # metric suffix, retrieval positives
CONTEXTS = ("scene", "alone")  # a box read in its image, or isolated on a grey canvas (eval.reid_context)


# --------------------------------------------------------------------------- embedders


@dataclass
class StudentBoxEmbedder:
    """The student's identity map read at each box, several images per forward pass.

    The same reading as :func:`kdtrack.inference.student_embedding_at_boxes`
    (and as the training loss): ``model.id_readout`` of the letterboxed image
    (``kdtrack.readout``: the centre cell, or the box's central region).
    """

    detector: Detector

    def __call__(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        return self.embed_many([image_rgb], [boxes_xyxy])[0]

    def embed_many(self, images_rgb: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``(N_i, D)`` float32 L2-normalised identity vectors for each image's boxes (original pixels)."""
        if not images_rgb:
            return []
        batches, transforms = zip(*(self.detector.preprocess(image) for image in images_rgb))
        emb_maps = self.detector.forward(torch.cat(batches))["embedding"]  # (B, k, h, w)
        r = self.detector.cfg.model.down_ratio
        readout = self.detector.cfg.model.id_readout
        return [embeddings_at_boxes(emb_map, tf, boxes, r, readout).astype(np.float32)
                for emb_map, tf, boxes in zip(emb_maps, transforms, boxes_xyxy)]


def student_embedder(model: torch.nn.Module, cfg: Config, device: torch.device | str = "cpu") -> StudentBoxEmbedder:
    """A student (e.g. from :func:`kdtrack.inference.load_student`) as an embedder; put in eval mode."""
    device = torch.device(device)
    return StudentBoxEmbedder(Detector(model.to(device).eval(), cfg, device))


def random_student_embedder(cfg: Config, device: torch.device | str = "cpu", seed: int = 0) -> StudentBoxEmbedder:
    """The "random init" baseline: a student of the same ``cfg.model``, weights drawn with ``seed``.

    The global torch RNG is left as it was (the draw happens in a forked RNG).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_student(replace(cfg.model, pretrained=""))
    return student_embedder(model, cfg, device)


def colour_histogram_features(image_rgb: np.ndarray, boxes_xyxy: np.ndarray,
                              bins: tuple[int, int, int] = COLOUR_BINS) -> np.ndarray:
    """The "hand-made feature" baseline: HSV histograms of the upper and lower half of each box.

    Each half: ``bins`` = (hue, saturation, value) bins over OpenCV's HSV ranges
    (H 0..179, S and V 0..255), normalised by its pixel count; the two halves are
    concatenated and L2-normalised: ``(N, 2 * prod(bins))`` float32. A box with
    no pixel inside the image gives a zero row.
    """
    hb, sb, vb = bins
    per_half = hb * sb * vb
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), 2 * per_half), np.float32)
    if not len(boxes):
        return out
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2HSV).astype(np.int64)
    code = (hsv[..., 0] * hb // 180) * (sb * vb) + (hsv[..., 1] * sb // 256) * vb + hsv[..., 2] * vb // 256
    height, width = code.shape
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        xa, xb = int(np.clip(np.floor(x1), 0, width)), int(np.clip(np.ceil(x2), 0, width))
        ya, yb = int(np.clip(np.floor(y1), 0, height)), int(np.clip(np.ceil(y2), 0, height))
        if xb <= xa or yb <= ya:
            continue
        middle = (ya + yb + 1) // 2
        for j, part in enumerate((code[ya:middle, xa:xb], code[middle:yb, xa:xb])):
            if part.size:
                out[i, j * per_half:(j + 1) * per_half] = np.bincount(part.ravel(), minlength=per_half) / part.size
    return l2_normalize(out)


def centre_colour_histogram_features(image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """The person-centred colour baseline: :func:`colour_histogram_features` over :func:`central_boxes`
    (the central 40 % x 80 % of each box, upper and lower half)."""
    return colour_histogram_features(image_rgb, central_boxes(boxes_xyxy))


def build_embedders(
    model: torch.nn.Module,
    cfg: Config,
    device: torch.device | str = "cpu",
    *,
    baselines: Sequence[str] = BASELINES,
    teacher_embed: EmbedFn | None = None,
    seed: int | None = None,
) -> dict[str, EmbedFn]:
    """``{"student", *baselines, ["teacher"]}`` embedders for a trained student and its config.

    ``seed`` of the random-init baseline defaults to ``cfg.eval.reid_baseline_seed``,
    whose -1 means ``cfg.train.seed``: jobs.train seeds torch with it before
    building the student, so (without ``model.pretrained``) "random" is the
    network the training run started from.
    """
    baseline = baseline_embedders(cfg, device, baselines=baselines, seed=seed)  # checks the names first
    embedders: dict[str, EmbedFn] = {"student": student_embedder(model, cfg, device), **baseline}
    if teacher_embed is not None:
        embedders[TEACHER] = teacher_embed
    return embedders


def baseline_embedders(cfg: Config, device: torch.device | str = "cpu", *, baselines: Sequence[str] = BASELINES,
                       seed: int | None = None) -> dict[str, EmbedFn]:
    """``{"random", "colour", "colour_centre"}`` (those in ``baselines``): the same-architecture random-init
    student (``seed`` as :func:`build_embedders` says), the whole-box and the person-centred colour
    histograms. An unknown name is a ValueError."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    embedders: dict[str, EmbedFn] = {}
    if "random" in baselines:
        if seed is None:
            seed = cfg.eval.reid_baseline_seed if cfg.eval.reid_baseline_seed >= 0 else cfg.train.seed
        embedders["random"] = random_student_embedder(cfg, device, seed)
    if "colour" in baselines:
        embedders["colour"] = colour_histogram_features
    if "colour_centre" in baselines:
        embedders["colour_centre"] = centre_colour_histogram_features
    return embedders


# --------------------------------------------------------------------------- protocols: the boxes


@dataclass
class ReidBoxSet:
    """The ground-truth boxes of one protocol, grouped by image (images without boxes left out).

    Per box, in image order: ``ids`` (person / track id), ``groups`` (camera or
    sequence index), ``times`` (frame number; 0 for still images), all ``(N,)`` int64.
    """

    protocol: str
    junk_rule: JunkRule
    min_gap: int
    image_paths: list[str]
    boxes_xyxy: list[np.ndarray]  # per image, (n_i, 4) float32 original pixels
    ids: np.ndarray
    groups: np.ndarray
    times: np.ndarray
    views: np.ndarray | None = None  # (N,) str, the side each person shows (hidden truth of the world), else None

    def __len__(self) -> int:
        return len(self.ids)


def person_search_box_set(manifest_path: str | Path, split: str) -> ReidBoxSet:
    """Labelled boxes (pid > 0) of ``split`` in a person-search manifest; gallery = other cameras."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise MissingFileError(f"{manifest_path}: person-search manifest not found")
    manifest = read_manifest(manifest_path)
    splits = sorted({img.split for img in manifest.images})
    if split not in splits:
        raise FormatError(f"{manifest_path}: no images of split {split!r} (splits present: {', '.join(splits)})")
    records = manifest.image_records(split)  # boxes clipped to the image as every reader does
    truth = person_search_views(manifest_path)
    max_camera = max([int(r.extra["camera"]) for r in records] + [0])
    paths, boxes, ids, groups, views = [], [], [], [], []
    for index, record in enumerate(records):
        labelled = record.ids > 0
        if not labelled.any():
            continue
        camera = int(record.extra["camera"])
        group = camera if camera != UNKNOWN_CAMERA else max_camera + 1 + index  # unknown: its own camera
        paths.append(record.image_path)
        boxes.append(record.boxes_xyxy[labelled].astype(np.float32))
        ids.append(record.ids[labelled])
        groups.append(np.full(int(labelled.sum()), group))
        if truth is not None:
            sides = truth.get(record.image_id)
            rows = record.extra["box_rows"][labelled]
            if sides is None or len(rows) and rows.max() >= len(sides):
                raise FormatError(f"{manifest_path.parent.parent / PERSON_SEARCH_TRUTH}: no view for every box of "
                                  f"{record.image_id}")
            views.append(np.array([VIEW_SIDE[sides[r]] for r in rows], dtype=object))
    box_set = _box_set("person_search", "cross_camera", 0, paths, boxes, ids, groups,
                       [np.zeros(len(i), np.int64) for i in ids])
    if truth is not None:
        box_set = replace(box_set, views=np.concatenate(views) if views else np.zeros(0, object))
    return box_set


def person_search_views(manifest_path: str | Path) -> dict[str, list[str]] | None:
    """``{file_name: [view of each manifest box]}`` from the synthetic world's hidden truth beside the dataset
    (``kdtrack.synth.world.PERSON_SEARCH_TRUTH``); ``None`` where there is none (a real dataset)."""
    import json

    path = Path(manifest_path).parent.parent / PERSON_SEARCH_TRUTH
    if not path.is_file():
        return None
    try:
        views = json.loads(path.read_text())["views"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not a views file ({exc})") from None
    unknown = {v for sides in views.values() for v in sides} - set(VIEW_SIDE)
    if unknown:
        raise FormatError(f"{path}: unknown view(s) {sorted(unknown)}; known: {', '.join(VIEW_SIDE)}")
    return views


def mot_box_set(mot_root: str | Path, cfg: EvalConfig | None = None) -> ReidBoxSet:
    """Pedestrian gt boxes of every sequence under ``mot_root`` (one copy per MOT17 detector variant)."""
    cfg = cfg or EvalConfig()
    if cfg.reid_mot_frame_stride < 1:
        raise ValueError(f"eval.reid_mot_frame_stride must be >= 1, got {cfg.reid_mot_frame_stride}")
    seq_dirs = dedupe_detector_copies(list_sequences(mot_root))
    if not seq_dirs:
        raise MissingFileError(f"{mot_root}: no MOT sequences (folders with seqinfo.ini)")
    paths, boxes, ids, groups, times = [], [], [], [], []
    for seq_index, seq_dir in enumerate(seq_dirs):
        _, records = read_mot_sequence(seq_dir, split=cfg.reid_mot_split, min_visibility=cfg.reid_min_visibility)
        for record in records:
            if (record.extra["split_frame"] - 1) % cfg.reid_mot_frame_stride or not len(record.ids):
                continue
            paths.append(record.image_path)
            boxes.append(record.boxes_xyxy.astype(np.float32))
            ids.append(record.ids)
            groups.append(np.full(len(record.ids), seq_index))
            times.append(np.full(len(record.ids), int(record.extra["frame"])))
    return _box_set("mot", "min_time_gap", cfg.reid_mot_gap, paths, boxes, ids, groups, times)


def _box_set(protocol: str, junk_rule: JunkRule, min_gap: int, paths: list[str], boxes: list[np.ndarray],
             ids: list[np.ndarray], groups: list[np.ndarray], times: list[np.ndarray]) -> ReidBoxSet:
    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    return ReidBoxSet(protocol, junk_rule, int(min_gap), paths, boxes, cat(ids), cat(groups), cat(times))


def load_reid_box_sets(
    world_root: str | Path,
    cfg: EvalConfig | None = None,
    *,
    split: str | None = None,
    protocols: Sequence[str] | None = None,
) -> dict[str, ReidBoxSet]:
    """The box sets of ``protocols`` (default ``cfg.reid_protocols``) under a world / data root.

    ``person_search/manifest.json`` (split ``split``, default ``cfg.reid_split``)
    and ``MOT17/train``. Load once, evaluate many times (e.g. during training).
    A missing file raises ``FileNotFoundError`` naming it.
    """
    cfg = cfg or EvalConfig()
    root = Path(world_root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: data root not found (expected {PERSON_SEARCH_DIR}/ and {MOT_DIR}/ in it)")
    protocols = tuple(protocols or cfg.reid_protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown re-ID protocol(s) {unknown}; known: {', '.join(PROTOCOLS)}")
    box_sets = {}
    for protocol in protocols:
        if protocol == "person_search":
            box_sets[protocol] = person_search_box_set(root / PERSON_SEARCH_DIR / MANIFEST_NAME,
                                                       split or cfg.reid_split)
        else:
            box_sets[protocol] = mot_box_set(root / MOT_DIR, cfg)
    return box_sets


# --------------------------------------------------------------------------- embedding and scoring


def isolate_boxes(image_rgb: np.ndarray, boxes_xyxy: np.ndarray, pad: float,
                  fill: int = int(DEFAULT_PAD_VALUE)) -> list[np.ndarray]:
    """One copy of ``image_rgb`` per box in which everything outside the box, grown by ``pad`` x its
    width / height on each side, is ``fill``: the person without the scene around it."""
    height, width = image_rgb.shape[:2]
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, np.float64).reshape(-1, 4):
        gw, gh = pad * (x2 - x1), pad * (y2 - y1)
        xa, xb = int(np.clip(np.floor(x1 - gw), 0, width)), int(np.clip(np.ceil(x2 + gw), 0, width))
        ya, yb = int(np.clip(np.floor(y1 - gh), 0, height)), int(np.clip(np.ceil(y2 + gh), 0, height))
        alone = np.full_like(image_rgb, fill)
        alone[ya:yb, xa:xb] = image_rgb[ya:yb, xa:xb]
        out.append(alone)
    return out


def _embed_with(embed: EmbedFn, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``embed`` over several images: one ``embed_many`` call when it has one, else image by image."""
    many = getattr(embed, "embed_many", None)
    return list(many(images, boxes)) if many is not None else [embed(im, b) for im, b in zip(images, boxes)]


def _embed_images(embed: EmbedFn, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                  context: str, pad: float, batch_images: int) -> list[np.ndarray]:
    """Each image's ``(n_i, d)`` embeddings; ``context="alone"``: every box embedded on its own isolated copy
    (``batch_images`` copies per call, so a crowded image does not make one huge batch)."""
    if context == "scene":
        return _embed_with(embed, images, boxes)
    boxes = [np.asarray(b).reshape(-1, 4) for b in boxes]
    pairs = ((alone, box[None]) for im, b in zip(images, boxes) for alone, box in zip(isolate_boxes(im, b, pad), b))
    flat: list[np.ndarray] = []
    while chunk := list(itertools.islice(pairs, batch_images)):
        copies, singles = zip(*chunk)
        flat += [np.asarray(e, np.float32) for e in _embed_with(embed, copies, singles)]
    if not flat:
        return [np.zeros((0, 1), np.float32) for _ in boxes]
    return np.split(np.concatenate(flat), np.cumsum([len(b) for b in boxes])[:-1])


def embed_box_set(box_set: ReidBoxSet, embedders: Mapping[str, EmbedFn], *,
                  batch_images: int = 8, context: str = "scene", context_pad: float = 0.15) -> dict[str, np.ndarray]:
    """``{name: (N, d) float32}`` for every box of ``box_set``; each image is decoded once for all embedders.

    ``context``: ``"scene"`` (each box read in its image) or ``"alone"`` (each box on a grey canvas
    with only the box, grown by ``context_pad``, kept: :func:`isolate_boxes`). Comparing the two shows
    how much an embedding leans on the scene around a person rather than on the person.
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown re-ID context {context!r}; known: {', '.join(CONTEXTS)}")
    if not context_pad >= 0:
        raise ValueError(f"eval.reid_context_pad must be >= 0, got {context_pad}")
    per_image: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
    step = max(1, int(batch_images))
    for start in range(0, len(box_set.image_paths), step):
        paths = box_set.image_paths[start:start + step]
        boxes = box_set.boxes_xyxy[start:start + step]
        images = [read_image_rgb(path) for path in paths]
        for name, embed in embedders.items():
            outputs = _embed_images(embed, images, boxes, context, context_pad, step)
            for path, b, emb in zip(paths, boxes, outputs):
                emb = np.asarray(emb, np.float32)
                if emb.ndim != 2 or len(emb) != len(b):
                    raise ValueError(f"embedder {name!r} returned shape {emb.shape} for {len(b)} boxes of {path}")
                per_image[name].append(emb)
    return {name: (np.concatenate(parts) if parts else np.zeros((0, 1), np.float32))
            for name, parts in per_image.items()}


def score_box_set(box_set: ReidBoxSet, features: np.ndarray, ranks: tuple[int, ...] = (1, 5, 10), *,
                  positives: Positives = "all", tags: np.ndarray | None = None) -> RetrievalResult:
    """Every box a query against all others under the protocol's junk rule (``positives`` / ``tags``:
    :func:`kdtrack.metrics.retrieval.evaluate_retrieval`)."""
    return evaluate_leave_one_out(features, box_set.ids, junk_rule=box_set.junk_rule, groups=box_set.groups,
                                  times=box_set.times, min_gap=box_set.min_gap, ranks=tuple(ranks),
                                  positives=positives, tags=tags)


def score_by_view(box_set: ReidBoxSet, features: np.ndarray, ranks: tuple[int, ...] = (1, 5, 10), *,
                  chance: bool = False) -> dict[str, float | int]:
    """``mAP_same_view``, ``rank1_same_view``, ``queries_same_view`` and the same for ``other_view``: the
    protocol's scores with the positives restricted to the query's side or to the other sides."""
    out: dict[str, float | int] = {}
    codes = np.unique(box_set.views, return_inverse=True)[1].reshape(-1)  # ints compare fast, strings do not
    for suffix, positives in VIEW_SPLITS:
        result = score_box_set(box_set, features, ranks, positives=positives, tags=codes)
        summary = result.chance_summary() if chance else result.summary()
        for metric in ("mAP", "rank1", "queries"):
            out[f"{metric}_{suffix}"] = summary[metric]
    return out


def teacher_cosine(features: np.ndarray, teacher_features: np.ndarray) -> float:
    """Mean cosine between each box's embedding and the teacher's of the same box (rows L2-normalised, as
    every embedder returns them): how closely a KD student reproduces its teacher on these people, which
    retrieval scores only indirectly. nan for no boxes."""
    if len(features) == 0:
        return float("nan")
    return float(np.mean(np.sum(features * teacher_features, axis=1)))


def evaluate_reid_box_sets(
    embedders: Mapping[str, EmbedFn],
    box_sets: Mapping[str, ReidBoxSet],
    cfg: EvalConfig | None = None,
) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{protocol: {embedder | "chance": {"mAP", "rank1", "rank5", "rank10", "queries", "skipped"}}}``.

    mAP / rank-k are fractions in 0..1 (nan when no query has a positive). With a ``teacher`` embedder,
    every other embedder of the teacher's size also gets ``teacher_cosine`` (:func:`teacher_cosine`).
    """
    cfg = cfg or EvalConfig()
    if CHANCE in embedders:
        raise ValueError(f"embedder name {CHANCE!r} is reserved for the random-ranking row")
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    for protocol, box_set in box_sets.items():
        features = embed_box_set(box_set, embedders, batch_images=cfg.reid_batch_images, context=cfg.reid_context,
                                 context_pad=cfg.reid_context_pad)
        rows = {}
        result = None
        for name, feats in features.items():
            result = score_box_set(box_set, feats, cfg.reid_ranks)
            rows[name] = result.summary()
            if box_set.views is not None:
                rows[name].update(score_by_view(box_set, feats, cfg.reid_ranks))
            if TEACHER in features and name != TEACHER and feats.shape[1] == features[TEACHER].shape[1]:
                rows[name][TEACHER_COSINE] = teacher_cosine(feats, features[TEACHER])
        if result is None:  # no embedder: the chance row alone
            result = score_box_set(box_set, np.ones((len(box_set), 1), np.float32), cfg.reid_ranks)
        rows[CHANCE] = result.chance_summary()  # depends on ids and junk only, not on features
        if box_set.views is not None:
            rows[CHANCE].update(score_by_view(box_set, np.ones((len(box_set), 1), np.float32), cfg.reid_ranks,
                                              chance=True))
        results[protocol] = rows
    return results


def evaluate_reid(
    embedders: Mapping[str, EmbedFn],
    world_root: str | Path,
    *,
    cfg: EvalConfig | None = None,
    split: str | None = None,
    protocols: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Oracle-box re-ID of every embedder on the same boxes: :func:`load_reid_box_sets` then
    :func:`evaluate_reid_box_sets`. ``split``: person-search split (default ``cfg.reid_split``)."""
    box_sets = load_reid_box_sets(world_root, cfg, split=split, protocols=protocols)
    return evaluate_reid_box_sets(embedders, box_sets, cfg)


# --------------------------------------------------------------------------- reporting


def flatten_reid_metrics(results: Mapping[str, Any], prefix: str = "reid") -> dict[str, float]:
    """``{"{prefix}/{protocol}/{embedder}/{metric}": value}`` for every finite number (MLflow keys)."""
    out = {}
    for protocol in PROTOCOLS:
        for name, row in results.get(protocol, {}).items():
            for metric, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                    key = f"{protocol}/{name}/{metric}"
                    out[f"{prefix}/{key}" if prefix else key] = float(value)
    return out


def format_reid_table(results: Mapping[str, Any]) -> str:
    """Rows = embedders (chance last), columns = person-search mAP/R1/R5 and MOT mAP/R1, in percent."""
    columns = [("person_search", "mAP", "PS mAP"), ("person_search", "rank1", "PS R1"),
               ("person_search", "rank5", "PS R5"), ("mot", "mAP", "MOT mAP"), ("mot", "rank1", "MOT R1"),
               ("person_search", TEACHER_COSINE, "PS cosT"), ("mot", TEACHER_COSINE, "MOT cosT")]
    columns = [c for c in columns if c[0] in results
               and (c[1] != TEACHER_COSINE or any(c[1] in row for row in results[c[0]].values()))]
    names = list(dict.fromkeys(n for protocol, _, _ in columns for n in results[protocol] if n != CHANCE))
    names.append(CHANCE)
    width = max([len(n) for n in names] + [8])
    lines = [f"{'embedder':<{width}}" + "".join(f"{title:>9}" for _, _, title in columns)]
    for name in names:
        cells = []
        for protocol, metric, _ in columns:
            value = results[protocol].get(name, {}).get(metric, float("nan"))
            cells.append(f"{100 * value:9.1f}" if np.isfinite(value) else f"{'-':>9}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    counts = ", ".join(f"{p}: {results[p][CHANCE]['queries']} queries ({results[p][CHANCE]['skipped']} without a "
                       f"positive)" for p in PROTOCOLS if p in results)
    notes = [counts]
    if any(metric == TEACHER_COSINE for _, metric, _ in columns):
        notes.append("cosT: mean cosine (x100) between an embedder's and the teacher's feature of the same box")
    return "\n".join(lines + notes + _view_table(results.get("person_search", {}), names, width))


def _view_table(rows: Mapping[str, Mapping[str, Any]], names: Sequence[str], width: int) -> list[str]:
    """Person search split by the side the positives show (only when the world's view truth was read)."""
    if not any("mAP_same_view" in row for row in rows.values()):
        return []
    columns = [(f"{m}_{suffix}", f"{title} {m.replace('rank', 'R')}") for suffix, title in
               (("same_view", "same"), ("other_view", "other")) for m in ("mAP", "rank1")]
    lines = ["person search by the side the positive shows (hidden truth: front / back / side), percent:",
             f"{'embedder':<{width}}" + "".join(f"{title:>11}" for _, title in columns)]
    for name in names:
        cells = []
        for key, _ in columns:
            value = rows.get(name, {}).get(key, float("nan"))
            cells.append(f"{100 * value:11.1f}" if np.isfinite(value) else f"{'-':>11}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    chance = rows.get(CHANCE, {})
    lines.append(f"queries with a positive: {chance.get('queries_same_view', 0)} same side, "
                 f"{chance.get('queries_other_view', 0)} another side")
    return lines
