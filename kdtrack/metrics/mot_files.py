"""Score MOTChallenge-layout folders: ``GT/<SEQ>/{seqinfo.ini, gt/gt.txt}`` against ``RESULTS/<SEQ>.txt``.

``seqinfo.ini`` is required: its ``seqLength`` fixes which frames are scored,
so frames after the last gt box (where tracker boxes are false positives) and
frames the tracker left empty (misses) all count. With ``half="val"`` only the
val half ``N//2+2 .. N`` is scored, renumbered from 1; the tracker file must
then already be renumbered the same way (FORMATS.md).

No Ray here: :func:`score_sequence_files` is the unit of work a job may fan out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from kdtrack.config import EvalConfig
from kdtrack.formats import mot as mot_format
from kdtrack.metrics.mot import SequenceEvaluation, evaluate_sequence, summarize_sequences

Half = Literal["full", "val"]
HALVES = ("full", "val")


@dataclass(frozen=True)
class SequenceFiles:
    """Where one sequence's inputs live."""

    name: str
    seq_dir: Path  # holds seqinfo.ini and gt/gt.txt
    result_path: Path  # <results>/<name>.txt


def find_sequence_files(
    gt_root: str | Path, results_dir: str | Path, sequences: Sequence[str] | None = None
) -> list[SequenceFiles]:
    """All sequences under ``gt_root`` that have ``gt/gt.txt`` (or the named subset); sorted by name.

    A missing tracker file is an error naming it: scoring a subset silently
    would inflate the combined numbers.
    """
    gt_root, results_dir = Path(gt_root), Path(results_dir)
    if not gt_root.is_dir():
        raise FileNotFoundError(f"gt root {gt_root} is not a directory")
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} is not a directory")
    if sequences:
        names = list(sequences)
        for name in names:
            if not (gt_root / name / "gt" / "gt.txt").is_file():
                raise FileNotFoundError(f"{gt_root / name / 'gt' / 'gt.txt'}: no ground truth for sequence {name}")
    else:
        names = sorted(p.name for p in gt_root.iterdir() if (p / "gt" / "gt.txt").is_file())
        if not names:
            raise FileNotFoundError(f"{gt_root}: no <SEQ>/gt/gt.txt found")
    missing = [str(results_dir / f"{n}.txt") for n in names if not (results_dir / f"{n}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"tracker output missing for {len(missing)} sequence(s): {', '.join(missing)}")
    return [SequenceFiles(n, gt_root / n, results_dir / f"{n}.txt") for n in names]


def score_sequence_files(
    files: SequenceFiles, *, benchmark: str, half: Half = "full", cfg: EvalConfig | None = None
) -> SequenceEvaluation:
    """Read one sequence's gt, seqinfo and tracker file and score it (see :func:`evaluate_sequence`)."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, got {half!r}")
    seq_length = mot_format.read_seqinfo(files.seq_dir).seq_length
    gt = _read_gt_rows(files.seq_dir / "gt" / "gt.txt", benchmark)
    results = mot_format.read_results(files.result_path)
    if half == "val":
        gt = mot_format.slice_rows_half(gt, seq_length, "val_half")
        seq_length = len(mot_format.split_frames(seq_length, "val_half"))
    return evaluate_sequence(files.name, gt, results, seq_length, benchmark=benchmark, cfg=cfg)


def evaluate_mot_files(
    gt_root: str | Path,
    results_dir: str | Path,
    *,
    benchmark: str,
    half: Half = "full",
    sequences: Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    map_fn: Callable[[Callable[[SequenceFiles], SequenceEvaluation], list[SequenceFiles]], list] | None = None,
) -> dict[str, dict]:
    """Score every sequence; ``{"sequences": {...}, "combined": {...}}``.

    ``map_fn(score, files)`` runs the per-sequence scoring (default: serially
    here; ``jobs.evaluate`` passes one that fans out as Ray tasks).
    """
    files = find_sequence_files(gt_root, results_dir, sequences)
    score = functools.partial(score_sequence_files, benchmark=benchmark, half=half, cfg=cfg)
    evaluations = map_fn(score, files) if map_fn is not None else [score(f) for f in files]
    return summarize_sequences(evaluations)


# --------------------------------------------------------------------------- file reading


def _read_gt_rows(path: Path, benchmark: str) -> np.ndarray:
    """gt rows; MOT15 gt (e.g. TUD) uses the 10-column det/result layout
    (frame, id, x, y, w, h, conf, x, y, z) and has no class column, so it is
    read with the results reader."""
    return mot_format.read_results(path) if benchmark == "MOT15" else mot_format.read_gt(path)
