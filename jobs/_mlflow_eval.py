"""Log an evaluation to MLflow: ``{dataset}/{metric}`` metrics, the per-sequence table, files.

Used by ``jobs.evaluate`` (and by any job that evaluates a checkpoint). With
``run_id`` the numbers land in that (training) run, so a run's checkpoint and
its scores sit together; without it a new run is created in ``experiment``,
tagged with the checkpoint it evaluated. Metrics are logged at ``step`` = the
checkpoint's training iteration: several checkpoints of one run evaluated
into one MLflow run draw a curve against training progress.

Only the driver calls this: workers hand their rows and metrics back, so no
worker needs to reach the tracking server or a shared disk.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import urlparse

from kdtrack.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CHECKPOINT_TAG = "kdtrack.evaluated_checkpoint"
KIND_TAG = "kdtrack.kind"


def _artifact_root_for(tracking_uri: str) -> str | None:
    """Next to a sqlite store (``<db dir>/mlartifacts``); MLflow's default is ``./mlruns`` of the CWD."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = Path(tracking_uri[len("sqlite:///"):])
    return (db_path.parent / "mlartifacts").resolve().as_uri()


def _experiment_id(client: "MlflowClient", tracking_uri: str, name: str) -> str:
    from jobs._mlflow_train import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_root_for(tracking_uri),
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def scalar_metrics(metrics: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """``{"{dataset}/{name}": value}`` for every finite number; MOT dicts use their "combined" row."""
    source = metrics.get("combined", metrics)
    out = {}
    for name, value in source.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[f"{dataset}/{name}"] = float(value)
    return out


def sequence_rows(metrics: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-sequence rows plus the COMBINED row, and the columns (``sequence``, then each metric)."""
    rows = [{"sequence": name, **values} for name, values in metrics["sequences"].items()]
    rows.append({"sequence": "COMBINED", **metrics["combined"]})
    return rows, list(dict.fromkeys(key for row in rows for key in row))


def sequence_table(metrics: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The per-sequence table column by column, as MLflow's ``log_table`` takes it (non-finite -> None)."""
    rows, columns = sequence_rows(metrics)
    return {column: [jsonable(row.get(column)) for row in rows] for column in columns}


def sequence_table_csv(metrics: Mapping[str, Any]) -> str:
    """Per-sequence rows plus the COMBINED row, one column per metric (fractions as stored)."""
    rows, columns = sequence_rows(metrics)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def log_evaluation_to_mlflow(
    metrics: Mapping[str, Any],
    *,
    dataset: str,
    tracking_uri: str,
    experiment: str = "kdtrack",
    run_id: str | None = None,
    checkpoint: str = "",
    run_name: str = "",
    result_files: Sequence[str | Path] = (),
    rendered_frames: Sequence[str | Path] = (),
    params: Mapping[str, Any] | None = None,
    staging_dir: str | Path | None = None,
    step: int = 0,
    artifact_subdir: str = "",
    tables: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
) -> str:
    """Log ``metrics`` for ``dataset`` (e.g. "MOT17-val") at ``step`` and return the run id.

    Artifacts go under ``eval/<dataset>/`` (``eval/<dataset>/<artifact_subdir>/`` when given: one
    folder per checkpoint of a multi-checkpoint evaluation): ``metrics.json``, ``sequences.csv``
    (MOT only), ``results/`` (tracker output files) and ``frames/`` (rendered frames handed in
    by the caller). ``staging_dir`` holds the table files before upload (a temp dir when None). The
    per-sequence table is also an MLflow table (``sequences.json``), and so is each of ``tables``
    (``{name: {column: values}}``, e.g. one row per embedder) as ``<name>.json``.
    """
    from mlflow.entities import Metric  # imported here: scoring without MLflow stays light
    from mlflow.tracking import MlflowClient

    if not tracking_uri:
        raise ValueError("log_evaluation_to_mlflow needs an absolute tracking URI")
    client = MlflowClient(tracking_uri=tracking_uri)
    created = not run_id
    if run_id:
        client.get_run(run_id)  # fails loudly on a wrong id
        if checkpoint:
            client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
    else:
        tags = {KIND_TAG: "evaluation", CHECKPOINT_TAG: checkpoint or "none"}
        run = client.create_run(_experiment_id(client, tracking_uri, experiment), run_name=run_name or None, tags=tags)
        run_id = run.info.run_id
    try:
        timestamp = int(time.time() * 1000)
        values = scalar_metrics(metrics, dataset)
        client.log_batch(run_id, metrics=[Metric(k, v, timestamp, int(step)) for k, v in values.items()])
        if params:
            logged = client.get_run(run_id).data.params
            for key, value in params.items():
                name = f"{dataset}/{key}"
                if logged.get(name, str(value)) != str(value):  # MLflow params cannot change: say so, go on
                    print(f"MLflow param {name} stays {logged[name]!r} (this evaluation: {value!r}, in metrics.json)")
                    continue
                client.log_param(run_id, name, value)
        base = f"eval/{dataset}/{artifact_subdir}" if artifact_subdir else f"eval/{dataset}"
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(staging_dir or tmp)
            stage.mkdir(parents=True, exist_ok=True)
            client.log_artifact(run_id, str(atomic_write_json(stage / "metrics.json", jsonable(metrics))), base)
            if "sequences" in metrics:
                table = atomic_write_text(stage / "sequences.csv", sequence_table_csv(metrics))
                client.log_artifact(run_id, str(table), base)
                # the same rows as an MLflow table, which the UI shows as a table (Artifacts, Evaluations)
                client.log_table(run_id, sequence_table(metrics), f"{base}/sequences.json")
            for name, table_data in (tables or {}).items():
                client.log_table(run_id, table_data, f"{base}/{name}.json")
            for path in result_files:
                client.log_artifact(run_id, str(path), f"{base}/results")
            for path in rendered_frames:
                client.log_artifact(run_id, str(path), f"{base}/frames")
    except BaseException:
        if created:
            client.set_terminated(run_id, status="FAILED")
        raise
    if created:
        client.set_terminated(run_id)  # a run passed in by id keeps its own status
    return run_id


def jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_and_log_record(record: dict[str, Any], flat_metrics: Mapping[str, Any], *, dataset: str,
                         out: str | Path | None, tracking_uri: str | None, experiment: str, run_id: str | None,
                         checkpoint: str, tables: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
                         ) -> dict[str, Any]:
    """An in-process evaluation's ending: ``record`` written to ``out`` atomically (nan -> null), then
    ``flat_metrics`` logged under ``dataset`` into ``run_id`` (or a new run) when a tracking URI is given;
    the run id joins ``record`` as ``mlflow_run_id``."""
    if out:
        atomic_write_json(out, jsonable(record))
    if tracking_uri:
        logged = log_evaluation_to_mlflow(flat_metrics, dataset=dataset, tracking_uri=tracking_uri,
                                          experiment=experiment, run_id=run_id, checkpoint=checkpoint,
                                          result_files=[out] if out else (), tables=tables)
        record["mlflow_run_id"] = logged
        print(f"logged to MLflow run {logged} ({tracking_uri})")
    return record
