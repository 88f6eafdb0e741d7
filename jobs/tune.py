"""Ray Tune sweeps of a training recipe on a measured identity objective, compared in MLflow.

    python -m jobs.tune --config tune_idf_cpu --data-root W --out S [--num-samples N]
                        [--set tune.field=value | section.field=value ...] [--mlflow-uri URI] [--storage URI]

The sweep preset (``tune/configs/<name>.yaml``, checked by ``tune.spec``) names a ``jobs.train``
preset, the fields searched and the budget. Each trial is a Tune function (a small CPU share) that
applies its sampled values to the base config and builds and fits the *same* ``TorchTrainer`` as
``jobs.train`` (``jobs.train.build_trainer``) with a ``TuneReportCallback``; at every
``train.report_every`` iterations rank 0 measures oracle-box re-ID of the identity embedding on the
person-search *validation* split (its own identities; no final report reads it) and reports it with
the checkpoint. That value, ``tune.metric``, is the objective: ASHA stops weak trials at its rungs
(in iterations), random search or Optuna TPE draws the values. The records are read once, on the
driver, and shipped through the object store.

MLflow (default ``sqlite:///<S>/mlflow.db``): one parent run per sweep (the search space, the budget,
the random-init and colour-histogram baselines scored on the same validation boxes, the best trial
and ``best_config.yaml``) and one child run per trial (its params, training curves and objective at
every report). A trial that fails (a NaN loss, a bad value) is FAILED in MLflow and ERROR in Tune,
and the sweep goes on; a trial ASHA stopped is KILLED with tag ``kdtrack.tune.outcome=stopped_early``.

Written to ``S`` (atomically): ``best_config.yaml`` (a preset ``jobs.train --config S/best_config.yaml``
takes as it is), ``summary.csv`` (the table printed at the end, from ``mlflow.search_runs``) and
``sweep.json``; a sweep across recipes (``recipes:`` in the preset, ``tune.spec``) also writes
``S/compare/`` (``jobs.compare``'s report of its trials, logged to the parent run). With ``tune.final_eval``
(``reid``, ``mot``), each recipe's best trial, picked on validation, is then scored once on the test reports
(``jobs._final_eval``: ``S/final/<recipe>/``, logged into its run; the report's final columns). Exit code 1 when
no trial finished with a finite objective, 2 on a config error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from kdtrack.config import (
    Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, dump_config, with_absolute_paths,
)
from tune.spec import (RECIPE_FIELD, SweepSpec, check_every_resources, held_out_protocols, load_sweep, override_text,
                        reclusters)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's nesting tag: the UI shows children under their parent
OUTCOME_TAG = "kdtrack.tune.outcome"  # completed | stopped_early | failed
TRIAL_TAG = "kdtrack.tune.trial_id"
ERROR_TAG = "kdtrack.tune.error"  # a failed trial's root cause, one line
RESTARTS_TAG = "kdtrack.tune.restarts"  # times the trial's process died and Tune started it again
BEST_RUN_TAG = "kdtrack.tune.best_run_id"  # the parent's link to its best trial's child run
NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI (markdown)
BEST_CONFIG = "best_config.yaml"
SUMMARY_CSV = "summary.csv"
SWEEP_JSON = "sweep.json"
COMPARE_DIR = "compare"  # a sweep across recipes: jobs.compare's report of its trials
LABELS_DIR = "labels"  # a re-clustering sweep: each trial's pseudo-labels, <out>/labels/<trial id>/


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tune_idf_cpu", help="sweep preset (tune/configs/<name>.yaml) or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="tune.FIELD=VALUE | SECTION.FIELD=VALUE",
                        help="tune.* changes the sweep; any other field is fixed for every trial")
    parser.add_argument("--data-root", default=None, help="dataset root (the world holding the validation split)")
    parser.add_argument("--out", required=True, help="output folder: MLflow db, Ray results, best_config.yaml")
    parser.add_argument("--num-samples", type=int, default=None, help="trials (overrides tune.num_samples)")
    parser.add_argument("--mlflow-uri", default=None, help="absolute MLflow tracking URI")
    parser.add_argument("--storage", default=None,
                        help="Ray storage every node sees (NFS path or s3:// / gs:// URI); default <out>/ray_results")
    return parser


def resolve_sweep(args: argparse.Namespace) -> SweepSpec:
    """The checked sweep: preset + ``--set`` + ``--data-root``, paths made absolute, the base config (of every
    recipe, in a sweep across recipes) checked as ``jobs.train`` checks it (validation boxes read once here)."""
    from jobs.train import check_recipe

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={Path(args.data_root).resolve()}")
    spec = load_sweep(args.config, overrides, num_samples=args.num_samples)
    arms = {}
    for name, arm in spec.recipes.items():
        arms[name] = dataclasses.replace(arm, base=with_absolute_paths(arm.base))
        check_recipe(arms[name].base, arm.source)
    base = with_absolute_paths(spec.base)
    check_recipe(base, spec.source)
    return dataclasses.replace(spec, base=base, recipes=arms)


def trial_recipe(default: str, values: dict[str, Any]) -> str:
    """The recipe a trial trains: its ``train.recipe`` value in a sweep across recipes, else ``default``."""
    return str(values.get(RECIPE_FIELD) or default)


def trial_config(base: Config, values: dict[str, Any], run_name: str) -> Config:
    """The base config with a trial's sampled values (``{field: value}``; ``None``, a field the trial's recipe
    does not search, and the recipe itself are left out) and its own Ray Train run name."""
    cfg = apply_overrides(base, [override_text(k, _plain(v)) for k, v in values.items()
                                 if v is not None and k != RECIPE_FIELD])
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_name=run_name))


def trial_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial: its checkpoints are under ``<storage>/<this>/``."""
    return f"train-{trial_id}"


