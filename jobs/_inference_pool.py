"""The inference actor pool's worker and the checkpoints it runs, shared by the jobs that run networks
over data (``jobs.evaluate``: MOT and person search; ``jobs.pseudo_label``: clips, a subclass).

A checkpoint is read once on the driver (a bad one is an :class:`~jobs._cli.InputError` there, before
any actor starts) and handed to the workers as a :class:`ModelHandle`: its weights shipped through
Ray's object store, or its path in-process. :class:`InferenceWorker` builds a handle's network once
and keeps it. Kept small on purpose: every actor imports this module as it unpickles its worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError
from jobs._ray import PoolReport, ensure_ray, transient_errors, worker_location
from kdtrack.config import Config, EvalConfig

TEACHER_EMBEDDERS = ("teacher", "teacher_query")  # person search: the teacher embeds everything / only the queries


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint to evaluate."""

    path: str  # the checkpoint file
    iteration: int  # its training iteration: the MLflow step of its metrics
    label: str = ""  # sub-folder for its results, frames and MLflow artifacts when several are evaluated


@dataclass(frozen=True)
class ModelHandle:
    """How a worker gets one checkpoint's network.

    With Ray the driver ships the weights through the object store (``shipped`` holds the
    ``ObjectRef`` inside a list, so Ray does not fetch it for every call): a worker fetches
    them once and needs no access to the file. In-process, the worker reads ``key``.
    """

    key: str  # the checkpoint file; a worker keeps the network it last built, by this key
    shipped: list | None = None  # [ObjectRef of {"model": state_dict, "config": Config}], or None


def load_checkpoints(paths: Sequence[str | Path], *, ship: bool = False) -> list[tuple[CheckpointInfo, ModelHandle]]:
    """The checkpoints named by ``--checkpoint`` arguments, each read once here (a bad one stops here),
    with the handle a worker builds its network from (``ship``: weights put into Ray's object store).

    An argument is a checkpoint file; a folder holding ``checkpoint.pt``; or a training run's folder
    (``jobs.train --out``, or its Ray Train run folder), which stands for every ``checkpoint.pt``
    below it in iteration order; its top-level ``checkpoint.pt`` (the copy ``jobs.train`` makes of
    the last one) is kept only when no checkpoint below has its iteration.
    """
    from kdtrack.checkpoint import CHECKPOINT_NAME

    entries: list[tuple[CheckpointInfo, ModelHandle]] = []
    for arg in paths:
        path = Path(arg).resolve()
        if not path.is_dir():
            entries.append(load_checkpoint_entry(path, ship))
            continue
        below = sorted(p for p in path.rglob(CHECKPOINT_NAME) if p.parent != path)
        top = path / CHECKPOINT_NAME
        if not below and not top.is_file():
            raise InputError(f"{path}: no {CHECKPOINT_NAME} in it or below it")
        group = [load_checkpoint_entry(p, ship) for p in below]
        if top.is_file():
            final = load_checkpoint_entry(top, ship)
            if all(info.iteration != final[0].iteration for info, _ in group):
                group.append(final)
        entries.extend(sorted(group, key=lambda entry: entry[0].iteration))
    if len(entries) > 1:
        counts: dict[str, int] = {}
        for i, (info, handle) in enumerate(entries):
            label = f"iter_{info.iteration:07d}"
            counts[label] = counts.get(label, 0) + 1
            entries[i] = (replace(info, label=label if counts[label] == 1 else f"{label}_{counts[label]}"), handle)
    return entries


def load_checkpoint_entry(path: Path, ship: bool) -> tuple[CheckpointInfo, ModelHandle]:
    return checkpoint_entry(path, read_checkpoint(path), ship)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A kdtrack checkpoint's state on CPU; a missing, unreadable or foreign file is an :class:`InputError`."""
    from kdtrack.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, map_location="cpu")
    except (OSError, ValueError) as exc:  # the message names the file
        raise InputError(str(exc)) from None


def checkpoint_entry(path: str | Path, state: dict[str, Any], ship: bool) -> tuple[CheckpointInfo, ModelHandle]:
    """The checkpoint ``state`` read from ``path`` as a work item's network (``ship``: weights put into Ray's
    object store once, so workers need no access to the file)."""
    shipped = [ensure_ray().put({"model": state["model"], "config": state["config"]})] if ship else None
    return CheckpointInfo(str(path), int(state.get("iteration", 0))), ModelHandle(str(path), shipped)


# --------------------------------------------------------------------------- the inference worker


