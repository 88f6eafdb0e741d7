"""Train the student on Ray Train (V2 ``TorchTrainer``): detection, contrastive (IDF) or KD recipe.

    python -m jobs.train --config tiny --data-root DIR --out DIR [--set section.field=value ...]
                         [--mlflow-uri URI] [--smoke-test]

The driver reads the annotation files (``kdtrack.data.load_records``) and
ships the records to the workers; each worker feeds a plain torch
``DataLoader`` over its rank-strided shard (``DistributedSampler``, same
length on every rank) through ``kdtrack.data`` and trains with
``kdtrack.engine``. (Ray Data streaming of decode + augmentation is the
next slice.) Every ``checkpoint_every`` epochs rank 0 writes the full
training state (``kdtrack.checkpoint``) and every rank reports; a rerun
with the same ``--out`` and ``train.run_name`` resumes from the last
checkpoint, and ``train.max_failures`` restarts a failed worker group from
it. Rank 0 logs params, loss terms (``train/<term>``) and the final
checkpoint path to MLflow (default: ``sqlite:///<out>/mlflow.db``). The
final checkpoint is copied to ``<out>/checkpoint.pt`` (atomically).

``--smoke-test``: ``train.max_iterations = train.smoke_iterations`` on just
enough records for that many iterations per epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdtrack.config import Config, ConfigError, config_from_dict, config_to_dict, flatten_config, load_config

RECIPE_ID_MODE = {"detection": "none", "contrastive": "contrastive", "kd": "kd"}  # recipes this job runs
FINAL_CHECKPOINT = "checkpoint.pt"
RAY_STORAGE_DIR = "ray_results"
MLFLOW_RUN_ID_KEY = "mlflow_run_id"
CHECKPOINT_TAG = "kdtrack.final_checkpoint"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", help="preset name (kdtrack/configs/<name>.yaml) or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--data-root", default=None, help="dataset root (overrides data.root)")
    parser.add_argument("--out", required=True, help="output folder: Ray storage, MLflow db, checkpoint.pt")
    parser.add_argument("--mlflow-uri", default=None, help="absolute MLflow tracking URI (overrides mlflow.tracking_uri)")
    parser.add_argument("--smoke-test", action="store_true", help="a few iterations on a few records")
    return parser


def check_recipe(cfg: Config) -> None:
    """The recipe must be one this job runs and agree with ``loss.id_mode`` (and KD dims with the teacher)."""
    recipe = cfg.train.recipe
    if recipe not in RECIPE_ID_MODE:
        raise ConfigError(f"train.recipe '{recipe}' is not run by jobs.train (known: {', '.join(RECIPE_ID_MODE)})")
    if cfg.loss.id_mode != RECIPE_ID_MODE[recipe]:
        raise ConfigError(f"train.recipe '{recipe}' needs loss.id_mode={RECIPE_ID_MODE[recipe]}, "
                          f"got loss.id_mode={cfg.loss.id_mode} (add --set loss.id_mode={RECIPE_ID_MODE[recipe]})")
    if recipe == "kd":
        from kdtrack.models import teacher_feature_dim

        dim = teacher_feature_dim(cfg.teacher)
        if cfg.model.embedding_dim != dim:
            raise ConfigError(f"train.recipe 'kd': model.embedding_dim ({cfg.model.embedding_dim}) must equal the "
                              f"teacher's feature dimension ({dim})")


def resolve_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={Path(args.data_root).resolve()}")
    cfg = load_config(args.config, overrides)
    if args.smoke_test:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iterations=cfg.train.smoke_iterations))
    check_recipe(cfg)
    return cfg


# --------------------------------------------------------------------------- worker


def _mlflow_start(cfg: Config, uri: str, ray_run_name: str) -> Any:
    """Rank 0 only: a client and a new run with every config field as a param."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        artifact_root = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside the db, not in the worker's CWD
            artifact_root = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        experiment_id = client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_root)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=cfg.mlflow.run_name or ray_run_name,
                            tags={"kdtrack.recipe": cfg.train.recipe, "kdtrack.ray_run": ray_run_name})
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in flatten_config(cfg).items()]
    batch_limit = 100  # MLflow's log_batch cap on params per call
    for start in range(0, len(params), batch_limit):
        client.log_batch(run.info.run_id, params=params[start:start + batch_limit])
    return client, run.info.run_id