def _plain(value: Any) -> Any:
    """numpy scalars (what Tune's samplers return) as Python numbers."""
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- one trial (a Tune function)


class TrialFailedBefore(RuntimeError):
    """Tune restarted a trial whose run already failed: it fails again with the first error, untrained."""


def trial_child_run(client: Any, experiment_id: str, parent_run_id: str, trial_id: str) -> Any | None:
    """The child MLflow run an earlier start of ``trial_id`` made under ``parent_run_id``, or None."""
    runs = client.search_runs([experiment_id], max_results=1,
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
    return runs[0] if runs else None


def relabelled_data(cfg: Config, videos: Sequence[Any], out: Path) -> tuple[Config, Any, dict[str, Any], dict]:
    """A stage-2 trial's own pseudo-labels: the cached stage-1 embeddings ``videos`` clustered with the trial's
    ``pseudo.*`` values into ``out`` (``jobs.pseudo_label.relabel``; no network runs), and the loop data read
    back from them: ``(config pointing at them, train_fn, loop data, clustering summary)``."""
    from jobs.pseudo_label import LABELS_FILE, relabel
    from jobs.train import training_data

    # in the trial's process: its Ray Train workers have not started, so the cores are free, and Ray tasks
    # launched here would be held to the trial's own placement group (tune.trial_cpus)
    summary = relabel(videos, cfg, out, use_ray=False)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pseudo_labels=str(out / LABELS_FILE)))
    train_fn, loop_data = training_data(cfg)
    return cfg, train_fn, loop_data, summary


