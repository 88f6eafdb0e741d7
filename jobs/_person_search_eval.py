"""Person-search evaluation (``jobs.evaluate person-search``): mAP / top-k from precomputed detections, or
from checkpoints whose every test image goes once through the inference actor pool
(``jobs._inference_pool``), the query boxes embedded from that same pass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from jobs._cli import InputError
from jobs._eval_results import CheckpointEvaluation, EvaluationFailed, format_checkpoint_table, write_and_log
from jobs._inference_pool import (
    CheckpointInfo, InferenceWorker, inference_worker_kwargs, load_checkpoints, model_builds, numeric_paths,
    pool_options,
)
from jobs._ray import run_actor_pool
from kdtrack.config import Config, EvalConfig
from kdtrack.progress import Progress

# the metrics (scikit-learn, pandas) are imported where they are used: start-up time counts
if TYPE_CHECKING:
    from kdtrack.metrics.person_search import GalleryImage, Query


def load_person_search_inputs(detections: str | Path) -> tuple[list[Query], dict[str, GalleryImage]]:
    """The model boundary: queries and gallery detections/embeddings from a precomputed npz.

    :func:`person_search_checkpoints` returns the same ``(queries, gallery)`` pair from a checkpoint.
    """
    from kdtrack.metrics.person_search import load_person_search_npz

    return load_person_search_npz(detections)


@dataclass
class PersonSearchInputs:
    """One checkpoint's person-search inputs, or the image batches that failed (name -> error)."""

    checkpoint: CheckpointInfo
    queries: list[Query] = field(default_factory=list)
    gallery: dict[str, GalleryImage] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    numeric_path: dict[str, str] = field(default_factory=dict)  # image batch -> the numeric path that ran it


def person_search_checkpoints(
    checkpoints: Sequence[str | Path],
    manifest_path: str | Path,
    cfg: Config,
    *,
    embedder: str = "student",
    teacher_checkpoint: str = "",
    use_ray: bool = True,
    images_per_task: int | None = None,
    progress: bool = True,
) -> tuple[list[PersonSearchInputs], dict[str, Any]]:
    """Detect + embed every test image of a person-search manifest and embed every query box, per checkpoint.

    Each image goes through the network once: its detections are the gallery, and the query boxes
    drawn in it are read from the same pass (the student's identity map at the box centre, or the
    teacher on the crop with ``embedder="teacher"``, which then also embeds the detections:
    KDMOT's two-step setting). Images go ``images_per_task`` (``eval.ps_images_per_task``) to an
    actor call, ``eval.ps_batch_images`` to a forward. Returns the inputs per checkpoint and pool
    stats: ``{"workers", "tasks", "model_builds", "devices"}``.
    """
    import numpy as np

    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.metrics.person_search import GalleryImage, queries_from_manifest

    if manifest_path is None:
        raise InputError("person-search --checkpoint needs --manifest")
    try:
        manifest = read_manifest(manifest_path)
    except (OSError, ValueError) as exc:
        raise InputError(str(exc)) from None
    worker_kwargs = inference_worker_kwargs(cfg, embedder, teacher_checkpoint)
    infos, handles = zip(*load_checkpoints(checkpoints, ship=use_ray))
    images = [im.file_name for im in manifest.images if im.split == "test"]
    images += [name for name in dict.fromkeys(q.file_name for q in manifest.queries) if name not in set(images)]
    position = {name: i for i, name in enumerate(images)}
    query_boxes: list[list[np.ndarray]] = [[] for _ in images]
    query_slot = []  # (image index, row in that image's query boxes) per manifest query
    for q in manifest.queries:
        i = position[q.file_name]
        query_slot.append((i, len(query_boxes[i])))
        query_boxes[i].append(xywh_to_xyxy(np.asarray(q.box_xywh, np.float32)).reshape(4))
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in query_boxes]
    per_task = images_per_task or cfg.eval.ps_images_per_task
    chunks = [range(s, min(s + per_task, len(images))) for s in range(0, len(images), per_task)]
    items = [(c, chunk) for c in range(len(infos)) for chunk in chunks]
    calls = [("detect", (handles[c], [str(manifest.image_path(images[i])) for i in chunk],
                         [boxes[i] for i in chunk])) for c, chunk in items]
    per_image: list[list[Any]] = [[None] * len(images) for _ in infos]
    results = [PersonSearchInputs(info) for info in infos]
    values: list[dict] = []
    bar = Progress(len(images) * len(infos), len(calls), unit="image", items="batches", desc="person-search",
                   enabled=progress)

    def on_done(outcome) -> None:
        c, chunk = items[outcome.index]
        name = f"images {images[chunk[0]]} .. {images[chunk[-1]]}"
        if not outcome.ok:
            results[c].failed[name] = outcome.error
            bar.update(len(chunk), False, f"{name}: FAILED: {outcome.error}")
            return
        results[c].numeric_path[name] = outcome.value["numeric_path"]
        values.append({k: outcome.value[k] for k in ("node", "pid", "model_builds")})
        for i, result in zip(chunk, outcome.value["results"]):
            per_image[c][i] = result
        bar.update(len(chunk), True)

    try:
        report = run_actor_pool(InferenceWorker, worker_kwargs, calls, on_done=on_done,
                                **pool_options(cfg.eval, use_ray))
    finally:
        bar.close()
    test_cameras = {im.file_name: int(im.camera) for im in manifest.images if im.split == "test"}
    for result, done in zip(results, per_image):
        if result.failed:
            continue
        result.gallery = {}
        for name, camera in test_cameras.items():
            boxes_xyxy, scores, embeddings, _ = done[position[name]]
            result.gallery[name] = GalleryImage(boxes_xyxy, scores, embeddings, camera=camera)
        embeddings = [done[i][3][row] for i, row in query_slot]
        gallery_dim = next((g.embeddings.shape[1] for g in result.gallery.values() if len(g.embeddings)), None)
        if embeddings and gallery_dim is not None and embeddings[0].shape[-1] != gallery_dim:
            raise InputError(f"--embedder {embedder}: the teacher's {embeddings[0].shape[-1]}-d query features "
                             f"cannot be compared with the {gallery_dim}-d gallery of {result.checkpoint.path}; this "
                             f"protocol needs a KD student (model.embedding_dim = teacher.feature_dim)")
        result.queries = queries_from_manifest(manifest, embeddings)
    stats = {"workers": len(report.workers), "tasks": len(calls), "model_builds": model_builds(report, values),
             "devices": sorted({w["device"] for w in report.workers})}
    return results, stats


