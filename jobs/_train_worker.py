"""The worker side of ``jobs.train``: one training loop (Ray Train V2's ``train_func``) for every recipe.

Seeding, resume, the feed, the epoch loop, reports, checkpoints and MLflow are written once, in
:func:`train_func`. What a recipe trains is built by its build step (:func:`build_student` for the
student recipes, :func:`build_teacher` for the Re-ID teacher; the recipe table says which), returning
:class:`WorkerParts`. Both feeds (the Ray Data stream and a torch ``DataLoader``) reach the loop as a
``kdtrack.data.dataset.Feed`` (:func:`open_feed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from typing import Any, Callable, Iterator

from jobs._mlflow_train import failed_run_on_error, open_sink, sink_run_id
from jobs._resume import note_resume_changes
from kdtrack.config import Config, ConfigError, config_from_dict
from kdtrack.recipes import KD_TEACHER_HELP, recipe_of

MLFLOW_RUN_ID_KEY = "mlflow_run_id"
MLFLOW_ENV_KEY = "mlflow_env"  # the driver's S3 variables for an s3:// mlflow.artifact_location (jobs._storage.s3_env)
PIPELINE_KEY = "pipeline"  # loop-config key of the Ray Data stream's plan and state (data.loader ray)
# Terms in the printed progress line (every term goes to MLflow): losses, lr and the collapse monitor.
PROGRESS_TERMS = ("total", "det", "id", "lr", "monitor/cos_between", "monitor/xview_top1")
TEACHER_PROGRESS_TERMS = ("total", "id", "triplet", "accuracy", "lr")  # printed by the teacher's loop

LogFn = Callable[[int, "dict[str, float]"], None]


@dataclasses.dataclass
class WorkerParts:
    """What a recipe's build step hands the shared loop."""

    model: Any  # the prepared network (DDP-wrapped with several workers): checkpointed, validated
    optimizer: Any
    scheduler: Any
    scaler: Any  # AMP's GradScaler, or None
    total: int  # iterations of the whole run
    # run_epoch(batches, epoch, start iteration, stop iteration, log_fn) -> (iteration, last terms)
    run_epoch: Callable[[Any, int, int, int, LogFn], "tuple[int, dict[str, float]]"]
    progress: Callable[["dict[str, float]"], str]  # the printed part of a log line
    state_parts: dict[str, Any] = dataclasses.field(default_factory=dict)  # more training state to checkpoint
    resumed: dict[str, float] = dataclasses.field(default_factory=dict)  # more "resumed_*" metrics (-1: fresh run)
    on_restore: Callable[[], "dict[str, float]"] | None = None  # their values after a resume
    on_sink: Callable[[Any], None] | None = None  # rank 0, once its MLflow sink is open
    on_log: Callable[[int, "dict[str, float]", Any], None] | None = None  # rank 0, after each log line
    whole_epochs: bool = False  # checkpoints fall after whole epochs: a resumed epoch restarts at its first batch


# --------------------------------------------------------------------------- the loop


def train_func(loop_config: dict[str, Any]) -> None:
    """Per-worker training loop of every recipe (Ray Train V2)."""
    from jobs._ray import quiet_ray_train_reports

    quiet_ray_train_reports()
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from kdtrack.checkpoint import restore_training_state

    cfg = config_from_dict(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")
    build = build_student if recipe_of(cfg).student else build_teacher
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)

    state = _latest_checkpoint_state(device)  # a resume's checkpoint: where the data stream starts
    feed = open_feed(cfg, loop_config, state, rank=rank, world=world, device=device)
    parts = build(cfg, loop_config, feed, device, rank=rank, world=world)

    start_epoch, iteration = 0, 0
    resumed = {"resumed_from_iteration": -1.0, **parts.resumed}
    if state is not None:
        start_epoch, iteration = restore_training_state(
            state, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler, scaler=parts.scaler,
            **parts.state_parts)
        resumed["resumed_from_iteration"] = float(iteration)
        resumed.update(parts.on_restore() if parts.on_restore is not None else {})
        print(f"[rank {rank}] resumed from epoch {start_epoch}, iteration {iteration}", flush=True)

    sink = None
    if rank == 0:
        from jobs._storage import use_env

        use_env(loop_config.get(MLFLOW_ENV_KEY, {}))
        sink = open_sink(cfg, loop_config["mlflow_uri"], loop_config["ray_run_name"], state,
                         run_id=loop_config.get(MLFLOW_RUN_ID_KEY, ""))
        if parts.on_sink is not None:
            parts.on_sink(sink)
    note_resume_changes(state, cfg, sink)
    validate = build_validation(cfg, device) if rank == 0 else None
    log_fn = _log_fn(cfg, rank, parts, feed, sink)
    with failed_run_on_error(sink):
        if state is not None and iteration >= parts.total:
            _report_finished(state, resumed)
        iteration = _train_epochs(cfg, rank, parts, feed, sink, validate, log_fn, start_epoch=start_epoch,
                                  iteration=iteration, resumed=resumed)
        if rank == 0:
            bad_item_check(feed, cfg, sink, iteration, final=True)
    if sink is not None:
        sink.finish()


