"""IDF stage 2 samples: two frames of one pseudo-labelled clip as the two views (METHOD.md section 4).

``jobs.pseudo_label`` writes ``labels.parquet`` (one row per detected box: video, frame, box,
pseudo_id; -1 = DBSCAN outlier) and ``videos.parquet`` (a ``kept`` flag per clip: it holds a
trajectory spanning both halves). A sample draws two frames of a kept clip -- "biased": one
from each half, the paper's choice; "random": any two distinct labelled frames -- decodes just
those two by seeking, augments each as a view (``data.augment``), and encodes targets whose
person keys are the pseudo ids: the same person in both frames is one contrastive identity,
outliers (key -1) are left out of the loss. The sample has exactly the layout of a two-view
image sample (``kdtrack.data.dataset.training_sample``), so ``collate`` and the criterion are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from kdtrack.config import Config, ConfigError
from kdtrack.data.dataset import EpochSeededDataset, build_augment, encode_view, swap_background
from kdtrack.formats.video import read_video_frames
from kdtrack.data.transforms import BoxAugment

KINETICS_DIR = "kinetics"
VIDEO_EXT = ".mp4"


@dataclass
class ClipLabels:
    """The pseudo-labelled detections of one clip, by frame (1-based)."""

    video: str  # path relative to the Kinetics root, without extension
    path: str  # the clip file
    num_frames: int
    frames: np.ndarray  # (F,) sorted frames holding at least one box with a pseudo id
    boxes: dict[int, np.ndarray]  # frame -> (n, 4) float32 original pixels (outliers included)
    ids: dict[int, np.ndarray]  # frame -> (n,) int64 pseudo ids, -1 = outlier

    def pair(self, rng: np.random.Generator, sampling: str) -> tuple[int, int]:
        """Two distinct frames: ``biased`` one from each half (first half <= num_frames // 2), else any two."""
        if sampling == "biased":
            half = max(1, self.num_frames // 2)
            first, second = self.frames[self.frames <= half], self.frames[self.frames > half]
            if len(first) and len(second):
                return int(rng.choice(first)), int(rng.choice(second))
        if len(self.frames) < 2:
            raise ValueError(f"{self.video}: fewer than two labelled frames")
        a, b = rng.choice(self.frames, size=2, replace=False)
        return int(a), int(b)


VIDEOS_FILE = "videos.parquet"  # beside labels.parquet: which clips jobs.pseudo_label kept


def read_clip_labels(labels_path: str | Path, data_root: str | Path) -> list[ClipLabels]:
    """Kept clips of a ``jobs.pseudo_label`` output (``labels.parquet`` + ``videos.parquet`` beside it) with
    at least two labelled frames, their files under ``<data_root>/kinetics``; a clip file that is
    missing is an error naming it."""
    import pyarrow.parquet as pq

    labels_path = Path(labels_path)
    videos_path = labels_path.with_name(VIDEOS_FILE)
    for path in (labels_path, videos_path):
        if not path.is_file():
            raise ConfigError(f"data.pseudo_labels: {path} not found (run jobs.pseudo_label first)")
    videos = pq.read_table(videos_path, columns=["video", "frames", "kept"]).to_pydict()
    kept = {v: int(n) for v, n, k in zip(videos["video"], videos["frames"], videos["kept"]) if k}
    table = pq.read_table(labels_path).to_pandas()
    required = {"video", "frame", "x1", "y1", "x2", "y2", "pseudo_id"}
    if not required <= set(table.columns):
        raise ConfigError(f"{labels_path}: columns {sorted(table.columns)} lack {sorted(required - set(table.columns))}")
    root = Path(data_root) / KINETICS_DIR
    clips = []
    for video, rows in table[table["video"].isin(list(kept))].groupby("video", sort=True):
        path = root / f"{video}{VIDEO_EXT}"
        if not path.is_file():
            raise FileNotFoundError(f"{labels_path}: clip of video '{video}' not found at {path}")
        boxes, ids = {}, {}
        for frame, group in rows.groupby("frame"):
            boxes[int(frame)] = group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32)
            ids[int(frame)] = group["pseudo_id"].to_numpy(np.int64)
        frames = np.array(sorted(f for f in ids if (ids[f] >= 0).any()), np.int64)
        if len(frames) >= 2:
            clips.append(ClipLabels(str(video), str(path), kept[video], frames, boxes, ids))
    return clips


def pseudo_id_classes(clips: Sequence[ClipLabels]) -> tuple[list[ClipLabels], int]:
    """``(clips with class ids, number of classes)``: every pseudo id of ``clips`` renumbered ``0..C-1`` in
    first-seen order, outliers kept at -1. ``train.recipe=video_classify`` classifies the pseudo-identities:
    ids of clips ``jobs.pseudo_label`` did not keep would be classes no sample ever shows, and FairMOT's
    embedding scale ``sqrt(2) ln(C - 1)`` counts the classes."""
    from dataclasses import replace

    classes: dict[int, int] = {}
    out = []
    for clip in clips:
        ids = {}
        for frame in sorted(clip.ids):
            ids[frame] = np.array([classes.setdefault(int(i), len(classes)) if i >= 0 else -1
                                   for i in clip.ids[frame].tolist()], np.int64)
        out.append(replace(clip, ids=ids))
    return out, len(classes)


def video_pair_sample(clip: ClipLabels, cfg: Config, rng: np.random.Generator, *,
                      augment: BoxAugment | None = None, partners: Sequence[ClipLabels] = ()) -> dict[str, np.ndarray]:
    """Two frames of ``clip`` as the two views (keys and shapes of a two-view ``training_sample``).

    With ``data.background_swap`` > 0 and ``partners`` given, each view (or the second alone, with
    ``data.background_swap_views: last``) has, with that probability, its people pasted onto a
    labelled frame of a clip drawn from ``partners`` (``kdtrack.data.dataset.swap_background``): two frames
    of one clip share their scene and often the neighbours around a person, the shortcut the swap
    takes away in stage 1."""
    augment = augment or build_augment(cfg)
    frame_a, frame_b = clip.pair(rng, cfg.data.pair_sampling)
    images = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in read_video_frames(clip.path, [frame_a - 1, frame_b - 1])]
    view_rngs = rng.spawn(2)
    sides = cfg.data.multiscale_short_sides
    short_side = int(sides[int(rng.integers(len(sides)))]) if sides else None
    swappable = range(2) if cfg.data.background_swap_views == "all" else range(1, 2)

    def draw_partner(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        partner = partners[int(rng.integers(len(partners)))]
        frame = int(rng.choice(partner.frames))
        background = cv2.cvtColor(read_video_frames(partner.path, [frame - 1])[0], cv2.COLOR_BGR2RGB)
        return background, partner.boxes[frame]  # its people (outliers too) become ignore regions

    per_view = []
    for v, (image, frame, view_rng) in enumerate(zip(images, (frame_a, frame_b), view_rngs)):
        boxes, ids = clip.boxes[frame], clip.ids[frame]
        target = {"boxes_xyxy": boxes, "box_index": np.arange(len(boxes), dtype=np.int64), "ids": ids,
                  "ignore_boxes_xyxy": np.zeros((0, 4), np.float32)}
        view = swap_background(augment(image, target, view_rng), view_rng, cfg,
                               draw_partner if partners and v in swappable else None)
        per_view.append(encode_view(*view, f"{clip.path}#frame={frame}", cfg, ids, None, short_side))
    return {k: np.stack([v[k] for v in per_view]) for k in per_view[0]}


class VideoPairDataset(EpochSeededDataset):
    """Kept clips; each epoch draws a new frame pair and new augmentations per clip."""

    def __init__(self, clips: Sequence[ClipLabels], cfg: Config) -> None:
        super().__init__(clips, cfg)

    @classmethod
    def from_dicts(cls, clips: Sequence[dict[str, Any]], cfg: Config) -> "VideoPairDataset":
        """From the clips as ``dataclasses.asdict`` wrote them (what the driver ships to the workers)."""
        return cls([ClipLabels(**clip) for clip in clips], cfg)

    @property
    def clips(self) -> list[ClipLabels]:
        return self.items

    def sample(self, item: ClipLabels, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return video_pair_sample(item, self.cfg, rng, augment=self.augment, partners=self.items)
