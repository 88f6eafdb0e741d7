"""Kinetics-700 clip lists (``<split>.csv``) and the clip layout on disk.

CSV columns ``label,youtube_id,time_start,time_end,split`` (the test csv has no
``label``); clips are ``<root>/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``
(no label folder when the label is unknown). Real Kinetics has many dead
YouTube links, so missing clips are expected: skip them with ``on_error="skip"``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kdtrack.formats.common import (
    FormatError,
    MissingFileError,
    OnError,
    ReadStats,
    check_on_error,
    file_exists,
    where,
)
from kdtrack.io import atomic_write_text

CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end", "split")  # label is absent in the test csv
CLIP_EXT = ".mp4"


@dataclass
class KineticsClip:
    """One clip: ``time_start``/``time_end`` are seconds into the YouTube video; ``path`` is absolute."""

    label: str  # "" when unknown (test split)
    youtube_id: str
    time_start: int
    time_end: int
    split: str
    path: str


def clip_relpath(split: str, label: str, youtube_id: str, time_start: int, time_end: int) -> str:
    """``<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`` (``<split>/<id>...`` when label is "")."""
    name = f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}{CLIP_EXT}"
    return f"{split}/{label}/{name}" if label else f"{split}/{name}"


def write_kinetics_csv(path: str | os.PathLike, clips: Iterable[KineticsClip]) -> Path:
    """Write the clip list with the real header ``label,youtube_id,time_start,time_end,split``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for clip in clips:
        writer.writerow([clip.label, clip.youtube_id, int(clip.time_start), int(clip.time_end), clip.split])
    return atomic_write_text(path, buffer.getvalue())


def _int_field(value: str, name: str, loc: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FormatError(f"{loc}: {name} must be a number, got {value!r}") from None
    if not number.is_integer() or number < 0:
        raise FormatError(f"{loc}: {name} must be a non-negative integer, got {value!r}")
    return int(number)


def read_kinetics(
    csv_path: str | os.PathLike,
    root: str | os.PathLike,
    *,
    on_error: OnError = "raise",
    check_files: bool = True,
) -> tuple[list[KineticsClip], ReadStats]:
    """Read a Kinetics csv; extra columns (e.g. ``is_cc``) are ignored, missing required ones raise."""
    check_on_error(on_error)
    csv_path, root = Path(csv_path), Path(root)
    stats = ReadStats()
    clips: list[KineticsClip] = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise FormatError(f"{where(csv_path, 1)}: empty file, expected header {','.join(CSV_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise FormatError(f"{where(csv_path, 1)}: missing column(s) {', '.join(missing)} in header {header}")
        column = {name: header.index(name) for name in CSV_COLUMNS if name in header}
        for row in reader:
            line_no = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            loc = where(csv_path, line_no)
            try:
                if len(row) != len(header):
                    raise FormatError(f"{loc}: {len(row)} fields, header has {len(header)}")
                get = lambda name: row[column[name]].strip() if name in column else ""  # noqa: E731
                youtube_id, split, label = get("youtube_id"), get("split"), get("label")
                if not youtube_id or not split:
                    raise FormatError(f"{loc}: empty youtube_id or split")
                start = _int_field(get("time_start"), "time_start", loc)
                end = _int_field(get("time_end"), "time_end", loc)
                if end <= start:
                    raise FormatError(f"{loc}: time_end {end} <= time_start {start}")
            except FormatError as exc:
                stats.skip(exc, on_error)
                continue
            path = root / clip_relpath(split, label, youtube_id, start, end)
            if check_files and not file_exists(path):
                stats.missing(MissingFileError(f"{loc}: clip not found: {path}"), on_error)
                continue
            clips.append(KineticsClip(label, youtube_id, start, end, split, str(path)))
    stats.records = len(clips)
    return clips, stats