def train_func(loop_config: dict[str, Any]) -> None:
    """Per-worker training loop (Ray Train V2)."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    from mlflow.entities import Metric
    from torch.utils.data import DataLoader, DistributedSampler

    from kdtrack.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
    from kdtrack.data import TrainingDataset, collate
    from kdtrack.engine import amp_enabled, build_optimizer, build_scheduler, total_iterations, train_one_epoch
    from kdtrack.losses import Criterion, all_gather_cat
    from kdtrack.models import build_student, build_teacher, freeze_teacher
    from kdtrack.structures import ImageRecord

    cfg = config_from_dict(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)

    model = ray.train.torch.prepare_model(build_student(cfg.model))
    criterion = Criterion.from_config(cfg, gather_fn=all_gather_cat if world > 1 else None).to(device)
    teacher = None
    if tc.recipe == "kd":
        teacher = freeze_teacher(build_teacher(cfg.teacher)).to(device)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), tc)

    records = [ImageRecord.from_dict(r) for r in loop_config["records"]]
    dataset = TrainingDataset(records, cfg, views=2 if tc.recipe == "contrastive" else 1,
                              with_original=tc.recipe == "kd")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=tc.batch_size_per_worker, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.loader_workers, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"{len(records)} records on {world} worker(s) do not fill one batch of "
                         f"{tc.batch_size_per_worker}")
    total = total_iterations(tc, len(loader))
    scheduler = build_scheduler(optimizer, tc, total)
    use_amp = amp_enabled(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start_epoch, iteration = 0, 0
    resumed = {"resumed_from_iteration": -1.0, "resumed_queue_fill": -1.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(ckpt_dir, map_location=device)
        start_epoch, iteration = restore_training_state(
            state, model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        resumed["resumed_from_iteration"] = float(iteration)
        if criterion.contrastive is not None:
            resumed["resumed_queue_fill"] = float(criterion.contrastive.queue_fill)
        print(f"[rank {rank}] resumed from epoch {start_epoch}, iteration {iteration}", flush=True)

    mlflow_client, mlflow_run = None, ""
    if rank == 0:
        mlflow_client, mlflow_run = _mlflow_start(cfg, loop_config["mlflow_uri"], loop_config["ray_run_name"])

    def log_fn(step: int, terms: dict[str, float]) -> None:
        if rank != 0:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"train/{k}", float(v), now, step) for k, v in terms.items() if np.isfinite(v)]
        mlflow_client.log_batch(mlflow_run, metrics=metrics)
        print(f"[iter {step}/{total}] " + " ".join(f"{k}={v:.4f}" for k, v in terms.items()
                                                    if k in ("total", "det", "id", "lr")), flush=True)

    epoch = start_epoch
    terms: dict[str, float] = {}
    while epoch < tc.epochs and iteration < total:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        epoch_start = iteration
        iteration, terms = train_one_epoch(
            model, criterion, optimizer, loader, device, epoch, scheduler=scheduler, scaler=scaler,
            amp=tc.amp, grad_clip=tc.grad_clip, teacher=teacher,
            teacher_crop_size=(cfg.teacher.crop_height, cfg.teacher.crop_width),
            start_iteration=iteration, max_iterations=total, log_every=tc.log_every, log_fn=log_fn)
        completed = iteration - epoch_start >= len(loader)
        next_epoch = epoch + 1 if completed else epoch  # a checkpoint's "epoch" = where a resume starts
        finished = iteration >= total or next_epoch >= tc.epochs
        if (epoch + 1) % max(tc.checkpoint_every, 1) == 0 or finished:
            metrics = {**{f"train/{k}": v for k, v in terms.items()}, "epoch": next_epoch,
                       "iteration": iteration, **resumed, MLFLOW_RUN_ID_KEY: mlflow_run}
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_checkpoint(tmp, model=model, config=cfg, criterion=criterion, optimizer=optimizer,
                                    scheduler=scheduler, scaler=scaler, epoch=next_epoch, iteration=iteration,
                                    metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
        if finished:
            break
        epoch = next_epoch
    if rank == 0 and mlflow_client is not None:
        mlflow_client.set_terminated(mlflow_run)


# --------------------------------------------------------------------------- driver


def _copy_final_checkpoint(result: Any, out: Path) -> Path:
    from kdtrack.io import atomic_save

    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        src = Path(ckpt_dir) / FINAL_CHECKPOINT
        with open(src, "rb") as handle:
            return atomic_save(out / FINAL_CHECKPOINT, lambda dst: shutil.copyfileobj(handle, dst))


def main(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs._ray import ensure_ray
    from kdtrack.data import load_records

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    cfg = resolve_config(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    records = load_records(cfg)
    if args.smoke_test:
        records = records[: cfg.train.smoke_iterations * cfg.train.batch_size_per_worker * cfg.train.num_workers]
    print(f"{len(records)} training records from {', '.join(cfg.data.sources)} under {cfg.data.root}", flush=True)

    ensure_ray()  # joins RAY_ADDRESS when set, else starts a local cluster
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "config": config_to_dict(cfg),
            "records": [r.to_dict() for r in records],
            "mlflow_uri": uri,
            "ray_run_name": cfg.train.run_name,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            storage_path=str(out / RAY_STORAGE_DIR), name=cfg.train.run_name,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )
    start = time.time()
    result = trainer.fit()
    elapsed = time.time() - start
    final = _copy_final_checkpoint(result, out)
    run_id = str(result.metrics.get(MLFLOW_RUN_ID_KEY, ""))
    if run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        client.set_tag(run_id, CHECKPOINT_TAG, str(final))
        client.set_tag(run_id, "kdtrack.ray_checkpoint", result.checkpoint.path)
    print(f"final checkpoint: {final}  (fit {elapsed:.1f} s)", flush=True)
    return {"checkpoint": str(final), "metrics": dict(result.metrics), "mlflow_uri": uri,
            "mlflow_run_id": run_id, "fit_seconds": elapsed}


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