def _train_epochs(cfg: Config, rank: int, parts: WorkerParts, feed: Any, sink: Any, validate: Any, log_fn: LogFn,
                  *, start_epoch: int, iteration: int, resumed: dict[str, float]) -> int:
    """The epochs from ``start_epoch``, each cut at every ``report_every``-th iteration, reporting (and
    checkpointing) when :func:`report_due`; returns the last iteration."""
    tc, total, per_epoch = cfg.train, parts.total, feed.per_epoch
    epoch, finished = start_epoch, iteration >= total
    # a checkpoint taken inside an epoch (report_every) resumes that epoch after the batches it had done
    done_before = iteration - start_epoch * per_epoch
    done_before = done_before if 0 < done_before < per_epoch and not parts.whole_epochs else 0
    while not finished and (tc.epochs == 0 or epoch < tc.epochs):  # epochs 0: until max_iterations
        epoch_start = iteration - done_before
        batches = feed.epoch_batches(epoch, iteration, done_before)
        while True:  # the epoch, cut at every report_every-th iteration
            stop = next_report_iteration(tc, iteration, total)
            iteration, terms = parts.run_epoch(batches, epoch, iteration, stop, log_fn)
            epoch_done = iteration - epoch_start >= per_epoch
            next_epoch = epoch + 1 if epoch_done else epoch
            finished = iteration >= total or 0 < tc.epochs <= next_epoch
            if report_due(tc, epoch=epoch, iteration=iteration, epoch_done=epoch_done, finished=finished):
                _report(cfg, rank, parts, sink, validate, terms, next_epoch=next_epoch, iteration=iteration,
                        resumed=resumed)
            if epoch_done or finished:
                break
        done_before = 0
        epoch = next_epoch
    return iteration


def _report_finished(state: dict[str, Any], resumed: dict[str, float]) -> None:
    """A run resumed already finished trains nothing; every rank reports its last checkpoint's metrics once
    more. A sweep trial whose process died after that checkpoint, before Tune saw its report, is then
    recorded with its last result (not as stopped early at the one before)."""
    import ray.train

    ray.train.report({**state.get("metrics", {}), "epoch": int(state["epoch"]), "iteration": int(state["iteration"]),
                      **resumed, MLFLOW_RUN_ID_KEY: str(state.get("mlflow_run_id", ""))})


def _report(cfg: Config, rank: int, parts: WorkerParts, sink: Any, validate: Any, terms: dict[str, float], *,
            next_epoch: int, iteration: int, resumed: dict[str, float]) -> None:
    """Every rank reports the epoch's metrics (rank 0 with validation and its checkpoint); a checkpoint's
    epoch is where a resume starts (the same one when the epoch was cut)."""
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.engine import set_train_mode
    from kdtrack.losses.distributed import mean_over_ranks

    metrics = _epoch_metrics(mean_over_ranks(terms), next_epoch, iteration, resumed, sink_run_id(sink))
    if validate is not None:
        val = validate(parts.model)
        set_train_mode(parts.model)
        metrics.update(val)
        sink.metrics(iteration, val, prefix="")
        print(f"[iter {iteration}/{parts.total}] validation: " + " ".join(f"{k}={v:.4f}" for k, v in val.items()),
              flush=True)
    with _reporting(rank, metrics) as tmp:
        if tmp is not None:
            save_checkpoint(tmp, model=parts.model, config=cfg, optimizer=parts.optimizer, scheduler=parts.scheduler,
                            scaler=parts.scaler, **parts.state_parts, epoch=next_epoch, iteration=iteration,
                            metrics={k: v for k, v in metrics.items() if isinstance(v, float)},
                            mlflow_run_id=sink_run_id(sink))


