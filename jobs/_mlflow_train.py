"""MLflow for training runs (rank 0): open or reopen the run, log best-effort, mark a crash FAILED.

One training run is one MLflow run: a resume reopens the run its checkpoint names; a caller (a Tune trial)
may hand the workers a run it made. Params are the config fields the recipe reads; the whole resolved
config is the ``config.yaml`` artifact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from kdtrack.config import Config, config_yaml, flatten_config
from kdtrack.recipes import get_recipe, recipe_of

MLFLOW_RETRY_SECONDS = 60.0  # rank 0 tries a failing tracking server again at most this often
# MLflow's own tag for what an experiment is; its UI reads it where no view is chosen in the browser
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_TAG = "kdtrack.model_uri"  # the run's logged model, as a models:/ URI


def start_run(cfg: Config, uri: str, ray_run_name: str, resume_state: dict[str, Any] | None = None,
              run_id: str = "") -> Any:
    """Rank 0 only: a client and the run to log into. A resume (a rerun, or a worker-group restart after a
    failure) reopens the run its checkpoint names, so one training run stays one MLflow run and its curves
    continue; else ``run_id``, a run the caller made (a Tune trial's child run); otherwise (or when that
    run is not in this tracking store) a new run (:func:`create_mlflow_run`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    previous = str((resume_state or {}).get("mlflow_run_id", "") or "") or run_id
    if previous:
        try:
            client.get_run(previous)
        except MlflowException:
            print(f"MLflow run {previous} of the checkpoint is not in {uri}: logging into a new run", flush=True)
        else:
            client.update_run(previous, status="RUNNING")
            if resume_state is not None:
                client.set_tag(previous, "kdtrack.resumed_at_iteration", str(int(resume_state.get("iteration", 0))))
            return client, previous
    experiment_id = mlflow_experiment_id(client, cfg.mlflow.experiment, uri, cfg.mlflow.artifact_location)
    return client, create_mlflow_run(client, experiment_id, cfg, cfg.mlflow.run_name or ray_run_name,
                                     {"kdtrack.ray_run": ray_run_name})


def create_driver_run(cfg: Config, uri: str) -> str:
    """``jobs.train``'s driver makes the run of a new training run, once, and prints its id (rank 0 logs
    into it, restarts included). An MLflow outage here is a warning, never a failed job: ``""`` lets
    rank 0 try again when it starts."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        experiment_id = mlflow_experiment_id(client, cfg.mlflow.experiment, uri, cfg.mlflow.artifact_location)
        run_id = create_mlflow_run(client, experiment_id, cfg, cfg.mlflow.run_name or cfg.train.run_name,
                                   {"kdtrack.ray_run": cfg.train.run_name})
    except Exception as exc:  # noqa: BLE001  (any tracking-server failure: training goes on)
        print(f"warning: MLflow at {uri} did not create the run ({type(exc).__name__}: {exc}); rank 0 will try "
              f"again", flush=True)
        return ""
    print(f"MLflow run {run_id} (experiment '{cfg.mlflow.experiment}', {uri})", flush=True)
    return run_id


def mark_failed(uri: str, run_id: str, exc: BaseException) -> None:
    """The driver's view of a failed fit (workers that never started cannot mark their run): FAILED, with
    the error as tag ``kdtrack.error`` unless rank 0 already tagged the root cause; best-effort."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        if "kdtrack.error" not in client.get_run(run_id).data.tags:
            client.set_tag(run_id, "kdtrack.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, status="FAILED")
    except Exception as log_exc:  # noqa: BLE001
        print(f"warning: could not mark MLflow run {run_id} FAILED ({log_exc})", flush=True)


def mlflow_experiment_id(client: Any, name: str, uri: str, artifact_location: str = "") -> str:
    """The id of experiment ``name``, created when missing with its artifacts at ``artifact_location``
    (``mlflow.artifact_location``: an object store every machine reaches), else beside a sqlite store's db,
    not in the working directory of whichever process created it. An existing experiment keeps its location
    (MLflow fixes it at creation): a different one asked for is a warning."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if artifact_location and experiment.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            print(f"warning: MLflow experiment '{name}' keeps its artifacts at {experiment.artifact_location}, not "
                  f"mlflow.artifact_location {artifact_location} (use a new experiment name)", flush=True)
        return experiment.experiment_id
    artifact_root = artifact_location or None
    if artifact_root is None and uri.startswith("sqlite:///"):
        artifact_root = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_root,
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def check_artifact_location(cfg: Config) -> None:
    """``mlflow.artifact_location`` checked as ``--storage`` is, before any worker starts: a bad URI or a missing
    bucket is a StorageError naming it (exit 2), not an artifact upload failing after the training."""
    from jobs._storage import check_storage, resolve_storage

    if cfg.mlflow.artifact_location:
        what = "mlflow.artifact_location"
        check_storage(resolve_storage(cfg.mlflow.artifact_location, what=what), what=what)


def log_trained_model(uri: str, run_id: str, checkpoint: str | Path, cfg: Config, *, iteration: int = 0,
                      register_as: str = "") -> str:
    """The final checkpoint as an MLflow logged model of the run (``student``, or ``teacher`` for the teacher
    recipe), with the resolved config beside it, so another machine fetches it by ``runs:/<run>/student``
    or ``models:/<model id>`` (``jobs._model_uri``); ``register_as`` registers it as the next version of
    that registered model (``models:/NAME/VERSION``). Returns the ``models:/`` URI, tagged on the run as
    ``kdtrack.model_uri``; best-effort like all training-run logging: a failure is a warning and ``""``."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    name = "student" if recipe_of(cfg).student else "teacher"
    try:
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        model = client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=run_id, model_type="kdtrack-checkpoint",
            tags={"kdtrack.recipe": cfg.train.recipe},
            params={"iteration": str(int(iteration)), "model.backbone": str(cfg.model.backbone)})
        with tempfile.TemporaryDirectory() as stage:
            staged = Path(stage) / Path(checkpoint).name
            try:
                os.link(checkpoint, staged)  # no copy of a large file when the folders share a disk
            except OSError:
                shutil.copy2(checkpoint, staged)
            (Path(stage) / "config.yaml").write_text(config_yaml(cfg))
            client.log_model_artifacts(model.model_id, stage)
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=int(iteration))])
        model_uri = f"models:/{model.model_id}"
        client.set_tag(run_id, MODEL_TAG, model_uri)
        message = f"MLflow model {model_uri} (runs:/{run_id}/{name})"
        if register_as:
            if not client.search_registered_models(filter_string=f"name = '{register_as}'"):
                client.create_registered_model(register_as)
            # source: the artifacts' location (a models:/ source is resolved through MLflow's global URI)
            version = client.create_model_version(register_as, source=model.artifact_location, run_id=run_id,
                                                  model_id=model.model_id)
            message += f", registered as models:/{register_as}/{version.version}"
        print(message, flush=True)
        return model_uri
    except Exception as exc:  # noqa: BLE001  (any tracking-server failure: the checkpoint file is there)
        print(f"warning: MLflow at {uri} did not log the trained model ({type(exc).__name__}: {exc})", flush=True)
        return ""


