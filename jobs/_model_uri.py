"""Checkpoints named by MLflow URIs, fetched from the tracking server.

A training run logs its final network as an MLflow logged model named ``student`` (``teacher`` for the
teacher recipe; :func:`jobs._mlflow_train.log_trained_model`), and ``--register-model NAME`` registers it.
Any job that takes ``--checkpoint`` also takes

* ``runs:/<run_id>/student``: the model that training run logged;
* ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``): a registered version;
* ``models:/<model_id>``: a logged model by its id,

so a checkpoint is reachable from another machine through the tracking server alone. The URI is
downloaded into a fresh local folder and the job reads the ``checkpoint.pt`` in it, as it reads a path.
An object-store URI (``s3://bucket/.../checkpoint_<time>``, a Ray Train checkpoint folder, or the
``checkpoint.pt`` in it) is fetched the same way, with the storage settings of ``jobs._storage``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError
from kdtrack.checkpoint import CHECKPOINT_NAME

MODEL_URI_PREFIXES = ("runs:/", "models:/")


def _scratch_folder(prefix: str) -> Path:
    """A fresh temporary folder for a fetched checkpoint, removed when the process exits: a job that reads a
    remote checkpoint leaves no copy of it behind (paper-scale networks are hundreds of MB each)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def is_model_uri(ref: str | Path | None) -> bool:
    """``runs:/...`` or ``models:/...`` (a ``Path`` keeps the text as it was given: one slash after ':')."""
    return ref is not None and str(ref).startswith(MODEL_URI_PREFIXES)


def fetch_checkpoint(uri: str, tracking_uri: str | None, dst: str | Path | None = None) -> Path:
    """The local ``checkpoint.pt`` of the model ``uri`` names, downloaded from ``tracking_uri`` (or
    ``MLFLOW_TRACKING_URI``) into ``dst`` (a new temporary folder, removed at exit, when None). A URI without
    a tracking server to ask, or one the server does not know, is an :class:`InputError` naming it."""
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        raise InputError(f"--checkpoint {uri}: an MLflow URI needs the tracking server that holds it "
                         f"(--mlflow-uri URI or MLFLOW_TRACKING_URI)")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    target = Path(dst) if dst is not None else _scratch_folder("kdtrack-model-")
    target.mkdir(parents=True, exist_ok=True)
    try:
        # resolved here with an explicit client: MLflow's own models:/ lookup reads the global registry URI
        location = model_artifacts_uri(MlflowClient(tracking_uri=tracking, registry_uri=tracking), str(uri))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(target),
                                                         tracking_uri=tracking))
    except MlflowException as exc:
        raise InputError(f"--checkpoint {uri}: not found in {tracking} ({exc.message})") from None
    path = local / CHECKPOINT_NAME if local.is_dir() else local
    if not path.is_file():
        raise InputError(f"--checkpoint {uri}: what it names ({local}) holds no {CHECKPOINT_NAME}")
    print(f"--checkpoint {uri}: fetched from {tracking} to {path}", flush=True)
    return path


def model_artifacts_uri(client: Any, uri: str) -> str:
    """Where the artifacts of the model ``uri`` names live (a URI ``download_artifacts`` takes)."""
    if uri.startswith("runs:/"):
        run_id, _, name = uri[len("runs:/"):].partition("/")
        if not run_id or not name:
            raise InputError(f"--checkpoint {uri}: expected runs:/<run_id>/<model name>, e.g. runs:/<id>/student")
        run = client.get_run(run_id)
        logged = [m for m in client.search_logged_models([run.info.experiment_id],
                                                         filter_string=f"source_run_id = '{run_id}'")
                  if m.name == name]
        if not logged:  # a model another run logged and this one lists as its output (a sweep's best trial's)
            outputs = run.outputs.model_outputs if run.outputs else []
            logged = [m for m in (client.get_logged_model(o.model_id) for o in outputs) if m.name == name]
        # the newest model of that name; else a plain artifact path of the run
        return max(logged, key=lambda m: m.creation_timestamp).artifact_location if logged else uri
    ref = uri[len("models:/"):]
    if "/" in ref:
        name, version = ref.split("/", 1)
        version_info = client.get_model_version(name, version)
    elif "@" in ref:
        name, alias = ref.split("@", 1)
        version_info = client.get_model_version_by_alias(name, alias)
    else:  # a logged model's id
        return client.get_logged_model(ref).artifact_location
    if version_info.model_id:
        return client.get_logged_model(version_info.model_id).artifact_location
    return version_info.source


def fetch_stored_checkpoint(uri: str | Path, dst: str | Path | None = None) -> Path:
    """The local copy of the ``checkpoint.pt`` an object-store URI names (the file, or the Ray checkpoint
    folder holding it), in ``dst`` (a new temporary folder, removed at exit, when None). Not there: an
    InputError naming it."""
    from jobs._storage import as_uri, fetch_to_local

    target = Path(dst) if dst is not None else _scratch_folder("kdtrack-ckpt-")
    try:
        path = fetch_to_local(uri, target, CHECKPOINT_NAME)
    except FileNotFoundError as exc:
        raise InputError(f"--checkpoint {exc}") from None
    print(f"--checkpoint {as_uri(uri)}: fetched to {path}", flush=True)
    return path


def _resolve_one(value: str | Path, tracking_uri: str | None) -> str | Path:
    from jobs._storage import is_storage_uri

    if is_model_uri(value):
        return fetch_checkpoint(str(value), tracking_uri)
    if is_storage_uri(value):
        return fetch_stored_checkpoint(value)
    return value


def resolve_checkpoints(values: str | Path | Sequence[str | Path] | None,
                        tracking_uri: str | None) -> str | Path | list[str | Path] | None:
    """``--checkpoint`` values with every MLflow URI and object-store URI replaced by its fetched local file;
    paths unchanged (a single value stays single, a list stays a list)."""
    if values is None:
        return None
    if isinstance(values, (str, Path)):
        return _resolve_one(values, tracking_uri)
    return [_resolve_one(v, tracking_uri) for v in values]