class InferenceWorker:
    """Runs checkpoints over MOT sequences and person-search images: one per Ray actor, or one
    in-process (``--no-ray``).

    Its device is decided when it starts: inside an actor, CUDA exactly when Ray granted the actor a
    GPU (``ray.get_gpu_ids()``), so one pool may mix GPU and CPU actors and nothing depends on a
    snapshot of the cluster taken earlier; in-process, the ``device`` passed. Each result names the
    numeric path that made it (``kdtrack.inference.numeric_path``: device, fp16 autocast or fp32,
    deformable kernel), and the jobs report a pool that mixed paths (:func:`numeric_paths`). It keeps the network
    of the checkpoint it last ran (``model_builds`` counts the builds) and the teacher, built once.
    """

    def __init__(self, config: dict[str, Any], *, embedder: str = "student", teacher_checkpoint: str = "",
                 device: str | None = None, num_threads: int = 0):
        import torch

        from kdtrack.config import config_from_dict
        from kdtrack.threads import limit_blas_threads

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        limit_blas_threads()  # numpy's spinning BLAS threads would take the cores from torch's
        if device is None:  # a Ray actor: use the GPU Ray granted it, if any
            import ray

            device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cfg = config_from_dict(config)
        self.embedder = embedder
        self.teacher_checkpoint = teacher_checkpoint
        self.model_builds = 0
        self._key: str | None = None
        self._detector = None
        self._embed_fn = None

    def ready(self) -> dict[str, Any]:
        """Where and on what this worker runs (called once as it starts)."""
        import torch

        return {"device": str(self.device), "threads": torch.get_num_threads(), **worker_location()}

    def _network(self, model: ModelHandle):
        """``(Detector, embed_fn)`` for ``model``, built only when it differs from the last one."""
        if model.key != self._key:
            from kdtrack.checkpoint import load_checkpoint
            from kdtrack.inference import Detector, student_from_state

            if model.shipped is not None:
                import ray

                state = ray.get(model.shipped[0])
            else:
                state = load_checkpoint(model.key, map_location="cpu")
            ckpt_cfg = state["config"]
            # the network comes from the checkpoint; thresholds and protocols from this job's config
            cfg = replace(ckpt_cfg, decode=self.cfg.decode, tracker=self.cfg.tracker, eval=self.cfg.eval,
                          teacher=self.cfg.teacher)
            self._detector = Detector(student_from_state(state["model"], ckpt_cfg, self.device), cfg, self.device)
            self._key = model.key
            self.model_builds += 1
        if self.embedder in TEACHER_EMBEDDERS and self._embed_fn is None:
            from kdtrack.inference import load_teacher, teacher_config_of, teacher_embed_fn

            tcfg = teacher_config_of(self.teacher_checkpoint, self.cfg.teacher)
            teacher = load_teacher(tcfg, self.teacher_checkpoint, self.device)
            self._embed_fn = teacher_embed_fn(teacher, (tcfg.crop_height, tcfg.crop_width), self.device)
        return self._detector, self._embed_fn

    def track(self, model: ModelHandle, seq_dir: str, half: str, num_render: int) -> dict[str, Any]:
        """Track one sequence and score it against its gt; rows, counts and frames come back (no files)."""
        import cv2
        import numpy as np

        from kdtrack.formats.mot import read_seqinfo, split_frames
        from kdtrack.inference import track_sequence

        split = "val_half" if half == "val" else "all"
        with transient_errors():
            detector, embed_fn = self._network(model)
            n = len(split_frames(read_seqinfo(seq_dir).seq_length, split))
            render = sorted({int(round(x)) for x in np.linspace(1, n, num_render)}) if num_render > 0 else []
            run = track_sequence(detector, seq_dir, detector.cfg.tracker, split=split, embed_fn=embed_fn,
                                 render_frames=render)
            evaluation = score_sequence_rows(seq_dir, run.rows, half, detector.cfg.eval)
        rendered = {}
        for frame, image in sorted(run.rendered.items()):
            ok, encoded = cv2.imencode(".jpg", image)
            if ok:
                rendered[frame] = encoded.tobytes()
        return {
            "name": Path(seq_dir).name, "rows": run.rows, "evaluation": evaluation, "frames": run.num_frames,
            "detections": run.num_detections, "network_seconds": run.network_seconds,
            "association_seconds": run.association_seconds, "rendered": rendered, "device": str(self.device),
            "numeric_path": detector.numeric_path, "model_builds": self.model_builds, **worker_location(),
        }

    def detect(self, model: ModelHandle, image_paths: list[str], query_boxes_xyxy: list) -> dict[str, Any]:
        """Detections of each image and the embeddings of the query boxes drawn in it, one pass per image."""
        from kdtrack.inference import detect_and_embed_images

        with transient_errors():
            detector, teacher_fn = self._network(model)
            results = detect_and_embed_images(
                detector, image_paths, query_boxes_xyxy, batch_size=self.cfg.eval.ps_batch_images,
                embed_fn=teacher_fn if self.embedder == "teacher" else None,
                query_embed_fn=teacher_fn if self.embedder == "teacher_query" else None)
        return {"results": [(d.boxes_xyxy, d.scores, d.embeddings, q) for d, q in results],
                "device": str(self.device), "numeric_path": detector.numeric_path, "model_builds": self.model_builds,
                **worker_location()}