def person_search_inputs_from_checkpoint(
    checkpoint: str | Path,
    manifest_path: str | Path,
    cfg: Config,
    *,
    embedder: str = "student",
    teacher_checkpoint: str = "",
    use_ray: bool = True,
    images_per_task: int | None = None,
    stats: dict[str, Any] | None = None,
) -> tuple[list[Query], dict[str, GalleryImage]]:
    """One checkpoint (:func:`person_search_checkpoints`): ``(queries, gallery)``; the pool's stats go
    into ``stats`` when given. A failed image batch raises :class:`EvaluationFailed` naming it."""
    (result,), pool_stats = person_search_checkpoints(
        [checkpoint], manifest_path, cfg, embedder=embedder, teacher_checkpoint=teacher_checkpoint,
        use_ray=use_ray, images_per_task=images_per_task, progress=False)
    if stats is not None:
        stats.update(pool_stats)
    if result.failed:
        raise EvaluationFailed("; ".join(f"{name}: {error}" for name, error in result.failed.items()))
    return result.queries, result.gallery


def score_person_search(
    queries: Sequence[Query], gallery: dict[str, GalleryImage], gallery_size: int | None, cfg: EvalConfig
) -> dict[str, Any]:
    from kdtrack.metrics.person_search import evaluate_person_search

    return evaluate_person_search(queries, gallery, gallery_size=gallery_size, cfg=cfg)


def run_person_search(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """``person-search`` mode: score precomputed inputs or every checkpoint, print, write and log."""
    from kdtrack.metrics.person_search import save_person_search_npz

    eval_cfg = cfg.eval
    if args.cross_camera_only:
        eval_cfg = replace(eval_cfg, ps_cross_camera_only=True)
    gallery_size = eval_cfg.ps_gallery_size if args.gallery_size is None else args.gallery_size
    dataset = args.dataset or "person-search"
    if args.checkpoint is None:
        queries, gallery = load_person_search_inputs(args.detections)
        metrics = score_person_search(queries, gallery, gallery_size, eval_cfg)
        print(person_search_line(metrics, eval_cfg))
        return write_and_log(args, cfg, dataset, [CheckpointEvaluation(None, metrics)], checkpoint_tag="")
    inputs, stats = person_search_checkpoints(
        args.checkpoint, args.manifest, cfg, embedder=args.embedder, teacher_checkpoint=args.teacher_checkpoint,
        use_ray=not args.no_ray, progress=not args.no_progress)
    evaluations = []
    for result in inputs:
        metrics: dict[str, Any] = {"failed": result.failed}
        if not result.failed:
            metrics = score_person_search(result.queries, result.gallery, gallery_size, eval_cfg)
            metrics["numeric_paths"] = numeric_paths(result.numeric_path)
            if args.save_detections:
                path = args.save_detections
                if len(inputs) > 1:
                    path = path.with_name(f"{path.stem}_{result.checkpoint.label}{path.suffix}")
                save_person_search_npz(path, result.queries, result.gallery)
        evaluations.append(CheckpointEvaluation(result.checkpoint, metrics, failed=result.failed))
    if len(evaluations) == 1:
        if evaluations[0].failed:  # scored nothing: _write_and_log names the failed batches and exits 1
            print(f"person search not scored: {len(evaluations[0].failed)} image batch(es) failed")
        elif evaluations[0].metrics:
            print(person_search_line(evaluations[0].metrics, eval_cfg))
    else:
        columns = ("mAP",) + tuple(f"top{k}" for k in eval_cfg.ps_top_k)
        print(format_checkpoint_table(evaluations, tuple((c, "pct") for c in columns)))
    print(f"{stats['tasks']} image batches on {stats['workers']} worker(s), {stats['model_builds']} network "
          f"build(s) ({', '.join(stats['devices'])})")
    return write_and_log(args, cfg, dataset, evaluations, checkpoint_tag=" ".join(map(str, args.checkpoint)),
                         what="image batches")


def person_search_line(metrics: dict[str, Any], eval_cfg: EvalConfig) -> str:
    return " ".join(f"{k} {100 * float(metrics[k]):.1f}" for k in ["mAP"] + [f"top{k}" for k in eval_cfg.ps_top_k])

