"""Market-1501 style re-ID crops: ``<split>/<pid:04d>_c<cam>s<seq>_<frame:06d>_<k:02d>.jpg``.

pid ``-1`` marks junk crops (written ``-1_...``), pid ``0`` distractors; both
only appear in ``bounding_box_test``. Standard evaluation drops junk and keeps
distractors in the gallery, hence the defaults of :func:`read_market1501`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kdtrack.formats.common import FormatError, MissingFileError, OnError, ReadStats, check_on_error

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
JUNK_PID = -1
DISTRACTOR_PID = 0
CROP_EXT = ".jpg"
_NAME = re.compile(r"^(-1|\d{4})_c(\d+)s(\d+)_(\d{6})_(\d{2})\.jpg$")


@dataclass
class ReidCrop:
    """One person crop; ``camera`` and ``sequence`` as in the name (1-based in Market-1501)."""

    path: str
    pid: int
    camera: int
    sequence: int
    frame: int
    index: int  # k: which detection of that frame

    @property
    def is_junk(self) -> bool:
        return self.pid == JUNK_PID

    @property
    def is_distractor(self) -> bool:
        return self.pid == DISTRACTOR_PID


def crop_name(pid: int, cam: int, seq: int, frame: int, k: int) -> str:
    """``"<pid:04d>_c<cam>s<seq>_<frame:06d>_<k:02d>.jpg"``; junk pid -1 is written ``-1`` as in Market."""
    pid_text = "-1" if pid == JUNK_PID else f"{int(pid):04d}"
    if pid < JUNK_PID or int(pid) > 9999 or not (0 <= k <= 99) or not (0 <= frame <= 999999):
        raise ValueError(f"crop name fields out of range: pid={pid} frame={frame} k={k}")
    return f"{pid_text}_c{int(cam)}s{int(seq)}_{int(frame):06d}_{int(k):02d}{CROP_EXT}"


def parse_crop_name(name: str | os.PathLike) -> ReidCrop:
    """Parse a crop file name (a path is fine; the folder is kept in ``path``)."""
    match = _NAME.match(Path(name).name)
    if match is None:
        raise FormatError(f"{name}: not a Market-1501 crop name <pid:04d>_c<cam>s<seq>_<frame:06d>_<k:02d>.jpg")
    pid, cam, seq, frame, k = (int(g) for g in match.groups())
    return ReidCrop(os.fspath(name), pid, cam, seq, frame, k)


def read_market1501(
    root: str | os.PathLike,
    split: str,
    *,
    keep_junk: bool = False,
    keep_distractors: bool = True,
    on_error: OnError = "raise",
) -> tuple[list[ReidCrop], ReadStats]:
    """Crops of ``<root>/<split>`` sorted by name; non-``.jpg`` files (``Thumbs.db``) are ignored.

    Junk / distractor crops left out by the options count as ``filtered_records``.
    """
    check_on_error(on_error)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: split folder not found")
    stats = ReadStats()
    crops: list[ReidCrop] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != CROP_EXT or not path.is_file():
            continue
        try:
            crop = parse_crop_name(path)
        except FormatError as exc:
            stats.skip(exc, on_error)
            continue
        if (crop.is_junk and not keep_junk) or (crop.is_distractor and not keep_distractors):
            stats.filtered_records += 1
            continue
        crops.append(crop)
    stats.records = len(crops)
    return crops, stats