def _log_fn(cfg: Config, rank: int, parts: WorkerParts, feed: Any, sink: Any) -> LogFn:
    """``log_fn(step, terms)``, called by every rank at the same iterations: the terms averaged over ranks;
    rank 0 logs them to MLflow, prints the progress line and checks the stream's unreadable items."""
    from kdtrack.losses.distributed import mean_over_ranks

    total = parts.total

    def log_fn(step: int, terms: dict[str, float]) -> None:
        terms = mean_over_ranks(terms)
        if rank != 0:
            return
        sink.metrics(step, terms)
        print(f"[iter {step}/{total}] " + parts.progress(terms) + perf_suffix(step, total, terms), flush=True)
        bad_item_check(feed, cfg, sink, step)
        if parts.on_log is not None:
            parts.on_log(step, terms, sink)

    return log_fn


def _latest_checkpoint_state(device: Any) -> dict[str, Any] | None:
    """The state of the checkpoint Ray Train hands back on a resume (``kdtrack.checkpoint`` format), or None."""
    import ray.train

    from kdtrack.checkpoint import load_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        return load_checkpoint(ckpt_dir, map_location=device)


def _epoch_metrics(terms: dict[str, float], epoch: int, iteration: int, resumed: dict[str, float],
                   mlflow_run: str) -> dict[str, Any]:
    """What every rank reports with a checkpoint (``Result.metrics`` of the run)."""
    return {**{f"train/{k}": v for k, v in terms.items()}, "epoch": epoch, "iteration": iteration, **resumed,
            MLFLOW_RUN_ID_KEY: mlflow_run}