def unused_sections(recipe: str) -> tuple[str, ...]:
    """Config sections a training recipe never reads: left out of its MLflow params (they stay in the
    ``config.yaml`` artifact)."""
    unused = ["synth", "pseudo"]  # the world generator; jobs.pseudo_label
    if not get_recipe(recipe).reads_teacher:
        unused.append("teacher")
    return tuple(unused)


def create_mlflow_run(client: Any, experiment_id: str, cfg: Config, run_name: str, tags: dict[str, str]) -> str:
    """A new run of one training run: tagged with its recipe, the config fields it reads as params, the
    whole resolved config as the artifact ``config.yaml`` (``jobs.train --config`` takes it as it is)."""
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=run_name, tags={"kdtrack.recipe": cfg.train.recipe, **tags})
    skip = unused_sections(cfg.train.recipe)
    params = [Param(k, str(v)) for k, v in flatten_config(cfg).items() if k.split(".", 1)[0] not in skip]
    batch_limit = 100  # MLflow's log_batch cap on params per call
    for start in range(0, len(params), batch_limit):
        client.log_batch(run.info.run_id, params=params[start:start + batch_limit])
    client.log_text(run.info.run_id, config_yaml(cfg), "config.yaml")
    return run.info.run_id


class MlflowSink:
    """Rank 0's MLflow logging, best-effort: a failed call (tracking server down, network hiccup) is a warning,
    its metrics are kept (up to ``max_pending``) and sent with a later call; training never stops for it.

    ``opener`` (``() -> (client, run_id)``) opens the run on the first call that reaches the server, so an
    outage when rank 0 starts is survived too. While failing, the server is tried again at most every
    ``retry_seconds`` (an MLflow client call to a dead server retries for minutes); calls in between only
    queue their metrics. Tags and params sent during an outage are lost (warned)."""

    def __init__(self, client: Any, run_id: str, max_pending: int = 100_000, *,
                 opener: Callable[[], tuple[Any, str]] | None = None, retry_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.client, self.run_id, self.max_pending = client, run_id, max_pending
        self.opener, self.retry_seconds, self.clock = opener, retry_seconds, clock
        self.pending: list[Any] = []
        self.failing = False
        self.next_try = 0.0

    def _failed(self, what: str, exc: Exception) -> bool:
        if not self.failing:
            first_line = (str(exc).splitlines() or [""])[0][:200]
            print(f"warning: MLflow {what} failed ({type(exc).__name__}: {first_line}); training goes on, "
                  f"metrics are kept and retried", flush=True)
        self.failing = True
        self.next_try = self.clock() + self.retry_seconds
        return False

    def _open(self) -> bool:
        if self.run_id:
            return True
        if self.opener is None:
            return False
        try:
            self.client, self.run_id = self.opener()
        except Exception as exc:  # noqa: BLE001  (any tracking-server failure: training goes on)
            return self._failed("run start", exc)
        print(f"MLflow run {self.run_id} opened by rank 0", flush=True)
        return True

    def _call(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """``client.<method>(run_id, *args, **kwargs)``, best-effort (False when it did not happen)."""
        if self.failing and self.clock() < self.next_try:
            return False
        if not self._open():
            return False
        try:
            getattr(self.client, method)(self.run_id, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any client error: logging must not kill training)
            return self._failed(method, exc)
        if self.failing:
            print("MLflow reachable again: pending metrics sent", flush=True)
        self.failing = False
        return True

    def metrics(self, step: int, terms: dict[str, float], prefix: str = "train/") -> None:
        """Every finite term as ``<prefix><term>`` (``train/<term>``) at ``step``, with what is pending."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = self.pending + [Metric(f"{prefix}{k}", float(v), now, step) for k, v in terms.items()
                                if math.isfinite(v)]
        self.pending = []
        for start in range(0, len(batch), 1000):  # MLflow's log_batch cap on metrics per call
            chunk = batch[start:start + 1000]
            if not self._call("log_batch", metrics=chunk):
                self.pending = (chunk + batch[start + 1000:])[-self.max_pending:]
                return

    def tag(self, key: str, value: str) -> None:
        self._call("set_tag", key, value)

    def param(self, key: str, value: Any) -> None:
        self._call("log_param", key, value)

    def finish(self, status: str = "FINISHED") -> None:
        """The last try: pending metrics and the final status go now, whatever the retry interval."""
        self.next_try = 0.0
        if self.pending:
            self.metrics(0, {}, prefix="")
        if self.pending:  # still down: one more client call would only wait again
            print(f"warning: MLflow unreachable at the end: {len(self.pending)} metrics not sent, run "
                  f"{self.run_id or '(never opened)'} not marked {status}", flush=True)
            return
        self._call("set_terminated", status=status)


def open_sink(cfg: Config, uri: str, ray_run_name: str, resume_state: dict[str, Any] | None = None,
              run_id: str = "") -> MlflowSink:
    """Rank 0's sink on the run :func:`start_run` opens; an outage now is a warning and a later log call
    opens the run (the checkpoint then records its id)."""
    sink = MlflowSink(None, "", opener=lambda: start_run(cfg, uri, ray_run_name, resume_state, run_id),
                      retry_seconds=MLFLOW_RETRY_SECONDS)
    sink._open()
    return sink


def sink_run_id(sink: MlflowSink | None) -> str:
    """The MLflow run a checkpoint records: ``""`` on other ranks, and on rank 0 until the run is open."""
    return sink.run_id if sink is not None else ""


@contextlib.contextmanager
def failed_run_on_error(sink: MlflowSink | None) -> Iterator[None]:
    """A training loop that raises marks its MLflow run FAILED with the error (a Ray restart, or a rerun,
    reopens it as RUNNING)."""
    try:
        yield
    except BaseException as exc:
        if sink is not None:
            sink.tag("kdtrack.error", f"{type(exc).__name__}: {exc}"[:5000])
            sink.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