def run_trial(values: dict[str, Any], *, recipes: dict[str, tuple[dict[str, Any], Any, dict[str, Any], Any]],
              mlflow_uri: str, experiment_id: str, parent_run_id: str, storage: Any, labels_root: str = "",
              mlflow_env: dict[str, str] | None = None) -> None:
    """One trial: a child MLflow run, then ``jobs.train``'s ``TorchTrainer`` with a ``TuneReportCallback``.
    ``recipes``: ``{recipe: (base config dict, train_fn, loop data, cached stage-1 embeddings or None)}``, the
    one of the trial's recipe used; with cached embeddings (a clustering field searched) the trial first
    re-clusters them into ``labels_root/<trial id>`` (``relabelled_data``) and trains on those labels.
    Any failure marks the child run FAILED (with the error) and is re-raised, so Tune records it. The trial
    logs MLflow artifacts itself: ``mlflow_env`` holds the driver's S3 variables for an s3:// artifact store."""
    import ray.tune
    from mlflow.tracking import MlflowClient
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs._mlflow_train import create_mlflow_run, log_trained_model
    from jobs.train import build_trainer, check_recipe, with_id_classes
    from kdtrack.checkpoint import CHECKPOINT_NAME

    from jobs._storage import use_env

    use_env(mlflow_env or {})
    context = ray.tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    client = MlflowClient(tracking_uri=mlflow_uri)
    base, train_fn, loop_data, videos = recipes[trial_recipe(next(iter(recipes)), values)]
    base_cfg = config_from_dict(base)
    # a run of this trial already: Tune started it again (tune.trial_max_failures) after its process died or raised
    earlier = trial_child_run(client, experiment_id, parent_run_id, trial_id)
    if earlier is not None and earlier.data.tags.get(OUTCOME_TAG) == "failed":
        raise TrialFailedBefore(earlier.data.tags.get(ERROR_TAG, "failed"))  # the same error, not a second training
    run_id = ""
    try:
        cfg = trial_config(base_cfg, values, trial_run_name(trial_id))
        clustering = None
        if videos is not None:  # the same values cluster the same labels again
            cfg, train_fn, loop_data, clustering = relabelled_data(cfg, videos, Path(labels_root) / trial_id)
        cfg = with_id_classes(cfg, loop_data)
        if earlier is not None:  # its process died (a lost node): Ray Train resumes the run from its storage
            run_id = earlier.info.run_id
            client.set_tag(run_id, RESTARTS_TAG, str(int(earlier.data.tags.get(RESTARTS_TAG, "0")) + 1))
        else:
            run_id = create_mlflow_run(client, experiment_id, cfg, trial_name,
                                       {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id,
                                        "kdtrack.ray_run": cfg.train.run_name})
        if clustering is not None:  # the trial's own pseudo-labels: their counts, and the files, with the run
            for key in ("pseudo_ids", "videos_kept", "outlier_fraction", "boxes"):
                client.log_metric(run_id, f"pseudo/{key}", float(clustering[key]))
            for key, value in clustering["pseudo"].items():  # a training run leaves pseudo.* out of its params
                client.log_param(run_id, f"pseudo.{key}", str(value))
            labels_dir = Path(cfg.data.pseudo_labels).parent
            for path in sorted(labels_dir.iterdir()):
                client.log_artifact(run_id, str(path), "pseudo_labels")
        check_recipe(cfg)  # a bad sampled value fails this trial, not the sweep
        trainer = build_trainer(cfg, train_fn, loop_data, mlflow_uri=mlflow_uri, storage=storage,
                                mlflow_run_id=run_id, callbacks=[TuneReportCallback()])
        result = trainer.fit()
    except BaseException as exc:
        if not run_id:  # the values did not even make a config: still one child run, with the error
            run_id = client.create_run(experiment_id, run_name=trial_name,
                                       tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id}).info.run_id
            for key, value in values.items():
                if value is not None:
                    client.log_param(run_id, key, str(_plain(value)))
        client.set_tag(run_id, OUTCOME_TAG, "failed")
        client.set_tag(run_id, ERROR_TAG, error_line(exc)[:5000])
        client.set_tag(run_id, "kdtrack.tune.traceback", f"{type(exc).__name__}: {exc}"[-5000:])
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_tag(run_id, OUTCOME_TAG, "completed")
    if result.checkpoint is not None:  # the trial's last checkpoint as its run's model (local or --storage)
        with result.checkpoint.as_directory() as folder:
            log_trained_model(mlflow_uri, run_id, Path(folder) / CHECKPOINT_NAME, cfg,
                              iteration=int(result.metrics.get("iteration", 0) or 0))