@contextlib.contextmanager
def _reporting(rank: int, metrics: dict[str, Any]) -> Iterator[str | None]:
    """``with _reporting(rank, metrics) as tmp:`` rank 0 writes its checkpoint into ``tmp`` (None on other
    ranks); on exit every rank calls ``ray.train.report`` (a barrier), rank 0 with that checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        yield tmp if rank == 0 else None
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def perf_suffix(step: int, total: int, terms: dict[str, float]) -> str:
    """`` | 12.3 img/s, data wait 8%, ETA 0:41:10`` from ``engine.run_epoch``'s perf terms (rank 0's view)."""
    if "perf/images_per_s" not in terms:
        return ""
    eta = max(0, total - step) * terms["perf/seconds_per_iteration"]
    hours, rest = divmod(int(round(eta)), 3600)
    return (f" | {terms['perf/images_per_s']:.1f} img/s, data wait {terms['perf/data_wait']:.0%}, "
            f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d}")


def next_report_iteration(tc: Any, iteration: int, total: int) -> int:
    """Where the next stretch of training stops: the next multiple of ``train.report_every`` (capped at
    ``total``), or ``total`` when reports follow epochs."""
    if tc.report_every <= 0:
        return total
    return min(total, (iteration // tc.report_every + 1) * tc.report_every)


def report_due(tc: Any, *, epoch: int, iteration: int, epoch_done: bool, finished: bool) -> bool:
    """A report (checkpoint + metrics) is due at the end, at every ``report_every``-th iteration when it is
    set, else after every ``checkpoint_every``-th full epoch."""
    if finished:
        return True
    if tc.report_every > 0:
        return iteration % tc.report_every == 0
    return epoch_done and (epoch + 1) % max(tc.checkpoint_every, 1) == 0


def bad_item_check(feed: Any, cfg: Config, sink: Any, step: int, *, final: bool = False) -> None:
    """Rank 0, Ray Data stream: log the unreadable items skipped so far (``data/bad_items``,
    ``data/items_read``) and stop the run past ``data.max_bad_fraction``."""
    if feed is None or not hasattr(feed, "bad_counts"):
        return
    from data_pipelines.training import check_bad_fraction

    counts = feed.bad_counts()
    if counts["bad"]:
        sink.metrics(step, {"data/bad_items": float(counts["bad"]), "data/items_read": float(counts["items"])},
                     prefix="")
        if final:
            print(f"data: {counts['bad']} of {counts['items']} items could not be read and were skipped, e.g. "
                  + "; ".join(counts["examples"][:2]), flush=True)
    check_bad_fraction(counts, cfg.data.max_bad_fraction, final=final)


def build_validation(cfg: Config, device: Any) -> Any:
    """Rank 0: ``validate(model) -> {"val/<protocol>/<metric>": value}``, oracle-box re-ID of the student's
    identity embedding on ``train.val_protocols`` (person search: ``train.val_split``, people no training
    split shows), or None when validation is off. The boxes are read once, here."""
    tc = cfg.train
    if not tc.val_protocols:
        return None
    from kdtrack.metrics.reid_probe import evaluate_reid_box_sets, load_reid_box_sets, student_embedder

    box_sets = load_reid_box_sets(tc.val_root or cfg.data.root, cfg.eval, split=tc.val_split,
                                  protocols=tc.val_protocols)

    def validate(model: Any) -> dict[str, float]:
        net = getattr(model, "module", model)  # DDP wraps the student
        results = evaluate_reid_box_sets({"student": student_embedder(net, cfg, device)}, box_sets, cfg.eval)
        return {f"val/{protocol}/{metric}": float(value) for protocol, rows in results.items()
                for metric, value in rows["student"].items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}

    return validate


# --------------------------------------------------------------------------- feeds


def open_feed(cfg: Config, loop_config: dict[str, Any], state: dict[str, Any] | None, *, rank: int, world: int,
              device: Any) -> Any:
    """This rank's ``kdtrack.data.dataset.Feed``: its split of the run's Ray Data stream (``data.loader: ray``; a
    teacher row is one pickled P x K batch), else a ``DataLoader`` over its share of the items the driver
    shipped (``data.loader: torch``)."""
    student = recipe_of(cfg).student
    if PIPELINE_KEY in loop_config:
        import ray.train

        from data_pipelines.training import BatchCollate, WorkerStream

        feed = WorkerStream(ray.train.get_dataset_shard("train"), loop_config[PIPELINE_KEY],
                            cfg.data.prefetch_batches, collate=None if student else BatchCollate(), device=device)
        feed.start(int(state["iteration"]) if state is not None else 0)  # decode actors start meanwhile
        return feed
    if student:
        from kdtrack.data.dataset import TorchFeed

        factory, _ = dataset_factory(cfg, loop_config)
        return TorchFeed(factory(), cfg, rank, world, pin_memory=device.type == "cuda")
    from kdtrack.data.reid_data import PKFeed

    crops = loop_config["crops"]
    return PKFeed([c["path"] for c in crops], [c["label"] for c in crops], cfg.teacher, seed=cfg.train.seed,
                  rank=rank, world_size=world, loader_workers=cfg.data.loader_workers,
                  pin_memory=device.type == "cuda")


def dataset_factory(cfg: Config, loop_data: dict[str, Any]) -> tuple[Any, int]:
    """``(factory, number of items)``: ``factory()`` builds the recipe's ``EpochSeededDataset`` over the
    items the driver read (in a torch worker, or once in each Ray Data decode actor)."""
    from data_pipelines.training import DatasetFactory
    from kdtrack.structures import ImageRecord

    recipe = recipe_of(cfg)
    if recipe.items == "clips":
        clips = loop_data["clips"]
        return DatasetFactory("kdtrack.data.video_pairs:VideoPairDataset.from_dicts", (clips, cfg)), len(clips)
    records = [ImageRecord.from_dict(r) for r in loop_data["records"]]
    store = cfg.teacher.embeddings if recipe.distils else ""
    return DatasetFactory("kdtrack.data.dataset:TrainingDataset", (records, cfg),
                          {"views": recipe.views, "with_original": recipe.distils and not store,
                           "teacher_store": store}), len(records)


def teacher_batches_factory(cfg: Config, loop_data: dict[str, Any]) -> tuple[Any, int]:
    """``(factory, number of P x K batches per epoch, all ranks)`` of the teacher recipe's stream."""
    from data_pipelines.training import DatasetFactory

    crops, teach = loop_data["crops"], cfg.teacher
    paths, labels = [c["path"] for c in crops], [c["label"] for c in crops]
    factory = DatasetFactory("kdtrack.data.reid_data:PKBatches", (paths, labels, teach),
                             {"p": teach.train_p, "k": teach.train_k, "seed": cfg.train.seed,
                              "world_size": cfg.train.num_workers})
    return factory, len(factory())


# --------------------------------------------------------------------------- build steps