def score_sequence_rows(seq_dir: str | Path, rows, half: str, cfg: EvalConfig):
    """Score tracker rows (frames of the split, from 1) against ``<seq_dir>/gt/gt.txt`` as MOT17:
    the ``SequenceEvaluation`` that :func:`kdtrack.metrics.mot.summarize_sequences` combines."""
    from kdtrack.formats import mot as mot_format
    from kdtrack.metrics.mot import evaluate_sequence

    seq_dir = Path(seq_dir)
    seq_length = mot_format.read_seqinfo(seq_dir).seq_length
    gt = mot_format.read_gt(seq_dir / "gt" / "gt.txt")
    if half == "val":
        gt = mot_format.slice_rows_half(gt, seq_length, "val_half")
        seq_length = len(mot_format.split_frames(seq_length, "val_half"))
    return evaluate_sequence(seq_dir.name, gt, rows, seq_length, benchmark="MOT17", cfg=cfg)


def inference_gpus(cfg: EvalConfig, use_ray: bool) -> float:
    """GPUs for in-process inference (``reid``, ``--no-ray``): the configured number, or (-1) one when
    a GPU is usable here (``use_ray``: free in the cluster right now), else 0. Actor pools decide per
    actor instead (:func:`jobs._ray.plan_actor_gpus`)."""
    if cfg.gpus_per_sequence >= 0:
        return float(cfg.gpus_per_sequence)
    if use_ray:
        return 1.0 if ensure_ray().available_resources().get("GPU", 0) >= 1 else 0.0
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def pool_options(eval_cfg: EvalConfig, use_ray: bool) -> dict[str, Any]:
    """``run_actor_pool`` keywords from ``eval.*``; in-process the worker gets the local device."""
    from kdtrack.engine import select_device

    return dict(
        use_ray=use_ray, num_actors=eval_cfg.num_actors, num_cpus=eval_cfg.cpus_per_actor,
        num_gpus=eval_cfg.gpus_per_sequence, max_restarts=eval_cfg.actor_max_restarts,
        max_task_retries=eval_cfg.task_retries, start_timeout_s=eval_cfg.actor_start_timeout_s,
        local_kwargs={"device": str(select_device(inference_gpus(eval_cfg, use_ray=False) > 0)),
                      "num_threads": 0} if not use_ray else None,
    )


def inference_worker_kwargs(cfg: Config, embedder: str, teacher_checkpoint: str) -> dict[str, Any]:
    from kdtrack.config import config_to_dict

    if embedder in TEACHER_EMBEDDERS:
        if not teacher_checkpoint:
            raise InputError(f"--embedder {embedder} needs --teacher-checkpoint")
        if not Path(teacher_checkpoint).is_file():
            raise InputError(f"teacher checkpoint not found: {teacher_checkpoint}")
    return {"config": config_to_dict(cfg), "embedder": embedder,
            "teacher_checkpoint": str(Path(teacher_checkpoint).resolve()) if teacher_checkpoint else "",
            "device": None, "num_threads": max(1, int(cfg.eval.cpus_per_actor))}


def numeric_paths(path_of: dict[str, str]) -> dict[str, list[str]]:
    """``{numeric path: the items it ran}`` from each item's path (``{sequence or image batch: path}``).

    More than one key: the pool mixed GPU (fp16 autocast, torchvision's deformable conv) and CPU (fp32,
    ``grid_sample``) actors, and an item's numbers depend on where it ran. Such a run is reported, not
    refused: the mix arises as actors start (a GPU actor that waits past ``eval.actor_start_timeout_s`` is
    replaced by a CPU one), so refusing would throw away the finished items; the job prints a warning,
    its output JSON lists the paths and MLflow gets them as params (``jobs._eval_results.write_and_log``).
    One path for a run: ``eval.gpus_per_sequence`` 0 (every actor on CPU) or 1 (every actor holds a GPU)."""
    out: dict[str, list[str]] = {}
    for item, path in sorted(path_of.items()):
        out.setdefault(path, []).append(item)
    return out


def describe_workers(report_workers: list[dict]) -> str:
    devices: dict[str, int] = {}
    for info in report_workers:
        devices[info["device"]] = devices.get(info["device"], 0) + 1
    nodes = {info["node"] for info in report_workers}
    return (", ".join(f"{n} x {d}" for d, n in devices.items())
            + f" on {len(nodes)} node{'s' if len(nodes) != 1 else ''}")


def model_builds(report: PoolReport, outcomes_values: Sequence[dict]) -> int:
    """Networks built over the pool: per worker (node, pid) the most it reported, summed."""
    per_worker: dict[tuple, int] = {}
    for value in outcomes_values:
        key = (value["node"], value["pid"])
        per_worker[key] = max(per_worker.get(key, 0), int(value["model_builds"]))
    return sum(per_worker.values())