# --------------------------------------------------------------------------- the sweep (driver)


class _TrialLog:
    """Tune callback on the driver: what became of every trial (id, values, status, last report, error)."""

    def __init__(self) -> None:
        from ray.tune import Callback

        log = self

        class Recorder(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                log.record(trial, error="")

            def on_trial_error(self, iteration, trials, trial, **info):
                log.record(trial, error=str(getattr(trial, "error_file", "") or "error"))

            def on_trial_recover(self, iteration, trials, trial, **info):
                log.restarts[trial.trial_id] = log.restarts.get(trial.trial_id, 0) + 1

        self.callback = Recorder()
        self.trials: dict[str, dict[str, Any]] = {}
        self.restarts: dict[str, int] = {}  # trial id -> times Tune started it again (tune.trial_max_failures)

    def record(self, trial: Any, error: str) -> None:
        last = dict(trial.last_result or {})
        self.trials[trial.trial_id] = {
            "trial_id": trial.trial_id, "values": {k: _plain(v) for k, v in trial.config.items()},
            "iteration": int(last.get("iteration", 0) or 0), "failed": bool(error), "error_file": error,
            "restarts": self.restarts.get(trial.trial_id, 0),
            "last_result": {k: _plain(v) for k, v in last.items() if isinstance(_plain(v), (int, float, str))},
        }


def validation_baselines(spec: SweepSpec) -> dict[str, dict[str, float]]:
    """``{embedder: {metric: value}}``: the random-init student (the trials' starting weights when the
    config has no pretrained weights) and the colour histogram, plus chance, on the validation boxes
    the trials are scored on. A trial that does not beat these has not learned identity. In a sweep across
    recipes whose networks differ, each other network's random init is ``random_<recipe>``."""
    from kdtrack.metrics.reid_probe import CHANCE, baseline_embedders, evaluate_reid_box_sets, load_reid_box_sets

    cfg, tc = spec.base, spec.base.train
    embedders = baseline_embedders(cfg, "cpu", baselines=spec.tune.baselines)
    if "random" in spec.tune.baselines:
        networks = [cfg.model]
        for name, arm in spec.recipes.items():
            if arm.base.model not in networks:
                networks.append(arm.base.model)
                embedders[f"random_{name}"] = baseline_embedders(arm.base, "cpu", baselines=("random",))["random"]
    box_sets = load_reid_box_sets(tc.val_root or cfg.data.root, cfg.eval, split=tc.val_split,
                                  protocols=(spec.protocol,))
    rows = evaluate_reid_box_sets(embedders, box_sets, cfg.eval)[spec.protocol]
    return {name: {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
            for name, row in rows.items() if name in embedders or name == CHANCE}


def baseline_line(baselines: dict[str, dict[str, float]], metric: str, digits: int = 4) -> str:
    """``same validation boxes: random 0.1152, colour 0.2239, chance 0.04987`` for the objective's metric."""
    key = metric.split("/")[-1]
    return "same validation boxes: " + ", ".join(f"{name} {row[key]:.{digits}g}" for name, row in baselines.items()
                                                 if key in row)


def summary_frame(uri: str, experiment_id: str, parent_run_id: str, spec: SweepSpec) -> Any:
    """One row per trial from ``mlflow.search_runs`` (children of the sweep's parent run), best first."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    metric = f"metrics.{spec.tune.metric}"
    columns = {"tags.mlflow.runName": "trial", f"tags.{OUTCOME_TAG}": "outcome", "status": "status",
               **{f"params.{k}": k for k in spec.searched}, "metrics.tune/last_iteration": "iterations",
               metric: spec.tune.metric}
    for column in columns:
        if column not in runs.columns:
            runs[column] = None
    frame = runs[list(columns)].rename(columns=columns)
    if spec.recipes:  # a field another recipe searched: this trial's config value, not a drawn one
        for field in spec.searched:
            if field != RECIPE_FIELD:
                drawn = frame[RECIPE_FIELD].map(lambda r, f=field: r in spec.recipes and f in spec.recipes[r].search)
                frame[field] = frame[field].where(drawn, None)
    return frame.sort_values(spec.tune.metric, ascending=spec.tune.mode == "min", na_position="last")


def format_summary(frame: Any, baselines: dict[str, dict[str, float]], metric: str) -> str:
    """The summary frame as a table (numbers to 4 significant digits), then the baselines' objective."""
    from tabulate import tabulate

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        if not math.isfinite(number):
            return str(value)
        return str(int(number)) if number.is_integer() and abs(number) < 1e9 else f"{number:.4g}"

    rows = [[cell(v) for v in row] for row in frame.astype(object).values.tolist()]
    lines = [tabulate(rows, headers=list(frame.columns), tablefmt="github", disable_numparse=True)]
    if baselines:
        lines.append(baseline_line(baselines, metric))
    return "\n".join(lines)


def error_line(exc: BaseException) -> str:
    """The root cause of a failed trial in one line: the last ``SomethingError: ...`` line of the message
    (a Ray Train ``WorkerGroupError`` carries the worker's traceback), else the exception itself."""
    import re

    text = f"{type(exc).__name__}: {exc}"
    causes = re.findall(r"^\s*(?:\S*\.)?(\w+(?:Error|Exception|Interrupt): .+)$", str(exc), flags=re.MULTILINE)
    return causes[-1].strip() if causes else text.splitlines()[0]


def _write_best_config(out: Path, spec: SweepSpec, best_values: dict[str, Any], best_value: float,
                       trial_id: str, baselines: dict[str, dict[str, float]]) -> Path:
    arm = spec.arm(trial_recipe(spec.base.train.recipe, best_values))
    cfg = trial_config(arm.base, best_values, "best")
    if reclusters(arm):  # the pseudo-labels that trial clustered and trained on
        from jobs.pseudo_label import LABELS_FILE

        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, pseudo_labels=str(out / LABELS_DIR / trial_id / LABELS_FILE)))
    header = (f"# Best trial {trial_id} of the sweep {spec.source}: {spec.tune.metric} = {best_value:.4f} "
              f"({spec.tune.mode}) at its last report.\n"
              + "".join(f"#   {k}: {v}\n" for k, v in best_values.items() if v is not None)
              + (f"# {baseline_line(baselines, spec.tune.metric)}\n" if baselines else "")
              + "# python -m jobs.train --config <this file> --out O\n")
    path = out / BEST_CONFIG
    dump_config(cfg, path, header=header)
    return path