def build_kd_teacher(cfg: Config, device: Any = "cpu") -> Any:
    """The frozen KD teacher with ``teacher.checkpoint``'s trained weights: ``build_teacher`` reads the file with
    ``torch.load(weights_only=True)`` and loads it strictly (a saved Re-ID classifier dropped), printing what
    it loaded. ``check_recipe`` refuses a missing checkpoint on the driver; this refuses it in the worker too."""
    from kdtrack.models import build_teacher as build_teacher_network
    from kdtrack.models import freeze_teacher

    if not cfg.teacher.checkpoint:
        raise ConfigError(f"train.recipe 'kd' needs a trained teacher: {KD_TEACHER_HELP}")
    return freeze_teacher(build_teacher_network(cfg.teacher)).to(device)


def _student_network(cfg: Config, device: Any, rank: int, world: int) -> tuple[Any, Any, Any]:
    """``(student, criterion, anchor)`` before ``prepare_model``: ``train.init_from``'s weights, ``train.freeze``'s
    parts fixed, the heads no loss reads left out (DDP would wait for their gradients), sync BN; ``anchor``: the
    frozen copy ``loss.detection_anchor_weight`` reads, or None."""
    from kdtrack.engine import detection_anchor, freeze_parts, leave_out_unused_heads, sync_batchnorm
    from kdtrack.losses import Criterion, all_gather_cat
    from kdtrack.models import build_student as build_student_network

    tc = cfg.train
    student = build_student_network(cfg.model)
    if tc.init_from:  # IDF stages 2 / 3: the previous stage's network, weights only
        from kdtrack.checkpoint import load_checkpoint

        student.load_state_dict(load_checkpoint(tc.init_from, map_location="cpu")["model"])
    frozen = freeze_parts(student, tc.freeze)
    # the starting network's detection outputs, kept (training_violations refuses the weight without init_from)
    anchor = detection_anchor(student).to(device) if cfg.loss.detection_anchor_weight > 0 else None
    if rank == 0 and frozen:
        print(f"frozen: {', '.join(frozen)}", flush=True)
    if rank == 0 and anchor is not None:
        print(f"detection outputs held to {tc.init_from}'s (loss.detection_anchor_weight "
              f"{cfg.loss.detection_anchor_weight:g})", flush=True)
    criterion = Criterion.from_config(cfg, gather_fn=all_gather_cat if world > 1 else None).to(device)
    unused = leave_out_unused_heads(student, criterion)  # before DDP: it would wait for their gradients
    if rank == 0 and unused:
        print(f"not trained (no loss reads them): heads {', '.join(unused)}", flush=True)
    if tc.sync_batchnorm:  # the anchor too: it must see the statistics the student's forward sees
        student = sync_batchnorm(student, world)
        anchor = sync_batchnorm(anchor, world) if anchor is not None else None
    return student, criterion, anchor


