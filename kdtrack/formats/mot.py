"""MOTChallenge (MOT17) sequences: ``seqinfo.ini``, ``gt/gt.txt``, ``det/det.txt``, tracker output.

Text rows, comma separated, boxes ``x, y, w, h`` in pixels (top-left origin as
in the files; MOTChallenge's 1-based pixel convention is kept as is):

- gt:      ``frame, id, x, y, w, h, consider, class, visibility`` (9 columns)
- det:     ``frame, -1, x, y, w, h, score, -1, -1, -1`` (10 columns)
- results: ``frame, id, x, y, w, h, score, -1, -1, -1`` (10 columns)

Half split (CenterTrack / ByteTrack): train-half = frames ``1 .. N//2+1``,
val-half = frames ``N//2+2 .. N``, val frames renumbered from 1.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from kdtrack.boxes import xywh_to_xyxy
from kdtrack.formats.common import (
    FormatError,
    MissingFileError,
    OnError,
    ReadStats,
    check_on_error,
    file_exists,
    sanitize_boxes_xyxy,
    where,
)
from kdtrack.io import atomic_write_text
from kdtrack.structures import ImageRecord

GT_COLUMNS = 9
DET_COLUMNS = 10
RESULT_COLUMNS = 10
PEDESTRIAN_CLASS = 1
DISTRACTOR_CLASSES = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
SEQINFO = "seqinfo.ini"
SEQINFO_SECTION = "Sequence"
# column indices in gt rows
FRAME, TRACK_ID, X, Y, W, H, CONSIDER, CLASS, VISIBILITY = range(GT_COLUMNS)
SPLITS = ("all", "train_half", "val_half")
DETECTOR_SUFFIXES = ("DPM", "FRCNN", "SDP")  # MOT17 ships each sequence once per public detector (same frames and gt)
Split = Literal["all", "train_half", "val_half"]


@dataclass
class SeqInfo:
    """``seqinfo.ini`` content: sizes in pixels, ``frame_rate`` in frames per second."""

    name: str
    frame_rate: float
    seq_length: int
    im_width: int
    im_height: int
    im_dir: str = "img1"
    im_ext: str = ".jpg"

    def image_path(self, seq_dir: str | os.PathLike, frame: int) -> Path:
        """Path of the 1-based ``frame`` (``img1/000001.jpg``)."""
        return Path(seq_dir) / self.im_dir / f"{int(frame):06d}{self.im_ext}"


_SEQINFO_KEYS = {  # ini key -> (field, type)
    "name": ("name", str),
    "imDir": ("im_dir", str),
    "frameRate": ("frame_rate", float),
    "seqLength": ("seq_length", int),
    "imWidth": ("im_width", int),
    "imHeight": ("im_height", int),
    "imExt": ("im_ext", str),
}


def _fmt_number(value: float) -> str:
    """Integers without a decimal point, other values to 6 decimals (MOT17 visibilities use 5)."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def write_seqinfo(seq_dir: str | os.PathLike, info: SeqInfo) -> Path:
    """Write ``<seq_dir>/seqinfo.ini`` with the MOTChallenge key names and order."""
    frame_rate = _fmt_number(info.frame_rate)
    text = (
        f"[{SEQINFO_SECTION}]\n"
        f"name={info.name}\n"
        f"imDir={info.im_dir}\n"
        f"frameRate={frame_rate}\n"
        f"seqLength={int(info.seq_length)}\n"
        f"imWidth={int(info.im_width)}\n"
        f"imHeight={int(info.im_height)}\n"
        f"imExt={info.im_ext}\n"
        "\n"
    )
    return atomic_write_text(Path(seq_dir) / SEQINFO, text)