def _create_parent_run(client: Any, experiment_id: str, spec: SweepSpec, baselines: dict[str, dict[str, float]],
                       uri: str) -> tuple[str, str]:
    """The sweep's MLflow parent run, with the sweep's settings as params and the baselines as metrics:
    ``(sweep name, run id)``."""
    sweep = spec.tune
    sweep_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(experiment_id, run_name=sweep_name,
                               tags={"kdtrack.sweep": spec.source, "kdtrack.recipe": "+".join(spec.arms)})
    parent_id = parent.info.run_id
    params: dict[str, Any] = {f"tune.{k}": v for k, v in dataclasses.asdict(sweep).items()}
    for name, arm in spec.arms.items():  # a sweep across recipes: each recipe's own, under its name
        prefix = f"{name}." if spec.recipes else ""
        params.update({f"{prefix}search.{k}": d.describe() for k, d in arm.search.items()})
        params.update({f"{prefix}set.{t.split('=', 1)[0]}": t.split("=", 1)[1] for t in arm.fixed})
        params[f"{prefix}train_config"] = arm.train_config
    if spec.recipes:
        params[f"search.{RECIPE_FIELD}"] = spec.search[RECIPE_FIELD].describe()
    for key, value in params.items():
        client.log_param(parent_id, key, str(value)[:6000])
    for name, row in baselines.items():
        for metric, value in row.items():
            if math.isfinite(value):
                client.log_metric(parent_id, f"baseline/{name}/{metric}", value)
    per = f" per recipe ({', '.join(spec.recipes)})" if spec.recipes else ""
    print(f"sweep {sweep_name}: {sweep.num_samples} trial(s){per} of {spec.source}, objective {sweep.metric} "
          f"({sweep.mode}), {sweep.searcher} search, {sweep.scheduler} scheduler; MLflow parent run {parent_id} "
          f"({uri})", flush=True)
    return sweep_name, parent_id