def build_student(cfg: Config, loop_config: dict[str, Any], feed: Any, device: Any, *, rank: int,
                  world: int) -> WorkerParts:
    """The student recipes' parts: the student (and, for KD online, the frozen teacher), the criterion of
    ``loss.id_mode``, the momentum key encoder, ``train_one_epoch`` and the collapse watch."""
    import ray.train.torch
    import torch

    from kdtrack.engine import (
        amp_enabled, build_optimizer, build_scheduler, total_iterations, train_one_epoch, trainable_parameters,
    )
    from kdtrack.losses.collapse import CollapseWatch
    from kdtrack.models.momentum import MomentumEncoder
    from kdtrack.threads import limit_blas_threads

    tc, recipe = cfg.train, recipe_of(cfg)
    if device.type == "cpu":  # Ray sets OMP threads from whole CPUs: a fractional share would leave one thread
        torch.set_num_threads(max(1, int(round(tc.cpus_per_worker))))
    limit_blas_threads()  # numpy's spinning BLAS threads would take the cores from torch's
    student, criterion, anchor = _student_network(cfg, device, rank, world)
    model = ray.train.torch.prepare_model(student)
    teacher = build_kd_teacher(cfg, device) if recipe.distils and not cfg.teacher.embeddings else None
    optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), tc,
                                criterion.classifier_parameters())
    key_encoder = None
    if recipe.key_encoder and cfg.loss.key_momentum > 0:
        key_encoder = MomentumEncoder(model, cfg.loss.key_momentum).to(device)
    total = total_iterations(tc, feed.per_epoch)
    scheduler = build_scheduler(optimizer, tc, total)
    scaler = torch.amp.GradScaler("cuda") if amp_enabled(tc.amp, device) else None
    collapse_watch = CollapseWatch(tc.collapse_cosine, tc.collapse_patience)

    def run_epoch(batches: Any, epoch: int, iteration: int, stop: int, log_fn: LogFn) -> tuple[int, dict]:
        return train_one_epoch(
            model, criterion, optimizer, batches, device, epoch, scheduler=scheduler, scaler=scaler, amp=tc.amp,
            grad_clip=tc.grad_clip, teacher=teacher,
            teacher_crop_size=(cfg.teacher.crop_height, cfg.teacher.crop_width), start_iteration=iteration,
            max_iterations=stop, log_every=tc.log_every, log_fn=log_fn, key_encoder=key_encoder, anchor=anchor)

    def on_restore() -> dict[str, float]:
        if criterion.contrastive is None:
            return {}
        return {"resumed_queue_fill": float(criterion.contrastive.queue_fill)}

    def on_log(step: int, terms: dict[str, float], sink: Any) -> None:
        warning = collapse_watch.update(step, terms.get("monitor/cos_between", float("nan")))
        if warning:
            print(warning, flush=True)
            sink.tag("kdtrack.collapse_warning", warning[:5000])

    return WorkerParts(
        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, total=total, run_epoch=run_epoch,
        progress=lambda terms: " ".join(f"{k.removeprefix('monitor/')}={v:.4f}" for k, v in terms.items()
                                        if k in PROGRESS_TERMS),
        state_parts={"criterion": criterion, "key_encoder": key_encoder}, resumed={"resumed_queue_fill": -1.0},
        on_restore=on_restore, on_log=on_log)


def build_teacher(cfg: Config, loop_config: dict[str, Any], feed: Any, device: Any, *, rank: int,
                  world: int) -> WorkerParts:
    """The teacher recipe's parts: the Re-ID teacher with its identity classifier, BoT's losses
    (``teacher_train_one_epoch``) under a warm-up + step schedule."""
    import ray.train.torch
    import torch

    from kdtrack.engine import (
        amp_enabled, build_optimizer, build_warmup_scheduler, sync_batchnorm, teacher_train_one_epoch,
        total_iterations,
    )
    from kdtrack.models import build_teacher as build_teacher_network

    tc, teach = cfg.train, cfg.teacher
    num_classes, num_crops = int(loop_config["num_classes"]), len(loop_config["crops"])
    teacher = build_teacher_network(teach, num_classes)
    model = ray.train.torch.prepare_model(sync_batchnorm(teacher, world) if tc.sync_batchnorm else teacher)
    optimizer = build_optimizer(model.parameters(), tc)
    per_epoch = feed.per_epoch
    total = total_iterations(tc, per_epoch)
    scheduler = build_warmup_scheduler(optimizer, tc, total, warmup_iterations=teach.warmup_epochs * per_epoch,
                                       warmup_factor=teach.warmup_factor)
    scaler = torch.amp.GradScaler("cuda") if amp_enabled(tc.amp, device) else None

    def run_epoch(batches: Any, epoch: int, iteration: int, stop: int, log_fn: LogFn) -> tuple[int, dict]:
        return teacher_train_one_epoch(
            model, optimizer, batches, device, epoch, label_smoothing=teach.label_smoothing,
            triplet_margin=teach.triplet_margin, scheduler=scheduler, scaler=scaler, amp=tc.amp,
            grad_clip=tc.grad_clip, start_iteration=iteration, max_iterations=stop, log_every=tc.log_every,
            log_fn=log_fn)

    def on_sink(sink: Any) -> None:
        sink.param("data/num_id_classes", num_classes)
        sink.param("data/num_train_crops", num_crops)
        print(f"[teacher] {num_crops} crops, {num_classes} identities, {world} worker(s) x "
              f"{teach.train_p}x{teach.train_k} crops per batch, {per_epoch} iterations per epoch, {total} in all",
              flush=True)

    return WorkerParts(
        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, total=total, run_epoch=run_epoch,
        progress=lambda terms: " ".join(f"{k}={terms[k]:.4g}" for k in TEACHER_PROGRESS_TERMS if k in terms),
        on_sink=on_sink, whole_epochs=True)
