"""Run a trained student over frames: letterbox -> network -> decode -> tracker.

This is the model-driven half of MOT evaluation (``jobs.evaluate mot``) and of
person search. No Ray here: the job runs a pool of actors that each build the
network once (:func:`student_from_state`) and call :func:`track_sequence` (one
sequence) or :func:`detect_and_embed_images` (a batch of person-search images).
Network time (pre-processing, forward, decode) and association time
(``Tracker.update``) are measured separately, as the papers report them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from kdtrack.checkpoint import load_checkpoint
from kdtrack.config import Config, TeacherConfig
from kdtrack.data.dataset import read_image_rgb
from kdtrack.decode import decode_detections
from kdtrack.engine import amp_enabled
from kdtrack.formats.mot import SeqInfo, read_seqinfo, split_frames
from kdtrack.data.letterbox import LetterboxTransform, letterbox
from kdtrack.models import build_student, build_teacher, freeze_teacher, teacher_embeddings
from kdtrack.readout import read_at_boxes
from kdtrack.recipes import recipe_of
from kdtrack.structures import Detections
from kdtrack.tracker import Tracker, TrackerConfig

# (image RGB uint8 (H, W, 3), boxes_xyxy (N, 4) in its pixels) -> (N, D) L2-normalised embeddings
EmbedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def student_from_state(model_state: Mapping[str, Any], cfg: Config, device: torch.device | str = "cpu") -> nn.Module:
    """The student of ``cfg.model`` with ``model_state`` (a checkpoint's ``"model"``), in eval mode on ``device``."""
    model = build_student(replace(cfg.model, pretrained=""))
    model.load_state_dict(model_state)
    return model.to(device).eval()


def load_student(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """The student of a kdtrack checkpoint, in eval mode on ``device``, with its config."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg: Config = state["config"]
    return student_from_state(state["model"], cfg, device), cfg


def teacher_config_of(checkpoint: str | Path, fallback: TeacherConfig) -> TeacherConfig:
    """The architecture and crop size of a teacher checkpoint: a kdtrack training checkpoint
    (``train.recipe=teacher``) carries its own ``teacher`` section, which wins over the evaluation's
    config (a preset's teacher may be another size); a bare state dict or a FastReID file uses ``fallback``."""
    try:
        state = load_checkpoint(checkpoint, map_location="cpu")
    except ValueError:  # not a kdtrack training checkpoint
        return fallback
    return state["config"].teacher if not recipe_of(state["config"]).student else fallback


def load_teacher(teacher_cfg: TeacherConfig, checkpoint: str | Path,
                 device: torch.device | str = "cpu") -> nn.Module:
    """A frozen Re-ID teacher from a local checkpoint (two-step tracking, query embedding), built as
    :func:`teacher_config_of` says."""
    teacher_cfg = teacher_config_of(checkpoint, teacher_cfg)
    teacher = build_teacher(replace(teacher_cfg, checkpoint=str(checkpoint)))  # strict; a saved classifier is dropped
    return freeze_teacher(teacher.to(device))


def teacher_embed_fn(teacher: nn.Module, crop_size: tuple[int, int], device: torch.device,
                     canvas: tuple[int, int] | None = None) -> EmbedFn:
    """Embed boxes with the teacher on crops of the original frame (KDMOT 'two-step'), L2-normalised.

    ``canvas`` ``(width, height)``: crop from the frame letterboxed to that size instead, as KD cuts its
    targets from the student's input (``kdtrack.data.teacher_store.teacher_canvas``), which shows what the
    student's input resolution costs the teacher.
    """

    def embed(image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        if canvas is None:
            image = torch.from_numpy(image_rgb).permute(2, 0, 1)[None].float().div_(255).to(device)
        else:
            letterboxed, tf = letterbox(image_rgb, *canvas)
            image = torch.from_numpy(letterboxed)[None].to(device)
            boxes_xyxy = tf.boxes_to_letterbox(boxes_xyxy).astype(np.float32)
        boxes = torch.as_tensor(boxes_xyxy, device=device)
        (emb,) = teacher_embeddings(teacher, image, [boxes], out_size=crop_size)
        return torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy()

    return embed


def numeric_path(cfg: Config, device: torch.device | str) -> str:
    """How a student runs on ``device``: ``cuda/fp16-autocast/deform_conv2d``, ``cpu/fp32/grid_sample``, ...
    (``train.amp`` autocasts on CUDA only; the deformable kernel per ``kdtrack.models.layers.deform_kernel``).
    Two paths score the same frames a little differently, so evaluations report the paths that ran."""
    from kdtrack.models.layers import deform_kernel

    device = torch.device(device)
    parts = [device.type, "fp16-autocast" if amp_enabled(cfg.train.amp, device) else "fp32"]
    if cfg.model.deformable:
        parts.append(deform_kernel(device.type))
    return "/".join(parts)


@dataclass
class Detector:
    """Student forward + decode on single frames; boxes in original-image pixels."""

    model: nn.Module
    cfg: Config
    device: torch.device
    score_threshold: float | None = None  # None: cfg.decode.score_threshold

    @property
    def numeric_path(self) -> str:
        return numeric_path(self.cfg, self.device)

    def preprocess(self, image_rgb: np.ndarray) -> tuple[torch.Tensor, LetterboxTransform]:
        canvas, tf = letterbox(image_rgb, self.cfg.model.input_width, self.cfg.model.input_height)
        return torch.from_numpy(canvas)[None].to(self.device), tf

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, enabled=amp_enabled(self.cfg.train.amp, self.device)):
            return self.model(batch)

    def detect_batch(
        self, images_rgb: Sequence[np.ndarray]
    ) -> tuple[list[Detections], dict[str, torch.Tensor], list[LetterboxTransform]]:
        """Several frames in one forward pass (each letterboxed to the network input): per-image
        detections in original pixels, the batched head outputs ``(B, C, h, w)`` and the transforms."""
        canvases, transforms = zip(*(letterbox(im, self.cfg.model.input_width, self.cfg.model.input_height)
                                     for im in images_rgb))
        batch = torch.from_numpy(np.stack(canvases)).to(self.device)
        outputs = self.forward(batch)
        dets = decode_detections(
            outputs, self.cfg.decode, down_ratio=self.cfg.model.down_ratio, transforms=list(transforms),
            normalize_embeddings=True, score_threshold=self.score_threshold, id_readout=self.cfg.model.id_readout,
        )
        return dets, outputs, list(transforms)

    def __call__(self, image_rgb: np.ndarray) -> tuple[Detections, dict[str, torch.Tensor], LetterboxTransform]:
        batch, tf = self.preprocess(image_rgb)
        outputs = self.forward(batch)
        (dets,) = decode_detections(
            outputs, self.cfg.decode, down_ratio=self.cfg.model.down_ratio, transforms=[tf],
            normalize_embeddings=True, score_threshold=self.score_threshold, id_readout=self.cfg.model.id_readout,
        )
        return dets, outputs, tf


@dataclass
class SequenceTracking:
    """Tracker output of one sequence in MOTChallenge rows and the time it took."""

    name: str
    rows: np.ndarray  # (N, 10) frame, id, x, y, w, h, score, -1, -1, -1 (frames of the split, from 1)
    num_frames: int
    network_seconds: float
    association_seconds: float
    num_detections: int
    rendered: dict[int, np.ndarray] = field(default_factory=dict)  # split frame -> BGR image with tracks


def draw_tracks(image_rgb: np.ndarray, boxes_xyxy: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
    """A BGR copy of the frame with each track's box and id in a colour fixed by the id."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    for box, tid in zip(np.asarray(boxes_xyxy).astype(int), np.asarray(track_ids)):
        rng = np.random.default_rng(int(tid))
        colour = tuple(int(c) for c in rng.integers(64, 256, 3))
        cv2.rectangle(out, (box[0], box[1]), (box[2], box[3]), colour, 2)
        cv2.putText(out, str(int(tid)), (box[0], max(box[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, colour, 1, cv2.LINE_AA)
    return out


def track_sequence(
    detector: Detector,
    seq_dir: str | Path,
    tracker_cfg: TrackerConfig,
    *,
    split: str = "all",
    embed_fn: EmbedFn | None = None,
    render_frames: Sequence[int] = (),
) -> SequenceTracking:
    """Track every frame of a MOT17-style sequence (``split``: all | train_half | val_half).

    Output frame numbers count from 1 within the split (the half-val convention).
    ``embed_fn`` replaces the student's identity head (two-step mode).
    ``render_frames`` (split frame numbers) come back drawn, for MLflow.
    """
    seq_dir = Path(seq_dir)
    info: SeqInfo = read_seqinfo(seq_dir)
    frames = list(split_frames(info.seq_length, split))
    tracker = Tracker(tracker_cfg, frame_rate=info.frame_rate)
    rows: list[np.ndarray] = []
    network_s = association_s = 0.0
    num_dets = 0
    rendered: dict[int, np.ndarray] = {}
    for out_frame, frame in enumerate(frames, start=1):
        image = read_image_rgb(info.image_path(seq_dir, frame))
        t0 = time.perf_counter()
        dets, _, _ = detector(image)
        if detector.device.type == "cuda":
            torch.cuda.synchronize()
        embeddings = dets.embeddings
        if embed_fn is not None and tracker.uses_embeddings:
            embeddings = embed_fn(image, dets.boxes_xyxy)
        t1 = time.perf_counter()
        tracks = tracker.update(dets.boxes_xyxy, dets.scores, embeddings)
        t2 = time.perf_counter()
        network_s += t1 - t0
        association_s += t2 - t1
        num_dets += len(dets)
        if len(tracks):
            xywh = np.concatenate([tracks.boxes_xyxy[:, :2], tracks.boxes_xyxy[:, 2:] - tracks.boxes_xyxy[:, :2]], 1)
            block = np.full((len(tracks), 10), -1.0)
            block[:, 0] = out_frame
            block[:, 1] = tracks.track_ids
            block[:, 2:6] = xywh
            block[:, 6] = tracks.scores
            rows.append(block)
        if out_frame in render_frames:
            rendered[out_frame] = draw_tracks(image, tracks.boxes_xyxy, tracks.track_ids)
    result = np.concatenate(rows) if rows else np.zeros((0, 10))
    return SequenceTracking(info.name, result, len(frames), network_s, association_s, num_dets, rendered)


def student_embedding_at_boxes(detector: Detector, image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(N, D)`` L2-normalised student embeddings read at given boxes (``model.id_readout``).

    How a query person is embedded by the student alone (no detector match
    needed): the identity map read as in training.
    """
    batch, tf = detector.preprocess(image_rgb)
    emb_map = detector.forward(batch)["embedding"][0]
    return embeddings_at_boxes(emb_map, tf, boxes_xyxy, detector.cfg.model.down_ratio, detector.cfg.model.id_readout)


def embeddings_at_boxes(emb_map: torch.Tensor, tf: LetterboxTransform, boxes_xyxy: np.ndarray,
                        down_ratio: int, id_readout: str = "cell") -> np.ndarray:
    """``(N, D)`` L2-normalised identity vectors of an identity map ``(k, h, w)`` at ``boxes_xyxy``
    (original-image pixels, mapped through the letterbox ``tf``): the centre cell, or ``id_readout``'s
    region (``kdtrack.readout``)."""
    boxes = torch.as_tensor(tf.boxes_to_letterbox(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)),
                            device=emb_map.device)
    emb = read_at_boxes(emb_map[None], boxes, torch.zeros(len(boxes), dtype=torch.long, device=emb_map.device),
                        id_readout, down_ratio)
    return torch.nn.functional.normalize(emb, dim=1).cpu().numpy()


def detect_images(detector: Detector, image_paths: Sequence[str | Path],
                  embed_fn: EmbedFn | None = None) -> list[Detections]:
    """Detections (boxes, scores, L2-normalised embeddings) for each image, original pixels."""
    out = []
    for path in image_paths:
        image = read_image_rgb(path)
        dets, _, _ = detector(image)
        if embed_fn is not None:
            dets = Detections(dets.boxes_xyxy, dets.scores, embed_fn(image, dets.boxes_xyxy))
        out.append(dets)
    return out


def detect_and_embed_images(
    detector: Detector,
    image_paths: Sequence[str | Path],
    query_boxes_xyxy: Sequence[np.ndarray] | None = None,
    *,
    embed_fn: EmbedFn | None = None,
    batch_size: int = 8,
    query_embed_fn: EmbedFn | None = None,
) -> list[tuple[Detections, np.ndarray]]:
    """Person search's model pass: per image, its detections and the embeddings of the query boxes in it.

    ``query_boxes_xyxy[i]`` ``(Q_i, 4)`` are query persons drawn in image ``i`` (original pixels; may
    be empty). One forward per image, ``batch_size`` images at a time, serves both: the gallery
    detections and the student's identity map read at each query box centre — the same numbers as
    :func:`detect_images` and :func:`student_embedding_at_boxes`, which each run their own forward.
    With ``embed_fn`` (the teacher) detections and query boxes are embedded by it instead; with
    ``query_embed_fn`` only the query boxes are (KDMOT's person search: the teacher embeds the query crop,
    the student the gallery).
    Returns ``[(Detections, (Q_i, k) query embeddings)]`` in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if query_boxes_xyxy is None:
        query_boxes_xyxy = [np.zeros((0, 4), np.float32)] * len(image_paths)
    if len(query_boxes_xyxy) != len(image_paths):
        raise ValueError(f"{len(image_paths)} images but {len(query_boxes_xyxy)} query box arrays")
    down_ratio = detector.cfg.model.down_ratio
    out: list[tuple[Detections, np.ndarray]] = []
    for start in range(0, len(image_paths), batch_size):
        paths = image_paths[start:start + batch_size]
        images = [read_image_rgb(p) for p in paths]
        dets, outputs, transforms = detector.detect_batch(images)
        for i, (image, det, tf) in enumerate(zip(images, dets, transforms)):
            queries = np.asarray(query_boxes_xyxy[start + i], np.float32).reshape(-1, 4)
            if embed_fn is not None:
                det = Detections(det.boxes_xyxy, det.scores, embed_fn(image, det.boxes_xyxy))
                query_emb = embed_fn(image, queries) if len(queries) else np.zeros((0, det.embeddings.shape[1]),
                                                                                    np.float32)
            elif query_embed_fn is not None:
                query_emb = (query_embed_fn(image, queries) if len(queries)
                             else np.zeros((0, det.embeddings.shape[1]), np.float32))
            else:
                query_emb = embeddings_at_boxes(outputs["embedding"][i], tf, queries, down_ratio,
                                                detector.cfg.model.id_readout)
            out.append((det, query_emb))
    return out
