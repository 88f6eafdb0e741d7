"""Train on Ray Train (V2 ``TorchTrainer``): the student (detection, contrastive (IDF) or KD recipe) or the Re-ID teacher.

    python -m jobs.train --config tiny --data-root DIR --out DIR [--set section.field=value ...]
                         [--mlflow-uri URI] [--smoke-test] [--init-from CKPT]

The driver reads the annotation files (``kdtrack.data.dataset.load_records``); a
Ray Data stream (``data_pipelines.training``, ``data.loader: ray``) decodes
and augments them in an actor pool and Ray Train splits it across the
workers, which run one loop for every recipe (``jobs._train_worker``; the
steps are ``kdtrack.engine``'s). ``data.loader: torch`` ships
the records to the workers instead, each feeding a plain ``DataLoader``
over its rank-strided shard (the debug path). Every ``checkpoint_every``
epochs rank 0 writes the full training state (``kdtrack.checkpoint``) and every rank reports; a rerun
with the same ``--out`` and ``train.run_name`` resumes from the last
checkpoint, and ``train.max_failures`` restarts a failed worker group from
it. Rank 0 logs params, loss terms (``train/<term>``) and the final
checkpoint path to MLflow (default: ``sqlite:///<out>/mlflow.db``). The
final checkpoint is copied to ``<out>/checkpoint.pt`` (atomically).

``--smoke-test``: ``train.max_iterations = train.smoke_iterations`` on just
enough records for that many iterations per epoch.

``train.recipe=video`` is IDF stage 2: the samples are two frames of a
pseudo-labelled clip (``data.pseudo_labels``, ``kdtrack.data.video_pairs``) whose
person keys are the pseudo ids; ``--init-from`` (``train.init_from``) starts
from the stage-1 network (weights only) and ``train.freeze`` keeps parts of
the student fixed (``kdtrack.engine.freeze_parts``; stage 2 freezes the
detection heads, stage 3 the body and the identity head).

``train.recipe=kd`` distils a trained teacher: online (``teacher.checkpoint``: each worker crops the
un-augmented canvas and runs the frozen teacher every step) or offline (``teacher.embeddings``: a store
written by ``jobs.teacher_embeddings``, checked here against every training box; each sample carries its
targets and no worker builds the teacher). With ``loss.eta < 1`` its hard labels are one class per
person of the training data (``kdtrack.data.dataset.dataset_wide_ids``).

``train.recipe=teacher`` trains the Re-ID teacher instead (the same loop, its own build step):
the driver reads ``<data-root>/market1501/bounding_box_train`` (or an unpacked
Market-1501 given as the data root) and labels the identities 0..C-1; the
stream's rows are whole P x K batches (``kdtrack.data.reid_data.PKBatches`` over
``PKSampler``; with ``data.loader: torch`` each worker draws its share in a
``DataLoader``), augmented as BoT does; the workers train with
label-smoothed ID cross-entropy + batch-hard triplet
(``kdtrack.engine.teacher_train_step``) under a warm-up + step schedule.
Checkpoints, resume, MLflow and ``<out>/checkpoint.pt`` are the student's;
its ``"model"`` is the teacher's state dict (classifier included, which
``kdtrack.inference.load_teacher`` drops).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from jobs._mlflow_train import check_artifact_location, create_driver_run, log_trained_model, mark_failed
from jobs._ray import refuse_unless_joining, sigint_handler_kept
from jobs._resume import check_resume
from jobs._storage import (
    Storage, StorageLost, as_uri, check_storage, fetch_to_local, is_storage_uri, resolve_storage, s3_env,
    storage_problem,
)
from jobs._train_worker import (  # noqa: F401  (perf_suffix .. build_kd_teacher: the worker's public names)
    MLFLOW_ENV_KEY, MLFLOW_RUN_ID_KEY, PIPELINE_KEY, build_kd_teacher, dataset_factory, next_report_iteration, perf_suffix, report_due,
    teacher_batches_factory, train_func,
)
from kdtrack.config import (
    Config, ConfigError, check_training, config_to_dict, load_config, preset_path, training_cpus,
    training_gpus, with_absolute_paths,
)
from kdtrack.recipes import check_recipe_rules, recipe_of
from kdtrack.recipes import RECIPES as RECIPE_TABLE

ID_CLASSES_KEY = "num_id_classes"  # loop data: identity classes found in the training records (KD hard labels, supervised)
LABELLED_KEY = "labelled_by_source"  # loop data: labelled boxes per data source (the supervised recipe's start-up check)
RECIPES = tuple(RECIPE_TABLE)  # every recipe this job runs, kdtrack.recipes' (the tests' two-worker matrix reads it)
FINAL_CHECKPOINT = "checkpoint.pt"
ITEM_KEYS = ("records", "clips")  # loop-config keys of the items the torch path ships to every worker
CHECKPOINT_TAG = "kdtrack.final_checkpoint"
# Train V2 patches print() in its workers to log through its own logger, and also prints when stdout is
# wrapped (it is, in a Ray worker): every progress line reached the driver twice. Plain print, once.
WORKER_RUNTIME_ENV = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
# Ray Train's own console lines: warnings and errors. At INFO it prints "Checkpoint successfully created at"
# and "Reporting training result" for every report, between the progress lines (its log files keep them).
RAY_TRAIN_LOG_LEVEL = "WARNING"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", help="preset name (kdtrack/configs/<name>.yaml) or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--data-root", default=None, help="dataset root (overrides data.root)")
    parser.add_argument("--out", required=True, help="output folder: Ray storage, MLflow db, checkpoint.pt")
    parser.add_argument("--mlflow-uri", default=None, help="absolute MLflow tracking URI (overrides mlflow.tracking_uri)")
    parser.add_argument("--smoke-test", action="store_true", help="a few iterations on a few records")
    parser.add_argument("--storage", default=None,
                        help="Ray Train storage: a path every node sees (NFS) or an object-store URI (s3://, gs://); "
                             "default <out>/ray_results (one machine)")
    parser.add_argument("--resume-policy", choices=("strict", "force"), default=None,
                        help="a resume with changed training fields: strict refuses it naming them (default, "
                             "train.resume_policy), force continues")
    parser.add_argument("--init-from", default=None,
                        help="start from this kdtrack checkpoint's network weights (fresh optimizer; train.init_from)")
    parser.add_argument("--register-model", default="", metavar="NAME",
                        help="register the trained model in MLflow's model registry as the next version of NAME "
                             "(models:/NAME/VERSION); it is logged to the run either way (runs:/<run id>/student)")
    return parser


def check_recipe(cfg: Config, source: str = "<config>", overrides: Sequence[str] = ()) -> None:
    """The config's ranges and training rules (``kdtrack.config.check_training``, naming ``source``), its
    recipe's (``kdtrack.recipes``: ``loss.id_mode`` and what the recipe refuses), then a student recipe's
    inputs: the validation boxes and the weights files, all on the driver before anything is reserved."""
    check_training(cfg, source, overrides)
    try:
        recipe = check_recipe_rules(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source != "<config>" else str(exc)) from None
    if not recipe.student:
        return
    check_validation(cfg)
    if cfg.train.init_from and not Path(cfg.train.init_from).is_file():
        raise ConfigError(f"train.init_from: {cfg.train.init_from} is not a file")
    if cfg.train.init_from and "identity" in cfg.train.freeze:  # IDF stage 3: the identity head is kept as trained
        from kdtrack.checkpoint import load_checkpoint

        trained = load_checkpoint(cfg.train.init_from, map_location="cpu")["config"].model.id_readout
        if trained != cfg.model.id_readout:
            raise ConfigError(f"train.init_from: {cfg.train.init_from} was trained with model.id_readout={trained} "
                              f"and this run keeps its identity head (train.freeze has identity), so its checkpoint "
                              f"must be read the same way: set model.id_readout={trained} "
                              f"(now {cfg.model.id_readout})")
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():  # on the driver, before any GPU is reserved
        raise ConfigError(f"model.pretrained: {cfg.model.pretrained} is not a file")


def check_validation(cfg: Config) -> None:
    """``train.val_*`` checked on the driver: the validation boxes are read here (a missing manifest or
    split is an error naming it before any worker starts; rank 0 reads them again)."""
    tc = cfg.train
    if not tc.val_protocols:
        return
    from kdtrack.formats.common import FormatError
    from kdtrack.metrics.reid_probe import PROTOCOLS, load_reid_box_sets

    unknown = [p for p in tc.val_protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"train.val_protocols: unknown {unknown} (known: {', '.join(PROTOCOLS)})")
    root = tc.val_root or cfg.data.root
    if not root:
        raise ConfigError("train.val_protocols needs a world holding person_search/: set train.val_root or "
                          "--data-root")
    try:
        box_sets = load_reid_box_sets(root, cfg.eval, split=tc.val_split, protocols=tc.val_protocols)
    except (OSError, FormatError, ValueError) as exc:
        raise ConfigError(f"train.val_protocols: {exc}") from None
    empty = [p for p, box_set in box_sets.items() if len(box_set) == 0]
    if empty:
        raise ConfigError(f"train.val_protocols: no labelled boxes for {empty} under {root} "
                          f"(split {tc.val_split!r})")


def check_teacher_store(cfg: Config, records: Any) -> None:
    """On the driver, KD from ``teacher.embeddings``: the store is this canvas's and this student's size,
    and every training box has its row; a missing one is an error naming the image."""
    from kdtrack.data.teacher_store import MissingTeacherEmbedding, read_teacher_table

    t, m = cfg.teacher, cfg.model
    expected = {"feature_dim": m.embedding_dim, "crop_height": t.crop_height, "crop_width": t.crop_width,
                "canvas_width": m.input_width, "canvas_height": m.input_height}
    try:
        table = read_teacher_table(t.embeddings, expected)
        table.check_records(records)
    except (MissingTeacherEmbedding, ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"teacher.embeddings: {exc}") from None
    print(f"teacher embeddings: {len(table.matrix)} boxes of {len(table.index)} images from {t.embeddings} "
          f"(teacher {table.meta['teacher_checkpoint']}, iteration {table.meta['teacher_iteration']})", flush=True)


def resolve_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={Path(args.data_root).resolve()}")
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={Path(args.init_from).resolve()}")
    if getattr(args, "resume_policy", None):
        overrides.append(f"train.resume_policy={args.resume_policy}")
    cfg = load_config(args.config, overrides)  # every field's range checked here, before anything else runs
    cfg = with_absolute_paths(cfg)  # the Ray workers' working directory is not the caller's
    if args.smoke_test:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iterations=cfg.train.smoke_iterations))
    check_recipe(cfg, str(preset_path(args.config)), overrides)
    return cfg


# --------------------------------------------------------------------------- driver


def _copy_final_checkpoint(result: Any, out: Path) -> Path:
    from kdtrack.io import atomic_save

    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        src = Path(ckpt_dir) / FINAL_CHECKPOINT
        with open(src, "rb") as handle:
            return atomic_save(out / FINAL_CHECKPOINT, lambda dst: shutil.copyfileobj(handle, dst))


def teacher_loop_data(cfg: Config) -> dict[str, Any]:
    """Driver side of the teacher recipe: the training crops with contiguous labels, and their class count."""
    from kdtrack.data.reid_data import contiguous_labels, read_training_crops

    if not cfg.data.root:
        raise ConfigError("train.recipe 'teacher' needs --data-root: a folder holding market1501/ (the synthetic "
                          "world) or an unpacked Market-1501 (bounding_box_train/, query/, bounding_box_test/)")
    crops, stats = read_training_crops(cfg.data.root, on_error=cfg.data.on_error)
    labels, class_pids = contiguous_labels([c.pid for c in crops])
    print(f"{len(crops)} training crops of {len(class_pids)} identities under {cfg.data.root} "
          f"({stats.filtered_records} junk / distractor crops left out)", flush=True)
    return {"crops": [{"path": c.path, "label": int(label)} for c, label in zip(crops, labels)],
            "num_classes": int(len(class_pids))}


def training_data(cfg: Config, smoke_test: bool = False) -> tuple[Any, dict[str, Any]]:
    """Driver side: ``(train_fn, loop data)`` of the recipe: the records (or crops, or pseudo-labelled clips)
    the workers train on. ``smoke_test`` keeps just enough of them for ``train.smoke_iterations``."""
    from kdtrack.data.dataset import dataset_wide_ids, load_records

    keep = cfg.train.smoke_iterations * cfg.train.batch_size_per_worker * cfg.train.num_workers
    recipe = recipe_of(cfg)
    if recipe.items == "crops":
        return train_func, teacher_loop_data(cfg)  # smoke test: every crop, few iterations
    if recipe.items == "clips":
        from kdtrack.data.video_pairs import pseudo_id_classes

        clips = clip_labels(cfg)
        clip_data: dict[str, Any] = {}
        if recipe.classifier:  # each pseudo-identity a class, counted over every clip (a smoke test's aside)
            clips, clip_data[ID_CLASSES_KEY] = pseudo_id_classes(clips)
        clips = clips[:keep] if smoke_test else clips
        _check_fills_a_batch(len(clips), "pseudo-labelled clips", cfg)
        print(f"{len(clips)} pseudo-labelled clips from {cfg.data.pseudo_labels} ({cfg.data.pair_sampling} frame "
              f"pairs), initialised from {cfg.train.init_from or 'random weights'}", flush=True)
        return train_func, {**clip_data, "clips": [dataclasses.asdict(c) for c in clips]}
    records = load_records(cfg)
    loop_data: dict[str, Any] = {}
    if recipe.classifier:  # counted over the whole data, a smoke test's few records aside
        loop_data[LABELLED_KEY] = labelled_boxes_by_source(records, cfg.data.sources)
    if smoke_test:  # the supervised recipe's few records are labelled ones where the data has them
        records = sorted(records, key=lambda r: not (r.ids >= 0).any()) if recipe.classifier == "always" else records
        records = records[:keep]
    print(f"{len(records)} training records from {', '.join(cfg.data.sources)} under {cfg.data.root}", flush=True)
    _check_fills_a_batch(len(records), "training records", cfg)
    if recipe.distils and cfg.teacher.embeddings:
        check_teacher_store(cfg, records)
    if recipe.classifier:  # KD hard labels (eta < 1, maybe in a sweep's trial), supervised
        records, loop_data[ID_CLASSES_KEY] = dataset_wide_ids(records)
    return train_func, {**loop_data, "records": [r.to_dict() for r in records]}


def clip_labels(cfg: Config) -> list[Any]:
    """The pseudo-labelled clips of ``data.pseudo_labels``: a local ``labels.parquet``, or one on object storage
    (``s3://bucket/prefix/labels.parquet``, from ``jobs.pseudo_label --storage``), fetched with the
    ``videos.parquet`` beside it to a temporary folder on this driver, which reads them; a missing object is a
    ConfigError naming it."""
    import tempfile

    from kdtrack.data.video_pairs import VIDEOS_FILE, read_clip_labels

    ref = cfg.data.pseudo_labels
    if not is_storage_uri(ref):
        return read_clip_labels(ref, cfg.data.root)
    parent, name = as_uri(ref).rstrip("/").rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="kdtrack-labels-") as tmp:
        try:
            for filename in (name, VIDEOS_FILE):
                fetch_to_local(f"{parent}/{filename}", tmp, filename)
        except FileNotFoundError as exc:
            raise ConfigError(f"data.pseudo_labels: {exc} (run jobs.pseudo_label --storage {parent} first)") from None
        return read_clip_labels(Path(tmp) / name, cfg.data.root)


def labelled_boxes_by_source(records: Sequence[Any], sources: Sequence[str]) -> dict[str, int]:
    """``{data source: boxes with an identity label}`` (``id >= 0``) of every ``data.sources`` entry."""
    counts = {source: 0 for source in sources}
    for record in records:
        source = record.source.split(":", 1)[0]  # person_search:<dataset name>
        counts[source] = counts.get(source, 0) + int((record.ids >= 0).sum())
    return counts


def with_id_classes(cfg: Config, loop_data: dict[str, Any]) -> Config:
    """The identity classifier's size: KD with hard labels (``loss.eta < 1``) and the supervised recipe.
    ``loss.num_id_classes`` 0 takes the number of people in the training data (``dataset_wide_ids``); a
    smaller one is refused (a person would have no class). Training data without a single identity label is
    refused, naming each source and what it holds."""
    found = loop_data.get(ID_CLASSES_KEY)
    recipe = recipe_of(cfg)
    supervised = recipe.classifier == "always"
    people = ("pseudo-identities of the clips (jobs.pseudo_label's clusters)" if recipe.items == "clips"
              else "people of the training data (one class per source, sequence and track id)")
    if found is None or (cfg.loss.eta >= 1.0 and not supervised):
        return cfg
    labelled = loop_data.get(LABELLED_KEY, {})
    if found == 0:
        what = (f"train.recipe '{recipe.name}' classifies identities" if supervised
                else f"loss.eta {cfg.loss.eta} < 1 needs identity labels")
        counts = ", ".join(f"{source}: {n}" for source, n in labelled.items()) or ", ".join(cfg.data.sources)
        raise ConfigError(f"{what}, but no training box of data.sources has one (labelled boxes per source: "
                          f"{counts}); CrowdHuman and COCO carry no identities: add a source that does "
                          f"(--set data.sources=[crowdhuman,person_search,mot17])")
    if supervised:
        unlabelled = [source for source, n in labelled.items() if n == 0]
        if unlabelled:
            print(f"train.recipe '{recipe.name}': {', '.join(unlabelled)} carry no identity labels and train "
                  f"detection only", flush=True)
    if cfg.loss.num_id_classes == 0:
        print(f"loss.num_id_classes = {found}: the {people}", flush=True)
        return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, num_id_classes=found))
    if cfg.loss.num_id_classes < found:
        raise ConfigError(f"loss.num_id_classes {cfg.loss.num_id_classes} < the {found} {people}: set it to "
                          f"{found}, or 0 to take the data's count")
    return cfg


def _check_fills_a_batch(count: int, what: str, cfg: Config) -> None:
    """On the driver, before any worker (or GPU) is reserved: each worker needs one full batch."""
    need = cfg.train.batch_size_per_worker * cfg.train.num_workers
    if count < need:
        raise ConfigError(f"{count} {what} do not fill one batch: train.batch_size_per_worker "
                          f"{cfg.train.batch_size_per_worker} x train.num_workers {cfg.train.num_workers} = {need} "
                          f"(check data.root / data.sources / data.max_records)")


def check_cluster_cpus(cfg: Config, ray: Any) -> None:
    """Train workers and Ray Data decode actors must fit the cluster's CPUs (``refuse_unless_joining``)."""
    need, have = training_cpus(cfg), float(ray.cluster_resources().get("CPU", 0.0))
    if need <= have + 1e-9:
        return
    tc, dc = cfg.train, cfg.data
    refuse_unless_joining(ConfigError(
        f"the run needs {need:g} CPUs (train.num_workers {tc.num_workers} x train.cpus_per_worker "
        f"{tc.cpus_per_worker:g} + data.map_actors {dc.map_actors} x data.map_num_cpus {dc.map_num_cpus:g} "
        f"for the Ray Data decode actors) but the cluster has {have:g}: lower train.cpus_per_worker or "
        f"data.map_num_cpus"))


def check_cluster_gpus(cfg: Config, ray: Any) -> None:
    """With ``train.use_gpu`` each train worker takes a whole GPU: more workers than the cluster has GPUs
    would leave Ray Train retrying to schedule them forever (a silent hang, the GPU twin of the CPU check;
    ``refuse_unless_joining``)."""
    need = training_gpus(cfg)
    if need == 0:  # a CPU run asks the cluster nothing
        return
    have = float(ray.cluster_resources().get("GPU", 0.0))
    if need <= have + 1e-9:
        return
    tc = cfg.train
    refuse_unless_joining(ConfigError(
        f"the run needs {need:g} GPUs (train.num_workers {tc.num_workers} x 1 GPU per worker with train.use_gpu) "
        f"but the cluster has {have:g}: lower train.num_workers to {int(have + 1e-9)} or less"
        + ("" if have >= 1 else ", or set train.use_gpu=false")))


def build_trainer(cfg: Config, train_fn: Any, loop_data: dict[str, Any], *, mlflow_uri: str, storage: Storage,
                  mlflow_run_id: str = "", callbacks: list | None = None) -> Any:
    """The ``TorchTrainer`` of one training run (``jobs.train``, and each ``jobs.tune`` trial with a
    ``TuneReportCallback``): Ray Train run ``train.run_name`` under ``storage`` (``jobs._storage``: an object
    store's filesystem travels with the run config to every node); ``mlflow_run_id``, a run made by the
    caller, is the one the workers log into (a resume reopens its checkpoint's run)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = None
    if cfg.data.loader == "ray":
        from data_pipelines.training import data_config, training_stream

        if not recipe_of(cfg).student:  # the teacher: one row per P x K batch, already in epoch order
            factory, num_items = teacher_batches_factory(cfg, loop_data)
            stream = training_stream(cfg, factory, num_items, rows_per_batch=1, shuffle=False)
        else:
            factory, num_items = dataset_factory(cfg, loop_data)
            stream = training_stream(cfg, factory, num_items)
        loop_data = {k: v for k, v in loop_data.items() if k not in ITEM_KEYS}  # the decode actors hold them
        loop_data[PIPELINE_KEY] = stream.worker_args()
        datasets = {"train": stream.dataset}
    return TorchTrainer(
        train_fn,
        datasets=datasets,
        dataset_config=data_config(cfg) if datasets else None,
        train_loop_config={
            "config": config_to_dict(cfg),
            **loop_data,
            "mlflow_uri": mlflow_uri,
            MLFLOW_ENV_KEY: s3_env(cfg.mlflow.artifact_location),  # rank 0 may create the run (config.yaml)
            "ray_run_name": cfg.train.run_name,
            MLFLOW_RUN_ID_KEY: mlflow_run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            **storage.ray_kwargs(), name=cfg.train.run_name,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None),
            worker_runtime_env=WORKER_RUNTIME_ENV,
            logging_config=ray.train.LoggingConfig(log_level=RAY_TRAIN_LOG_LEVEL),
            callbacks=callbacks or None,
        ),
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    from jobs._cli import work_phase
    from jobs._ray import ensure_ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    cfg = resolve_config(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    # a misspelled URI, a missing bucket or an endpoint that does not answer: one line now, not a worker error
    storage = resolve_storage(getattr(args, "storage", None), out)
    check_storage(storage)
    check_artifact_location(cfg)
    train_fn, loop_data = training_data(cfg, args.smoke_test)
    cfg = with_id_classes(cfg, loop_data)
    resuming = check_resume(cfg, storage)

    ray = ensure_ray()  # joins RAY_ADDRESS when set, else starts a local cluster
    check_cluster_cpus(cfg, ray)
    check_cluster_gpus(cfg, ray)
    # a new run's MLflow run is made here, once; a resume reopens the run its checkpoint names (rank 0)
    run_id = "" if resuming else create_driver_run(cfg, uri)
    trainer = build_trainer(cfg, train_fn, loop_data, mlflow_uri=uri, storage=storage, mlflow_run_id=run_id)
    start = time.time()
    with work_phase():  # from here a missing file is a failed run (exit 1), not bad input (exit 2)
        try:
            with sigint_handler_kept():
                result = trainer.fit()
        except BaseException as exc:
            if run_id:
                mark_failed(uri, run_id, exc)
            lost = storage_problem(storage) if isinstance(exc, Exception) else None
            if lost:  # Ray reports a failed checkpoint upload as a worker error, several wrappers deep
                raise StorageLost(f"training failed: {lost}; it answered at start-up, so it went away during "
                                  f"the run (this run deletes no checkpoint: bring the storage back and rerun the "
                                  f"same command to resume from its newest one)") from exc
            raise
        elapsed = time.time() - start
        final = _copy_final_checkpoint(result, out)
        run_id = str(result.metrics.get(MLFLOW_RUN_ID_KEY, "")) or run_id
        if run_id:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            client.set_tag(run_id, CHECKPOINT_TAG, str(final))
            client.set_tag(run_id, "kdtrack.ray_checkpoint", storage.uri_of(result.checkpoint.path))
        print(f"final checkpoint: {final}  (fit {elapsed:.1f} s)", flush=True)
        model_uri = log_trained_model(uri, run_id, final, cfg, iteration=int(result.metrics.get("iteration", 0) or 0),
                                      register_as=getattr(args, "register_model", "")) if run_id else ""
        return {"checkpoint": str(final), "metrics": dict(result.metrics), "mlflow_uri": uri,
                "mlflow_run_id": run_id, "mlflow_model_uri": model_uri, "fit_seconds": elapsed,
                "ray_checkpoint": storage.uri_of(result.checkpoint.path)}


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.train``: exit 2 with one line naming the key or file when the config or an input file
    is bad (found on the driver before any worker starts), the batch jobs' rule (``jobs._cli``)."""
    from jobs._cli import run_cli

    return run_cli(lambda a: main(get_args_parser().parse_args(a)), argv, "train", partial_failure=())


if __name__ == "__main__":
    sys.exit(cli())