def _log_best(client: Any, experiment_id: str, parent_id: str, out: Path, spec: SweepSpec, best: dict[str, Any],
              baselines: dict[str, dict[str, float]]) -> Path:
    """The best trial on the parent run (its config file, objective, values and model) and the run closed;
    ``best["model_uri"]`` is set. Returns the best config's path."""
    best_path = _write_best_config(out, spec, best["values"], best["objective"], best["trial_id"], baselines)
    client.log_artifact(parent_id, str(best_path))
    client.log_metric(parent_id, f"best/{spec.tune.metric}", best["objective"])
    client.set_tag(parent_id, "kdtrack.tune.best_trial", best["trial_id"])
    for key, value in best["values"].items():
        if value is not None:
            client.log_param(parent_id, f"best.{key}", str(value))
    best["model_uri"] = _link_best_trial(client, experiment_id, parent_id, spec, best)
    client.set_terminated(parent_id)
    return best_path


def main(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from mlflow.tracking import MlflowClient
    from ray import tune

    from jobs._ray import ensure_ray, refuse_unless_joining
    from jobs._mlflow_train import check_artifact_location, mlflow_experiment_id
    from jobs._storage import check_storage, resolve_storage, s3_env
    from jobs.train import training_data
    from kdtrack.io import atomic_write_json, atomic_write_text
    from tune.spaces import param_space, scheduler, search_algorithm

    spec = resolve_sweep(args)
    sweep = spec.tune
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.mlflow_uri or spec.base.mlflow.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    storage = resolve_storage(args.storage, out)
    check_storage(storage)  # before any trial starts: one line naming a bad URI or a missing bucket
    check_artifact_location(spec.base)
    if sweep.final_eval:  # before any trial: the test reports it will read are there
        from jobs._final_eval import check_final_inputs

        check_final_inputs(spec.base, sweep.final_eval, spec.source)
    search_alg, trial_scheduler = search_algorithm(spec), scheduler(spec)
    from jobs.pseudo_label import cached_videos

    recipes = {}
    for name, arm in spec.arms.items():  # a re-clustering sweep ships the cached embeddings, read once, to trials
        videos = cached_videos(Path(arm.base.data.pseudo_labels).parent) if reclusters(arm) else None
        recipes[name] = (config_to_dict(arm.base), *training_data(arm.base), videos)

    ray = ensure_ray()
    cluster = ray.cluster_resources()
    try:
        check_every_resources(spec, float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0)))
    except ConfigError as exc:
        refuse_unless_joining(exc)

    baselines = validation_baselines(spec)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = mlflow_experiment_id(client, sweep.experiment or spec.base.mlflow.experiment, uri,
                                         spec.base.mlflow.artifact_location)
    sweep_name, parent_id = _create_parent_run(client, experiment_id, spec, baselines, uri)

    trial_log = _TrialLog()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, recipes=recipes, mlflow_uri=uri, labels_root=str(out / LABELS_DIR), experiment_id=experiment_id, parent_run_id=parent_id,
                             storage=storage, mlflow_env=s3_env(spec.base.mlflow.artifact_location)),
        {"CPU": sweep.trial_cpus})
    tuner = tune.Tuner(
        trainable, param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    search_alg=search_alg, scheduler=trial_scheduler,
                                    max_concurrent_trials=None if sweep.searcher == "random"
                                    else sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name=sweep_name, **storage.ray_kwargs(), callbacks=[trial_log.callback],
                                  failure_config=tune.FailureConfig(max_failures=sweep.trial_max_failures,
                                                                    fail_fast=False), verbose=1),
    )
    start = time.time()
    try:
        results = tuner.fit()
    except BaseException as exc:
        client.set_tag(parent_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        raise
    elapsed = time.time() - start

    trials = _reconcile_children(client, experiment_id, parent_id, trial_log, spec)
    best = _best(trials, spec)
    summary = summary_frame(uri, experiment_id, parent_id, spec)
    table = format_summary(summary, baselines, sweep.metric)
    print(table, flush=True)
    atomic_write_text(out / SUMMARY_CSV, summary.to_csv(index=False))
    client.log_artifact(parent_id, str(out / SUMMARY_CSV))
    client.log_metric(parent_id, "tune/trials_failed", sum(t["outcome"] == "failed" for t in trials))
    client.log_metric(parent_id, "tune/trials_stopped_early", sum(t["outcome"] == "stopped_early" for t in trials))
    client.log_metric(parent_id, "tune/seconds", elapsed)
    record: dict[str, Any] = {"sweep": sweep_name, "source": spec.source, "metric": sweep.metric, "mode": sweep.mode,
                              "mlflow_uri": uri, "mlflow_parent_run_id": parent_id, "seconds": elapsed,
                              "baselines": baselines, "trials": trials, "best": None,
                              "tune_errors": len(results.errors)}
    if best is None:
        client.set_tag(parent_id, ERROR_TAG, "no trial finished with a finite objective")
        client.set_terminated(parent_id, status="FAILED")
        atomic_write_json(out / SWEEP_JSON, record)
        print(f"no trial finished with a finite {sweep.metric}; see {out / SWEEP_JSON}", flush=True)
        return {**record, "exit_code": 1}
    best_path = _log_best(client, experiment_id, parent_id, out, spec, best, baselines)
    record["best"] = {**best, "config": str(best_path)}
    experiment = sweep.experiment or spec.base.mlflow.experiment
    if sweep.final_eval:  # each recipe's best trial, picked on validation, scored once on the test reports
        from jobs._final_eval import evaluate_best_trials, last_checkpoint

        by_recipe: dict[str, list[dict[str, Any]]] = {}
        for trial in trials:
            by_recipe.setdefault(trial_recipe(spec.base.train.recipe, trial["values"]), []).append(trial)
        # _best's pick within each recipe: its objective at the last report, the one its last checkpoint carries
        picked = {recipe: found for recipe, group in by_recipe.items() if (found := _best(group, spec)) is not None}
        checkpoints = {t["trial_id"]: last_checkpoint(storage, trial_run_name(t["trial_id"])) for t in picked.values()}
        record["final"] = evaluate_best_trials(picked, checkpoints, spec.base, sweep.final_eval, out, uri, experiment,
                                               protocols=held_out_protocols(spec))
    if spec.recipes:  # the recipes side by side: out/compare/compare.md and its plots, logged to the parent run
        from jobs import compare

        report = compare.main(["--mlflow-uri", uri, "--experiment", experiment,
                               "--parent-run", parent_id, "--metric", sweep.metric, "--mode", sweep.mode,
                               "--out", str(out / COMPARE_DIR)])
        record["compare"] = {k: report[k] for k in ("files", "winner", "hybrid", "final", "baselines")}
    atomic_write_json(out / SWEEP_JSON, record)
    print(f"best trial {best['trial_id']}: {sweep.metric} = {best['objective']:.4f} with "
          + ", ".join(f"{k}={v}" for k, v in best["values"].items() if v is not None)
          + f"\nbest config: {best_path}\n({len(trials)} trials in {elapsed:.0f} s; "
          f"mlflow ui --backend-store-uri {uri})", flush=True)
    return {**record, "exit_code": 0}


def _link_best_trial(client: Any, experiment_id: str, parent_id: str, spec: SweepSpec, best: dict[str, Any]) -> str:
    """The parent run points at its best trial: the child's run id as a tag and a link in the run's
    description, and the model that trial logged as one of the parent's outputs (so the parent lists it
    and ``runs:/<parent>/student`` fetches it). Returns its ``models:/`` URI (``""`` when it logged none)."""
    from mlflow.entities import LoggedModelOutput

    from jobs._mlflow_train import MODEL_TAG

    child = best.get("mlflow_run_id", "")
    if not child:
        return ""
    client.set_tag(parent_id, BEST_RUN_TAG, child)
    client.set_tag(parent_id, NOTE_TAG, f"Best trial: [{best['trial_id']}](#/experiments/{experiment_id}/runs/"
                                        f"{child}), {spec.tune.metric} = {best['objective']:.4f}")
    model_uri = client.get_run(child).data.tags.get(MODEL_TAG, "")
    if model_uri:
        client.set_tag(parent_id, MODEL_TAG, model_uri)
        client.log_outputs(parent_id, [LoggedModelOutput(model_uri[len("models:/"):], step=int(best["iteration"]))])
    return model_uri


def _reconcile_children(client: Any, experiment_id: str, parent_id: str, trial_log: _TrialLog,
                        spec: SweepSpec) -> list[dict[str, Any]]:
    """Each trial's outcome in its child run. A trial ASHA stopped never reached the end of its training
    loop, so its run is still RUNNING: it becomes KILLED, ``outcome=stopped_early``."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                              max_results=10000)
    by_trial = {run.data.tags.get(TRIAL_TAG, ""): run for run in runs}
    max_t = spec.base.train.max_iterations
    trials = []
    for trial_id, info in sorted(trial_log.trials.items()):
        run = by_trial.get(trial_id)
        objective = info["last_result"].get(spec.tune.metric)
        if info["failed"]:
            outcome = "failed"
        elif info["iteration"] < max_t:
            outcome = "stopped_early"
        else:
            outcome = "completed"
        if run is not None:  # Tune may end a trial (ASHA at a rung, or at max_t) before its own last words
            run_id = run.info.run_id
            client.log_metric(run_id, "tune/last_iteration", info["iteration"])
            client.set_tag(run_id, OUTCOME_TAG, outcome)
            status = {"stopped_early": "KILLED", "failed": "FAILED"}.get(outcome, "FINISHED")
            # a stopped trial's workers may have raised as Tune tore them down (FAILED): it was stopped, not
            # broken; one that still reached its last iteration first stays FINISHED
            if run.info.status == "RUNNING" or (outcome == "stopped_early" and run.info.status == "FAILED"):
                client.set_terminated(run_id, status=status)
        trials.append({**info, "outcome": outcome, "objective": objective,
                       "mlflow_run_id": run.info.run_id if run is not None else ""})
    return trials


def _best(trials: Sequence[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    """The trial with the best objective at its last report (failed trials and non-finite values left out)."""
    scored = [t for t in trials if t["outcome"] != "failed" and isinstance(t["objective"], (int, float))
              and math.isfinite(t["objective"])]
    if not scored:
        return None
    sign = 1.0 if spec.tune.mode == "max" else -1.0
    best = max(scored, key=lambda t: (sign * t["objective"], t["iteration"]))
    return {"trial_id": best["trial_id"], "values": best["values"], "objective": float(best["objective"]),
            "iteration": best["iteration"], "mlflow_run_id": best.get("mlflow_run_id", "")}


def cli(argv: Sequence[str] | None = None) -> int:
    try:
        result = main(get_args_parser().parse_args(argv))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(cli())
