"""Plain records every reader produces and every pipeline consumes.

Boxes are float32 ``(N, 4)`` arrays in pixel ``x1, y1, x2, y2`` (the name says
the format). Per-box fields are indexed together so that a filter never
misaligns boxes, identities and visibilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

POLYGONS_KEY = "polygons"  # ImageRecord.extra: per box, a person's outline polygons ((n, 2) arrays) or None (COCO)
UNKNOWN_ID = -1  # identity not annotated (CrowdHuman, COCO) or an unlabeled person


def _boxes(value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    return arr.reshape(-1, 4)


@dataclass
class ImageRecord:
    """One annotated image, whatever dataset it came from.

    ``ids`` holds dataset identities where they exist (MOT17 track ids,
    person-search pids) and ``UNKNOWN_ID`` elsewhere. ``visibility`` is the
    visible fraction of each person (1.0 when the format has none).
    ``ignore_boxes_xyxy`` are crowd / reflection regions that mask the loss.
    """

    image_path: str
    width: int
    height: int
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    visibility: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    ignore_boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    image_id: str = ""
    source: str = ""  # dataset name: crowdhuman | coco | mot17 | person_search | ...
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific (vboxes, hboxes, frame)

    def __post_init__(self) -> None:
        self.boxes_xyxy = _boxes(self.boxes_xyxy)
        self.ignore_boxes_xyxy = _boxes(self.ignore_boxes_xyxy)
        n = len(self.boxes_xyxy)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if self.ids.size == 0 and n:
            self.ids = np.full((n,), UNKNOWN_ID, np.int64)
        self.visibility = np.asarray(self.visibility, dtype=np.float32).reshape(-1)
        if self.visibility.size == 0 and n:
            self.visibility = np.ones((n,), np.float32)
        if len(self.ids) != n or len(self.visibility) != n:
            raise ValueError(
                f"{self.image_path}: {n} boxes but {len(self.ids)} ids and "
                f"{len(self.visibility)} visibilities"
            )

    @property
    def num_boxes(self) -> int:
        return len(self.boxes_xyxy)

    def select(self, keep: np.ndarray) -> "ImageRecord":
        """A copy keeping the boxes where ``keep`` (bool mask or indices) holds, fields aligned."""
        extra = {
            k: (v[keep] if isinstance(v, np.ndarray) and len(v) == self.num_boxes else v)
            for k, v in self.extra.items()
        }
        return replace(
            self,
            boxes_xyxy=self.boxes_xyxy[keep],
            ids=self.ids[keep],
            visibility=self.visibility[keep],
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (numpy arrays kept) for ``ray.data.from_items``."""
        return {
            "image_path": self.image_path,
            "width": self.width,
            "height": self.height,
            "boxes_xyxy": self.boxes_xyxy,
            "ids": self.ids,
            "visibility": self.visibility,
            "ignore_boxes_xyxy": self.ignore_boxes_xyxy,
            "image_id": self.image_id,
            "source": self.source,
            **({POLYGONS_KEY: self.extra[POLYGONS_KEY]} if POLYGONS_KEY in self.extra else {}),
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "ImageRecord":
        return cls(
            image_path=str(row["image_path"]),
            width=int(row["width"]),
            height=int(row["height"]),
            boxes_xyxy=row["boxes_xyxy"],
            ids=row["ids"],
            visibility=row["visibility"],
            ignore_boxes_xyxy=row["ignore_boxes_xyxy"],
            image_id=str(row.get("image_id", "")),
            source=str(row.get("source", "")),
            extra={POLYGONS_KEY: row[POLYGONS_KEY]} if POLYGONS_KEY in row else {},
        )


@dataclass
class Detections:
    """Per-frame detector output: boxes, scores and embeddings indexed together.

    ``embeddings`` is ``(N, D)`` float32 (``D`` may be 0 when the detector has
    no identity head); ``Detections[mask]`` keeps every field aligned.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        self.boxes_xyxy = _boxes(self.boxes_xyxy)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(self.boxes_xyxy)
        emb = np.asarray(self.embeddings, dtype=np.float32)
        self.embeddings = emb.reshape(n, -1) if emb.size else np.zeros((n, 0), np.float32)
        if len(self.scores) != n:
            raise ValueError(f"{n} boxes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    def __getitem__(self, keep: Any) -> "Detections":
        return Detections(self.boxes_xyxy[keep], self.scores[keep], self.embeddings[keep])

    @classmethod
    def empty(cls, embedding_dim: int = 0) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                   np.zeros((0, embedding_dim), np.float32))
