"""What the checkpoint modes of ``jobs.evaluate`` return and how it is reported: one
:class:`CheckpointEvaluation` per checkpoint, a table of several, and :func:`write_and_log` (``--out``, then
MLflow for each complete evaluation, then :class:`EvaluationFailed` naming what failed)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from jobs._inference_pool import CheckpointInfo
from jobs._mlflow_eval import log_evaluation_to_mlflow
from kdtrack.config import Config
from kdtrack.io import atomic_write_json


class EvaluationFailed(RuntimeError):
    """Some sequences or image batches failed (each reported by name); what finished was written."""


@dataclass
class CheckpointEvaluation:
    """One checkpoint's evaluation: metrics of what finished and what failed (name -> one-line error)."""

    checkpoint: CheckpointInfo | None
    metrics: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    result_files: list[Path] = field(default_factory=list)
    rendered_frames: list[Path] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # MOT: per sequence frames, timings, device


def format_checkpoint_table(evaluations: Sequence[CheckpointEvaluation], columns: Sequence[tuple[str, str]]) -> str:
    """One row per checkpoint (its iteration first): MOT's combined row, or person search's numbers."""
    rows = [("checkpoint", "iteration", *(name for name, _ in columns))]
    paths = [ev.checkpoint.path for ev in evaluations]
    common = os.path.commonpath(paths) if len(set(paths)) > 1 else str(Path(paths[0]).parent)
    for ev in evaluations:
        values = ev.metrics.get("combined", ev.metrics)
        cells = []
        for name, kind in columns:
            value = values.get(name)
            cells.append("-" if value is None else f"{100 * value:.1f}" if kind == "pct" else str(int(value)))
        note = f" ({len(ev.failed)} failed)" if ev.failed else ""
        rows.append((os.path.relpath(ev.checkpoint.path, common) + note, str(ev.checkpoint.iteration), *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(row[0].ljust(widths[0]) + "".join(cell.rjust(w + 2) for cell, w in zip(row[1:], widths[1:]))
                     for row in rows)


def write_and_log(args: argparse.Namespace, cfg: Config, dataset: str, evaluations: Sequence[CheckpointEvaluation],
                   *, checkpoint_tag: str, what: str = "sequences") -> dict[str, Any]:
    """Write ``--out`` (atomically), log each complete evaluation to MLflow at its checkpoint's
    iteration, then raise :class:`EvaluationFailed` if anything failed.

    A checkpoint with failed items is written (metrics of what finished, ``"failed"``: name ->
    error) but not logged: a combined number over part of the data would sit on the MLflow curve
    as if it were the whole. The numeric paths the pool ran (``"numeric_paths"`` of each evaluation,
    ``jobs._inference_pool.numeric_paths``) go to MLflow as params, and a mix of them is printed.
    """
    if len(evaluations) == 1:
        record = evaluations[0].metrics
    else:
        record = {"checkpoints": [{"checkpoint": ev.checkpoint.path, "iteration": ev.checkpoint.iteration,
                                   "metrics": ev.metrics} for ev in evaluations]}
    atomic_write_json(args.out, record)
    failures = [(ev, name, error) for ev in evaluations for name, error in ev.failed.items()]
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    params = numeric_path_params(evaluations)
    if params.get("numeric_path_mixed") == "true":
        print(f"warning: the evaluation pool mixed numeric paths ({params['numeric_paths']}): each "
              f"{'sequence' if what == 'sequences' else 'image batch'}'s numbers depend on the actor that ran it; "
              f"{args.out} lists which ran where", file=sys.stderr)
    if uri:
        run_id = args.run_id
        for ev in evaluations:
            if ev.failed:
                continue
            run_id = log_evaluation_to_mlflow(
                ev.metrics, dataset=dataset, tracking_uri=uri, experiment=args.experiment or cfg.mlflow.experiment,
                run_id=run_id, checkpoint=checkpoint_tag, result_files=ev.result_files,
                rendered_frames=ev.rendered_frames, step=ev.checkpoint.iteration if ev.checkpoint else 0,
                artifact_subdir=ev.checkpoint.label if ev.checkpoint else "", params=params,
            )
        if run_id:
            print(f"logged to MLflow run {run_id} ({uri})")
    if failures:
        for ev, name, error in failures:
            label = f"{ev.checkpoint.label}/" if ev.checkpoint and ev.checkpoint.label else ""
            print(f"FAILED {label}{name}: {error}", file=sys.stderr)
        total = sum(len(ev.failed) for ev in evaluations)
        raise EvaluationFailed(f"{total} {what} failed; the metrics of the others are in {args.out}"
                               + (" (not logged to MLflow)" if uri else ""))
    return record



def numeric_path_params(evaluations: Sequence[CheckpointEvaluation]) -> dict[str, str]:
    """MLflow params of the numeric paths the evaluations ran on: ``numeric_paths`` and ``numeric_path_mixed``
    (which items ran where: the output JSON and ``metrics.json``); none for precomputed inputs (no network)."""
    paths = sorted({path for ev in evaluations for path in ev.metrics.get("numeric_paths", {})})
    if not paths:
        return {}
    return {"numeric_paths": ", ".join(paths), "numeric_path_mixed": "true" if len(paths) > 1 else "false"}