def read_seqinfo(seq_dir: str | os.PathLike) -> SeqInfo:
    """Parse ``<seq_dir>/seqinfo.ini``; a missing section/key or bad number names the file and key."""
    path = Path(seq_dir) / SEQINFO
    if not path.is_file():
        raise MissingFileError(f"{path}: not found")
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are camelCase
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise FormatError(f"{path}: {exc}") from None
    if not parser.has_section(SEQINFO_SECTION):
        raise FormatError(f"{path}: missing section [{SEQINFO_SECTION}]")
    section = parser[SEQINFO_SECTION]
    values = {}
    for key, (name, kind) in _SEQINFO_KEYS.items():
        if key not in section:
            if name in ("im_dir", "im_ext"):
                continue  # dataclass defaults (img1, .jpg)
            raise FormatError(f"{path}: [{SEQINFO_SECTION}] missing key '{key}'")
        try:
            values[name] = kind(float(section[key])) if kind is int else kind(section[key])
        except ValueError:
            raise FormatError(f"{path}: [{SEQINFO_SECTION}] {key}={section[key]!r} is not a {kind.__name__}") from None
    return SeqInfo(**values)


def _write_rows(path: str | os.PathLike, rows: np.ndarray, columns: int, integer_columns: tuple[int, ...]) -> Path:
    arr = np.asarray(rows, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, columns)
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise ValueError(f"{path}: rows must be (N, {columns}), got {arr.shape}")
    ints = arr[:, list(integer_columns)]
    if not np.all(ints == np.round(ints)):
        raise ValueError(f"{path}: columns {integer_columns} must hold integers")
    lines = [",".join(_fmt_number(v) for v in row) for row in arr]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_gt(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """``(N, 9)`` rows frame,id,x,y,w,h,consider,class,visibility -> ``gt.txt``."""
    return _write_rows(path, rows, GT_COLUMNS, (FRAME, TRACK_ID, CONSIDER, CLASS))


def write_det(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """``(N, 10)`` rows frame,-1,x,y,w,h,score,-1,-1,-1 -> ``det.txt``."""
    return _write_rows(path, rows, DET_COLUMNS, (FRAME,))


def write_results(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """``(N, 10)`` tracker rows frame,id,x,y,w,h,score,-1,-1,-1 -> ``<SEQ>.txt``."""
    return _write_rows(path, rows, RESULT_COLUMNS, (FRAME, TRACK_ID))


def _read_rows(
    path: str | os.PathLike, columns: int, on_error: OnError, stats: ReadStats | None
) -> np.ndarray:
    """Parse a comma-separated MOT text file into ``(N, columns)`` float64; errors name ``file:line``."""
    check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: not found")
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            cells = text.split(",")
            try:
                if len(cells) != columns:
                    raise FormatError(f"{where(path, line_no)}: {len(cells)} columns, expected {columns}")
                try:
                    values = [float(c) for c in cells]
                except ValueError:
                    raise FormatError(f"{where(path, line_no)}: non-numeric value in {text!r}") from None
                if not all(np.isfinite(values)):
                    raise FormatError(f"{where(path, line_no)}: non-finite value in {text!r}")
                if values[FRAME] < 1 or not float(values[FRAME]).is_integer():
                    raise FormatError(f"{where(path, line_no)}: frame must be an integer >= 1, got {cells[0]!r}")
            except FormatError as exc:
                stats.skip(exc, on_error)
                continue
            rows.append(values)
    stats.records += len(rows)
    return np.asarray(rows, dtype=np.float64).reshape(-1, columns)


def read_gt(path: str | os.PathLike, *, on_error: OnError = "raise", stats: ReadStats | None = None) -> np.ndarray:
    """``gt.txt`` -> ``(N, 9)`` float64 rows (see module docstring)."""
    return _read_rows(path, GT_COLUMNS, on_error, stats)


def read_det(path: str | os.PathLike, *, on_error: OnError = "raise", stats: ReadStats | None = None) -> np.ndarray:
    """``det.txt`` -> ``(N, 10)`` float64 rows."""
    return _read_rows(path, DET_COLUMNS, on_error, stats)


def read_results(path: str | os.PathLike, *, on_error: OnError = "raise", stats: ReadStats | None = None) -> np.ndarray:
    """Tracker output ``<SEQ>.txt`` -> ``(N, 10)`` float64 rows."""
    return _read_rows(path, RESULT_COLUMNS, on_error, stats)


def half_split(seq_length: int) -> tuple[range, range]:
    """``(train frames 1..N//2+1, val frames N//2+2..N)``, 1-based, as CenterTrack/ByteTrack."""
    n = int(seq_length)
    if n < 2:
        raise ValueError(f"half split needs at least 2 frames, got {n}")
    last_train = n // 2 + 1
    return range(1, last_train + 1), range(last_train + 1, n + 1)


def split_frames(seq_length: int, split: Split) -> range:
    """Original frame numbers of ``split`` ("all", "train_half", "val_half")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return range(1, int(seq_length) + 1)
    train, val = half_split(seq_length)
    return train if split == "train_half" else val


def slice_rows_half(rows: np.ndarray, seq_length: int, split: Split) -> np.ndarray:
    """Rows (gt, det or results; frame in column 0) of ``split``, frames renumbered from 1."""
    arr = np.asarray(rows, dtype=np.float64)
    frames = split_frames(seq_length, split)
    keep = (arr[:, FRAME] >= frames.start) & (arr[:, FRAME] < frames.stop)
    out = arr[keep].copy()
    out[:, FRAME] -= frames.start - 1
    return out


def list_sequences(root: str | os.PathLike, *, detector: str | None = None) -> list[Path]:
    """Sequence folders under ``root`` (those holding ``seqinfo.ini``), sorted.

    ``detector`` keeps MOT17 copies whose name ends with ``-<detector>`` (e.g. "FRCNN").
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: not a directory")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and (p / SEQINFO).is_file())
    if detector is not None:
        seqs = [p for p in seqs if p.name.endswith(f"-{detector}")]
    return seqs


def sequence_base_name(name: str) -> str:
    """``MOT17-02-FRCNN`` -> ``MOT17-02``; a name without a MOT17 detector suffix is its own base."""
    base, _, suffix = name.rpartition("-")
    return base if base and suffix in DETECTOR_SUFFIXES else name


def dedupe_detector_copies(seq_dirs: Sequence[str | os.PathLike], detector: str | None = None) -> list[Path]:
    """One folder per sequence out of MOT17's per-detector copies, in order of first appearance.

    A real ``MOT17/train`` holds every sequence three times (``-DPM``, ``-FRCNN``, ``-SDP``): the
    same frames and gt, only ``det/det.txt`` differs, so anything that does not read the public
    detections (training, private-detection tracking) must use one copy or count each frame three
    times. ``detector=None`` keeps the first copy of each sequence (the listing is sorted, so DPM on
    the real data); ``detector="FRCNN"`` keeps ``<base>-FRCNN`` and raises :class:`MissingFileError`
    naming a sequence that has copies but not that one. Folders without a detector suffix
    (MOT16, MOT20, custom data) are kept as they are.
    """
    if detector is not None and detector not in DETECTOR_SUFFIXES:
        raise ValueError(f"detector must be one of {DETECTOR_SUFFIXES} (or None for the first copy), got {detector!r}")
    groups: dict[str, list[Path]] = {}
    for seq in map(Path, seq_dirs):
        groups.setdefault(sequence_base_name(seq.name), []).append(seq)
    kept = []
    for base, copies in groups.items():
        if detector is None or all(c.name == base for c in copies):
            kept.append(copies[0])
            continue
        match = [c for c in copies if c.name == f"{base}-{detector}"]
        if not match:
            raise MissingFileError(f"{copies[0].parent}: sequence {base} has no -{detector} copy "
                                   f"(found {', '.join(c.name for c in copies)})")
        kept.append(match[0])
    return kept


def read_mot_sequence(
    seq_dir: str | os.PathLike,
    *,
    split: Split = "all",
    min_visibility: float = 0.25,
    on_error: OnError = "raise",
    check_images: bool = True,
) -> tuple[SeqInfo, list[ImageRecord]]:
    """One ``ImageRecord`` per frame of ``split`` with training labels from ``gt/gt.txt``.

    Boxes: class 1, consider != 0, visibility >= ``min_visibility``, with track
    ids. Ignore boxes: the other class-1 rows and distractor classes
    (2, 7, 8, 12). Other classes (vehicles, occluders) are dropped. Without a
    ``gt/gt.txt`` (test sequences) the records have no boxes.
    ``extra["frame"]`` is the frame number in the sequence (the image file),
    ``extra["split_frame"]`` the 1-based number within ``split`` (val-half gt
    and tracker output use it). :func:`read_mot_sequence_with_stats` also
    returns the ``ReadStats``.
    """
    info, records, _ = read_mot_sequence_with_stats(
        seq_dir, split=split, min_visibility=min_visibility, on_error=on_error, check_images=check_images
    )
    return info, records


def read_mot_sequence_with_stats(
    seq_dir: str | os.PathLike,
    *,
    split: Split = "all",
    min_visibility: float = 0.25,
    on_error: OnError = "raise",
    check_images: bool = True,
) -> tuple[SeqInfo, list[ImageRecord], ReadStats]:
    """:func:`read_mot_sequence` plus its ``ReadStats``."""
    check_on_error(on_error)
    seq_dir = Path(seq_dir)
    info = read_seqinfo(seq_dir)
    stats = ReadStats()
    gt_path = seq_dir / "gt" / "gt.txt"
    gt = read_gt(gt_path, on_error=on_error, stats=stats) if gt_path.is_file() else np.zeros((0, GT_COLUMNS))
    stats.records = 0  # records below count frames, not gt rows
    frames = split_frames(info.seq_length, split)
    outside = (gt[:, FRAME] > info.seq_length)
    if outside.any():
        first = int(gt[outside, FRAME].min())
        stats.skip(FormatError(f"{where(gt_path)}: {int(outside.sum())} rows have frame > seqLength "
                               f"{info.seq_length} (e.g. frame {first}); they are ignored"), on_error)
    cls = gt[:, CLASS].astype(np.int64)
    pedestrian = cls == PEDESTRIAN_CLASS
    is_box = pedestrian & (gt[:, CONSIDER] != 0) & (gt[:, VISIBILITY] >= min_visibility)
    is_ignore = (pedestrian & ~is_box) | np.isin(cls, DISTRACTOR_CLASSES)
    boxes_all = xywh_to_xyxy(gt[:, X:H + 1])
    order = np.argsort(gt[:, FRAME], kind="stable")
    gt_frames = gt[order, FRAME].astype(np.int64)
    starts = np.searchsorted(gt_frames, np.asarray(frames), side="left")
    stops = np.searchsorted(gt_frames, np.asarray(frames), side="right")
    records: list[ImageRecord] = []
    for split_frame, (frame, lo, hi) in enumerate(zip(frames, starts, stops), start=1):
        image_path = info.image_path(seq_dir, frame)
        if check_images and not file_exists(image_path):
            stats.missing(MissingFileError(f"{where(seq_dir / SEQINFO)}: frame {frame}: image not found: "
                                           f"{image_path}"), on_error)
            continue
        idx = order[lo:hi]
        box_idx, ign_idx = idx[is_box[idx]], idx[is_ignore[idx]]
        boxes, keep = sanitize_boxes_xyxy(boxes_all[box_idx], info.im_width, info.im_height, stats)
        ignore, keep_ign = sanitize_boxes_xyxy(boxes_all[ign_idx], info.im_width, info.im_height, stats)
        records.append(ImageRecord(
            image_path=str(image_path),
            width=info.im_width,
            height=info.im_height,
            boxes_xyxy=boxes[keep],
            ids=gt[box_idx[keep], TRACK_ID].astype(np.int64),
            visibility=gt[box_idx[keep], VISIBILITY].astype(np.float32),
            ignore_boxes_xyxy=ignore[keep_ign],
            image_id=f"{info.name}/{frame:06d}",
            source="mot17",
            extra={"frame": int(frame), "split_frame": split_frame, "sequence": info.name},
        ))
    stats.records = len(records)
    return info, records, stats
