"""Pieces every dataset reader shares: errors, read statistics, box sanitising.

Every reader takes ``on_error`` ("raise" | "skip"): a malformed record raises a
:class:`FormatError` naming the file and line / record index, or is skipped and
counted in :class:`ReadStats` so that one broken line in a 100k-image dataset
does not kill a training run silently *or* loudly, as the user chooses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from kdtrack.boxes import clip_boxes_xyxy

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES = ("raise", "skip")
MAX_MESSAGES = 20  # problems kept verbatim in ReadStats.messages (the rest are only counted)


class FormatError(ValueError):
    """A malformed annotation; the message starts with ``<file>:<line or record>:``."""


class MissingFileError(FormatError, FileNotFoundError):
    """An annotation points at an image / clip that is not on disk (message names both)."""


def where(path: str | os.PathLike, location: int | str | None = None) -> str:
    """``"<file name>:<location>"`` prefix for error messages (file name only, as editors show it)."""
    name = os.fspath(path)
    return f"{name}:{location}" if location is not None else name


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


@dataclass
class ReadStats:
    """What a reader kept, repaired and threw away; logged next to every training run."""

    records: int = 0  # records returned
    skipped_records: int = 0  # malformed records skipped under on_error="skip"
    filtered_records: int = 0  # valid records left out by design (COCO image without a person, Market junk)
    boxes_clipped: int = 0  # boxes partly outside the image, clipped to it
    boxes_dropped: int = 0  # boxes with non-positive size before or after clipping
    missing_images: int = 0  # image / video files that do not exist (skipped)
    messages: list[str] = field(default_factory=list)  # first MAX_MESSAGES problems

    def note(self, message: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def merge(self, other: "ReadStats") -> "ReadStats":
        """Add ``other``'s counts into ``self`` (messages capped) and return ``self``."""
        for f in fields(self):
            if f.name != "messages":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for message in other.messages:
            self.note(message)
        return self

    def skip(self, error: Exception, on_error: OnError) -> None:
        """Raise ``error`` under "raise", else count a skipped record and keep its message."""
        if on_error == "raise":
            raise error
        self.skipped_records += 1
        self.note(str(error))

    def missing(self, error: Exception, on_error: OnError) -> None:
        """Like :meth:`skip` for a record whose image / clip file is missing."""
        if on_error == "raise":
            raise error
        self.missing_images += 1
        self.note(str(error))


def sanitize_boxes_xyxy(
    boxes_xyxy: np.ndarray, width: float, height: float, stats: ReadStats
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` pixel boxes to the image and find the ones worth keeping.

    Returns ``(clipped (N, 4) float32, keep (N,) bool)``; ``keep`` is False for
    boxes whose width or height is non-positive before or after clipping (also
    non-finite boxes). Apply ``keep`` to every per-box array so they stay aligned.
    Counts go to ``stats`` (a box that is dropped is not also counted as clipped).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    positive = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    clipped = clip_boxes_xyxy(np.where(finite[:, None], boxes, 0.0), width, height)
    keep = positive & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(axis=1)
    stats.boxes_clipped += int((changed & keep).sum())
    stats.boxes_dropped += int((~keep).sum())
    return clipped, keep


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header only (PIL opens lazily: no decode)."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return int(width), int(height)


def file_exists(path: str | os.PathLike) -> bool:
    return Path(path).is_file()
