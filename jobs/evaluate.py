"""Evaluate tracking and person search; write ``metrics.json`` and optionally log to MLflow.

Modes (argparse subcommands):

* ``mot-files``: score MOTChallenge tracker files against gt::

    python -m jobs.evaluate mot-files --gt-root GT --results DIR --benchmark MOT17 \\
        [--half val] --out metrics.json [--mlflow-uri URI --experiment NAME --run-id RUN]

  ``GT/<SEQ>/`` holds ``seqinfo.ini`` (required: seqLength fixes the scored
  frames) and ``gt/gt.txt``; ``DIR/<SEQ>.txt`` are tracker outputs. More than
  one sequence are scored as parallel Ray tasks (``ray.init()`` when Ray is not
  initialised; ``RAY_ADDRESS`` is honoured), ``--no-ray`` scores serially.

* ``mot``: run one or more checkpoints over MOT17-style sequences (letterbox,
  decode, tracker) and score them the MOT17 way::

    python -m jobs.evaluate mot --checkpoint CKPT [CKPT ...] --data-root MOT17/train \\
        [--half val] [--detector DPM|FRCNN|SDP|all] [--association both|boxes|embeddings] \\
        [--embedder student|teacher --teacher-checkpoint T] --out metrics.json

  Each sequence is tracked once: of MOT17's three per-detector copies (the
  same frames) the first is kept, or the ``--detector`` one. Sequences go to a
  pool of Ray actors (``eval.num_actors``, ``eval.cpus_per_actor``, a GPU each
  when one is free as the actor starts: ``eval.gpus_per_sequence``) that build
  each checkpoint's network once and take sequences as they free up; an actor
  tracks a sequence, scores it against its gt and hands rows, counts and
  rendered frames back, so only this driver writes files (atomically) and logs
  to MLflow: no shared disk for results. A sequence that fails (after
  ``eval.task_retries`` retries of transient errors) is reported by name; the
  others are written and the job exits 1. The network comes from the
  checkpoint; decode, tracker and eval thresholds from ``--config``/``--set``.
  Network FPS (pre-processing, forward, decode) and association FPS
  (``Tracker.update``) are reported apart.

* ``detection``: person detection of a checkpoint on CrowdHuman val (``jobs._detection_eval``): AP and
  recall / precision at score thresholds::

    python -m jobs.evaluate detection --checkpoint CKPT --data-root W [--score-thresholds 0.4,0.5] --out det.json

* ``person-search``: mAP / top-k, from precomputed detections and embeddings in
  the npz layout of ``kdtrack.metrics.person_search.NPZ_FORMAT``, or from one or
  more checkpoints and a manifest (the same actor pool: every test image goes
  through the network once, in batches, and the query boxes drawn in it are
  embedded from that same pass)::

    python -m jobs.evaluate person-search --detections dets.npz [--gallery-size 100|-1] --out metrics.json
    python -m jobs.evaluate person-search --checkpoint CKPT [CKPT ...] --manifest M --out metrics.json \
        [--embedder student|teacher|teacher_query --teacher-checkpoint T]

  ``--embedder teacher_query`` is KDMOT's protocol: the teacher embeds each
  query crop, the student's identity head the gallery detections.

* ``reid``: oracle-box re-identification (``kdtrack.reid_probe``): the identity
  embedding read at every ground-truth box, scored by retrieval (mAP, CMC) on
  the person-search split (cross-camera) and the MOT17 val halves (cross-time),
  with baselines (random-init student, colour histograms of the whole box and of its centre, where the
  person is) on the same boxes::

    python -m jobs.evaluate reid --checkpoint CKPT --world W [--split test] \
        [--baselines random,colour,colour_centre] [--teacher-checkpoint T] [--out metrics.json]

* ``market1501``: the Market-1501 protocol on crops for a teacher (or student)
  checkpoint, with the colour histogram and chance (``jobs._market_eval``)::

    python -m jobs.evaluate market1501 --checkpoint T --data-root W --out market.json

``--checkpoint`` (mot, person-search) takes files, folders holding
``checkpoint.pt``, or a training run's folder (``jobs.train --out``): every
checkpoint below it. Each is logged at its training iteration as the MLflow
step, into one run, and the printed table has one row per checkpoint; with
several, ``metrics.json`` is ``{"checkpoints": [{"checkpoint", "iteration",
"metrics"}, ...]}``.

Metrics are fractions in 0..1 in the JSON; the printed table shows percent.
A bad config key or input path stops ``python -m jobs.evaluate`` with one line
naming it and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from jobs._inference_pool import (
    TEACHER_EMBEDDERS,
    CheckpointInfo,
    InferenceWorker,
    describe_workers,
    inference_gpus,
    inference_worker_kwargs,
    load_checkpoints,
    model_builds,
    pool_options,
)
from jobs._mlflow_eval import jsonable, log_evaluation_to_mlflow
from jobs._model_uri import resolve_checkpoints
from jobs._cli import InputError, run_cli  # noqa: F401  (InputError: part of this module's API)
from jobs._ray import PoolReport, map_tasks, run_actor_pool
from kdtrack.config import Config, EvalConfig, load_config
from kdtrack.formats.common import FormatError
from kdtrack.io import atomic_write_json
from kdtrack.progress import Progress

# The metrics (pandas, motmetrics, TrackEval, scikit-learn) are imported where they are used, here as in
# jobs._inference_pool (which every actor imports as it unpickles InferenceWorker): start-up time counts.
if TYPE_CHECKING:
    from kdtrack.metrics.person_search import GalleryImage, Query

TEACHER_INPUT = "teacher_input"  # reid row: the teacher on crops of the frame letterboxed to the student's input

__all__ = [
    "EvaluationFailed", "InputError", "InferenceWorker", "cli", "log_evaluation_to_mlflow", "main",
    "person_search_checkpoints", "run_mot_checkpoints", "run_reid", "score_mot_results", "score_person_search",
]


class EvaluationFailed(RuntimeError):
    """Some sequences or image batches failed (each reported by name); what finished was written."""


# --------------------------------------------------------------------------- MOT


def score_mot_results(
    gt_root: str | Path,
    results_dir: str | Path,
    benchmark: str,
    half: str = "full",
    *,
    sequences: Sequence[str] | None = None,
    cfg: EvalConfig | None = None,
    use_ray: bool = True,
) -> dict[str, dict]:
    """``{"sequences": {SEQ: metrics}, "combined": metrics}`` for tracker files in ``results_dir``.

    Sequences are scored in parallel Ray tasks when there is more than one and
    ``use_ray``; the combined row sums counts over sequences before ratios.
    """
    from kdtrack.metrics.mot_files import evaluate_mot_files

    cfg = cfg or EvalConfig()

    def ray_map(score, files):
        return map_tasks(score, [(f,) for f in files], use_ray=use_ray, num_cpus=cfg.cpus_per_sequence,
                         max_retries=cfg.task_retries)

    return evaluate_mot_files(gt_root, results_dir, benchmark=benchmark, half=half, sequences=sequences,
                              cfg=cfg, map_fn=ray_map)


def default_dataset_name(benchmark: str, half: str) -> str:
    """MLflow metric prefix: ``MOT17-val`` for the val half, ``MOT17`` for full sequences."""
    return f"{benchmark}-val" if half == "val" else benchmark


# --------------------------------------------------------------------------- MOT from checkpoints


@dataclass
class CheckpointEvaluation:
    """One checkpoint's evaluation: metrics of what finished and what failed (name -> one-line error)."""

    checkpoint: CheckpointInfo | None
    metrics: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    result_files: list[Path] = field(default_factory=list)
    rendered_frames: list[Path] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # MOT: per sequence frames, timings, device


def mot_sequence_dirs(data_root: str | Path, sequences: Sequence[str] | None = None,
                      detector: str | None = None) -> list[Path]:
    """The sequence folders to track: one copy of each MOT17 sequence (the first, or the ``detector``
    one; ``"all"`` keeps every copy), limited to ``sequences``; each must have ``gt/gt.txt``."""
    from kdtrack.formats.mot import dedupe_detector_copies, list_sequences, sequence_base_name

    data_root = Path(data_root).resolve()
    seq_dirs = list_sequences(data_root)
    if sequences:
        names = set(sequences)
        unknown = names - {d.name for d in seq_dirs} - {sequence_base_name(d.name) for d in seq_dirs}
        if unknown:
            raise InputError(f"{data_root}: no sequence named {', '.join(sorted(unknown))}")
        seq_dirs = [d for d in seq_dirs if d.name in names or sequence_base_name(d.name) in names]
    if detector != "all":
        try:
            seq_dirs = dedupe_detector_copies(seq_dirs, detector)
        except FormatError:  # a missing copy: MissingFileError names it
            raise
        except ValueError as exc:  # an unknown detector name
            raise InputError(str(exc)) from None
    if not seq_dirs:
        raise FileNotFoundError(f"no MOT sequences (folders with seqinfo.ini) under {data_root}")
    for d in seq_dirs:
        if not (d / "gt" / "gt.txt").is_file():
            raise InputError(f"{d / 'gt' / 'gt.txt'}: not found (a sequence is scored against its gt)")
    return seq_dirs


def run_mot_checkpoints(
    checkpoints: Sequence[str | Path],
    data_root: str | Path,
    results_dir: str | Path,
    cfg: Config,
    *,
    half: str = "full",
    sequences: Sequence[str] | None = None,
    detector: str | None = None,
    embedder: str = "student",
    teacher_checkpoint: str = "",
    render_dir: str | Path = "",
    use_ray: bool = True,
    progress: bool = True,
) -> tuple[list[CheckpointEvaluation], PoolReport]:
    """Track and score every sequence under ``data_root`` with every checkpoint.

    Inputs are checked here first (sequences, gt, checkpoints, teacher). Work items are
    (checkpoint, sequence) pairs on one pool (:class:`InferenceWorker`); as each comes back this
    driver writes ``<results_dir>[/<label>]/<SEQ>.txt`` and the rendered frames under ``render_dir``
    (atomically). Returns one :class:`CheckpointEvaluation` per checkpoint and the pool's report.
    """
    from kdtrack.formats.mot import read_seqinfo, split_frames, write_results
    from kdtrack.io import atomic_write_bytes
    from kdtrack.metrics.mot import summarize_sequences

    seq_dirs = mot_sequence_dirs(data_root, sequences, detector)
    worker_kwargs = inference_worker_kwargs(cfg, embedder, teacher_checkpoint)
    infos, handles = zip(*load_checkpoints(checkpoints, ship=use_ray))
    split = "val_half" if half == "val" else "all"
    frames = {d.name: len(split_frames(read_seqinfo(d).seq_length, split)) for d in seq_dirs}
    results_dir = Path(results_dir).resolve()
    render_dir = Path(render_dir).resolve() if render_dir else None
    num_render = cfg.eval.render_frames if render_dir else 0
    items = [(c, d) for c in range(len(infos)) for d in seq_dirs]
    calls = [("track", (handles[c], str(d), half, num_render)) for c, d in items]
    evaluations = [CheckpointEvaluation(info, {}) for info in infos]
    finished: list[list[Any]] = [[] for _ in infos]
    bar = Progress(sum(frames.values()) * len(infos), len(calls), unit="frame", items="sequences",
                   desc=default_dataset_name("MOT17", half), enabled=progress)

    def on_done(outcome) -> None:
        c, seq = items[outcome.index]
        ev = evaluations[c]
        prefix = f"{ev.checkpoint.label}/" if ev.checkpoint.label else ""
        if not outcome.ok:
            ev.failed[seq.name] = outcome.error
            bar.update(frames[seq.name], False, f"{prefix}{seq.name}: FAILED: {outcome.error}")
            return
        run = outcome.value
        out_dir = results_dir / ev.checkpoint.label
        ev.result_files.append(write_results(out_dir / f"{seq.name}.txt", run.pop("rows")))
        for frame, jpeg in sorted(run.pop("rendered").items()):
            path = render_dir / ev.checkpoint.label / f"{seq.name}_{frame:06d}.jpg"
            ev.rendered_frames.append(atomic_write_bytes(path, jpeg))
        finished[c].append(run.pop("evaluation"))
        ev.runs.append(run)
        bar.update(run["frames"], True, f"{prefix}{seq.name}: {run['frames']} frames in {outcome.seconds:.1f} s "
                                        f"({run['device']}, node {run['node']})")

    def on_ready(info: dict) -> None:
        bar.write(f"worker ready: {info['device']}, {info['threads']} thread(s), node {info['node']} "
                  f"pid {info['pid']}")

    try:
        report = run_actor_pool(InferenceWorker, worker_kwargs, calls, on_done=on_done, on_ready=on_ready,
                                **pool_options(cfg.eval, use_ray))
    finally:
        bar.close()
    for ev, done in zip(evaluations, finished):
        ev.result_files.sort()
        ev.runs.sort(key=lambda r: r["name"])
        if not done:
            ev.metrics = {"sequences": {}, "combined": {}}
        else:
            ev.metrics = summarize_sequences(sorted(done, key=lambda e: e.name))
            _add_fps(ev.metrics, ev.runs)
        if ev.failed:
            ev.metrics["failed"] = dict(sorted(ev.failed.items()))
    return evaluations, report


def _add_fps(metrics: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    for run in runs:
        seq = metrics["sequences"][run["name"]]
        seq["network_fps"] = run["frames"] / max(run["network_seconds"], 1e-9)
        seq["association_fps"] = run["frames"] / max(run["association_seconds"], 1e-9)
    frames = sum(r["frames"] for r in runs)
    metrics["combined"]["network_fps"] = frames / max(sum(r["network_seconds"] for r in runs), 1e-9)
    metrics["combined"]["association_fps"] = frames / max(sum(r["association_seconds"] for r in runs), 1e-9)


def run_mot_checkpoint(checkpoint: str | Path, data_root: str | Path, results_dir: str | Path, cfg: Config,
                       **options: Any) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """One checkpoint (:func:`run_mot_checkpoints`, same keyword options; no progress bar unless asked):
    ``(metrics, runs)``; ``metrics["failed"]`` names the sequences that failed, if any."""
    options.setdefault("progress", False)
    (ev,), _ = run_mot_checkpoints([checkpoint], data_root, results_dir, cfg, **options)
    for run in ev.runs:
        run["rendered"] = [str(p) for p in ev.rendered_frames if p.name.startswith(f"{run['name']}_")]
    return ev.metrics, ev.runs


# --------------------------------------------------------------------------- person search


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
        if not outcome.ok:
            name = f"images {images[chunk[0]]} .. {images[chunk[-1]]}"
            results[c].failed[name] = outcome.error
            bar.update(len(chunk), False, f"{name}: FAILED: {outcome.error}")
            return
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


# --------------------------------------------------------------------------- oracle-box re-ID


def reid_dataset_name(split: str) -> str:
    """MLflow metric prefix: ``reid`` for the test split, ``reid-<split>`` otherwise (e.g. ``reid-val``)."""
    return "reid" if split == "test" else f"reid-{split}"


def add_reid_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``reid`` subcommand's arguments."""
    from kdtrack.reid_probe import BASELINES

    p = sub.add_parser("reid", help="oracle-box re-ID: embeddings at ground-truth boxes, retrieval mAP / CMC")
    p.add_argument("--checkpoint", required=True, type=Path, help="kdtrack checkpoint (file or folder)")
    p.add_argument("--world", required=True, type=Path,
                   help="data root holding person_search/manifest.json and MOT17/train/ (a synthetic world)")
    p.add_argument("--split", default=None, help="person-search split (default: eval.reid_split)")
    p.add_argument("--protocols", default=None,
                   help="comma-separated, from person_search,mot (default: eval.reid_protocols)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma-separated baselines from {','.join(BASELINES)} on the same boxes: the random-init "
                        f"student, the whole-box and the person-centred colour histograms ('none' for none)")
    p.add_argument("--teacher-checkpoint", default="",
                   help="also embed with this Re-ID teacher: rows 'teacher' (crops of the frame) and 'teacher_input' "
                        "(crops of the frame letterboxed to the student's input: KD's targets), and each embedder's "
                        "mean cosine to the teacher (cosT)")
    p.add_argument("--out", default=None, type=Path, help="metrics.json to write (atomically)")
    p.add_argument("--config", default=None, help="preset name or YAML (eval.* fields)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    p.add_argument("--dataset", default=None, help="MLflow metric prefix (default reid, or reid-<split>)")
    p.add_argument("--mlflow-uri", default=None, help="absolute tracking URI; logging is off without one")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: config mlflow.experiment)")
    p.add_argument("--run-id", default=None, help="log into this existing run (e.g. the training run)")
    return p


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "none")


def run_reid(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """``reid`` mode: load boxes and checkpoint, embed, score, print, write JSON, log to MLflow.

    A missing or malformed input (world, manifest, sequence, checkpoint) stops
    with one line naming the file.
    """
    import time

    from kdtrack.engine import select_device
    from kdtrack.inference import load_student, load_teacher, teacher_config_of, teacher_embed_fn
    from kdtrack.reid_probe import (
        build_embedders,
        evaluate_reid_box_sets,
        flatten_reid_metrics,
        format_reid_table,
        load_reid_box_sets,
    )

    start = time.perf_counter()
    eval_cfg = cfg.eval  # its ranges were checked as it loaded (kdtrack.config_checks)
    split = args.split or eval_cfg.reid_split
    baselines = _csv(args.baselines) or ()
    device = select_device(inference_gpus(eval_cfg, use_ray=False) > 0)
    try:
        box_sets = load_reid_box_sets(args.world, eval_cfg, split=split, protocols=_csv(args.protocols))
        model, ckpt_cfg = load_student(args.checkpoint, device)
        teacher_embed = None
        if args.teacher_checkpoint:
            tcfg = teacher_config_of(args.teacher_checkpoint, cfg.teacher)
            teacher = load_teacher(tcfg, args.teacher_checkpoint, device)
            teacher_embed = teacher_embed_fn(teacher, (tcfg.crop_height, tcfg.crop_width), device)
    except (OSError, ValueError) as exc:  # FormatError / MissingFileError / bad checkpoint: the message names the file
        raise SystemExit(f"evaluate reid: {exc}") from None
    # the network comes from the checkpoint; the protocols from this job's config
    embedders = build_embedders(model, replace(ckpt_cfg, eval=eval_cfg), device, baselines=baselines,
                                teacher_embed=teacher_embed)
    if teacher_embed is not None:  # the teacher on the student's input canvas: the targets KD regresses
        embedders[TEACHER_INPUT] = teacher_embed_fn(teacher, (tcfg.crop_height, tcfg.crop_width), device,
                                                    canvas=(ckpt_cfg.model.input_width, ckpt_cfg.model.input_height))
    results = evaluate_reid_box_sets(embedders, box_sets, eval_cfg)
    seconds = time.perf_counter() - start
    protocols = {"person_search": f"person-search split '{split}' (cross-camera)",
                 "mot": f"MOT17 {eval_cfg.reid_mot_split} (same id >= {eval_cfg.reid_mot_gap} frames apart)"}
    context = ("" if eval_cfg.reid_context == "scene"
               else f", each box alone on grey (grown by {eval_cfg.reid_context_pad:g} per side)")
    print(f"oracle-box re-ID, {', '.join(protocols[p] for p in box_sets)}{context}, percent:")
    print(format_reid_table(results))
    print(f"{len(embedders)} embedders in {seconds:.1f} s ({device})")
    record = {
        **results,
        "settings": {
            "checkpoint": str(args.checkpoint), "world": str(args.world), "split": split,
            "protocols": list(box_sets), "embedders": list(embedders), "mot_split": eval_cfg.reid_mot_split,
            "mot_gap": eval_cfg.reid_mot_gap, "mot_frame_stride": eval_cfg.reid_mot_frame_stride,
            "min_visibility": eval_cfg.reid_min_visibility, "context": eval_cfg.reid_context,
            "context_pad": eval_cfg.reid_context_pad, "seconds": seconds, "device": str(device),
        },
    }
    if args.out:
        atomic_write_json(args.out, jsonable(record))  # nan (no query with a positive) -> null
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    if uri:
        run_id = log_evaluation_to_mlflow(
            flatten_reid_metrics(results, prefix=""), dataset=args.dataset or reid_dataset_name(split),
            tracking_uri=uri, experiment=args.experiment or cfg.mlflow.experiment, run_id=args.run_id,
            checkpoint=str(args.checkpoint), tables=reid_tables(results),
        )
        print(f"logged to MLflow run {run_id} ({uri})")
    return record


def reid_tables(results: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """One MLflow table per protocol, ``reid_<protocol>``: a row per embedder, a column per metric (the
    numbers of the printed table; a metric an embedder lacks, or a non-finite one, is None)."""
    tables = {}
    for protocol in ("person_search", "mot"):
        rows = results.get(protocol)
        if not isinstance(rows, Mapping) or not rows:
            continue
        metrics = list(dict.fromkeys(m for row in rows.values() for m, v in row.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)))
        table: dict[str, list[Any]] = {"embedder": list(rows)}
        for metric in metrics:
            table[metric] = [jsonable(rows[name].get(metric)) if isinstance(rows[name].get(metric), (int, float))
                             else None for name in rows]
        tables[f"reid_{protocol}"] = table
    return tables


# --------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    from kdtrack.metrics.mot import BENCHMARKS
    from kdtrack.metrics.mot_files import HALVES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser, checkpoint_tag: bool = True) -> None:
        p.add_argument("--out", required=True, type=Path, help="metrics.json to write")
        p.add_argument("--config", default=None, help="preset name or YAML (eval.* fields)")
        p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
        p.add_argument("--dataset", default=None, help="MLflow metric prefix (default from the mode)")
        p.add_argument("--mlflow-uri", default=None, help="absolute tracking URI; logging is off without one")
        p.add_argument("--experiment", default=None, help="MLflow experiment (default: config mlflow.experiment)")
        p.add_argument("--run-id", default=None, help="log into this existing run (e.g. the training run)")
        if checkpoint_tag:
            p.add_argument("--checkpoint", default="", help="checkpoint evaluated (tag of a new run)")

    checkpoints_help = ("kdtrack checkpoint(s): files, folders holding checkpoint.pt, or a training run's "
                        "folder (every checkpoint below it); each is logged at its training iteration")

    mot = sub.add_parser("mot-files", help="score MOTChallenge tracker output files")
    mot.add_argument("--gt-root", required=True, type=Path)
    mot.add_argument("--results", required=True, type=Path)
    mot.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    mot.add_argument("--half", default="full", choices=HALVES, help="val: frames N//2+2..N renumbered from 1")
    mot.add_argument("--sequences", nargs="*", default=None, help="subset of GT sequences (default: all)")
    mot.add_argument("--no-ray", action="store_true", help="score sequences serially in this process")
    common(mot)

    mc = sub.add_parser("mot", help="run checkpoints over MOT17-style sequences, then score")
    mc.add_argument("--checkpoint", required=True, type=Path, nargs="+", help=checkpoints_help)
    mc.add_argument("--data-root", required=True, type=Path,
                    help="folder of sequences (MOT17/train): <SEQ>/seqinfo.ini, img1/, gt/gt.txt")
    mc.add_argument("--half", default="full", choices=HALVES, help="val: track and score frames N//2+2..N")
    mc.add_argument("--sequences", nargs="*", default=None,
                    help="subset of sequences, by folder name or MOT17 base name (MOT17-02) (default: all)")
    mc.add_argument("--detector", default=None, choices=("DPM", "FRCNN", "SDP", "all"),
                    help="which of MOT17's per-detector copies of a sequence (same frames) to track; "
                         "default: the first copy of each; 'all': every copy")
    mc.add_argument("--association", default=None, choices=("both", "boxes", "embeddings"),
                    help="tracker ablation (default: tracker.mode)")
    mc.add_argument("--embedder", default="student", choices=("student", "teacher"),
                    help="teacher: embed detected crops with the Re-ID teacher (KDMOT two-step)")
    mc.add_argument("--teacher-checkpoint", default="", help="teacher weights for --embedder teacher")
    mc.add_argument("--results-dir", default=None, type=Path,
                    help="tracker output files, written by this driver (default: <out dir>/results)")
    mc.add_argument("--no-ray", action="store_true", help="track and score sequences serially in this process")
    mc.add_argument("--no-progress", action="store_true", help="no progress bar (per-sequence lines stay)")
    common(mc, checkpoint_tag=False)

    ps = sub.add_parser("person-search", help="mAP / top-k from checkpoints or precomputed detections")
    src = ps.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", type=Path, help="precomputed npz (kdtrack.metrics.person_search.NPZ_FORMAT)")
    src.add_argument("--checkpoint", type=Path, nargs="+",
                     help=checkpoints_help + "; detect and embed the manifest's images")
    ps.add_argument("--manifest", type=Path, help="person-search manifest.json (with --checkpoint)")
    ps.add_argument("--embedder", default="student", choices=("student",) + TEACHER_EMBEDDERS,
                    help="teacher: embed queries and detections with the Re-ID teacher; teacher_query: KDMOT's "
                         "protocol, the teacher embeds each query crop and the student the gallery detections")
    ps.add_argument("--teacher-checkpoint", default="", help="teacher weights for --embedder teacher")
    ps.add_argument("--save-detections", type=Path, default=None,
                    help="write the computed inputs as npz (several checkpoints: <stem>_<label>.npz)")
    ps.add_argument("--no-ray", action="store_true", help="detect gallery images in this process")
    ps.add_argument("--no-progress", action="store_true", help="no progress bar")
    ps.add_argument("--gallery-size", type=int, default=None,
                    help="CUHK-SYSU gallery list size; -1 = all-frames gallery (default: eval.ps_gallery_size)")
    ps.add_argument("--cross-camera-only", action="store_true", help="all-frames gallery: other cameras only")
    common(ps, checkpoint_tag=False)
    add_reid_parser(sub)
    mk = sub.add_parser("market1501", help="Market-1501 protocol on crops: a teacher (or student) checkpoint vs "
                                           "the colour histogram and chance")
    mk.add_argument("--checkpoint", required=True, help="a teacher (train.recipe=teacher) or student checkpoint")
    mk.add_argument("--data-root", required=True, type=Path,
                    help="a root holding market1501/ (a synthetic world) or an unpacked Market-1501")
    mk.add_argument("--batch-size", type=int, default=None, help="crops per forward pass (default: teacher.eval_batch_size)")
    common(mk, checkpoint_tag=False)
    dt = sub.add_parser("detection", help="person detection on CrowdHuman val: AP, recall / precision at score "
                                          "thresholds")
    dt.add_argument("--checkpoint", required=True, help="a student checkpoint")
    dt.add_argument("--data-root", required=True, type=Path,
                    help="a root holding crowdhuman/annotation_val.odgt and crowdhuman/Images (or a synthetic world)")
    dt.add_argument("--score-thresholds", default="0.4,0.5",
                    help="comma-separated scores at which recall / precision are reported (person search keeps "
                         "gallery boxes at eval.ps_score_threshold, 0.5)")
    dt.add_argument("--iou", type=float, default=0.5, help="IoU for a true positive")
    dt.add_argument("--batch-size", type=int, default=16)
    common(dt, checkpoint_tag=False)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one mode; returns what it wrote to ``--out``.

    Raises :class:`InputError` / ``ConfigError`` / ``FileNotFoundError`` on bad inputs (before any
    work) and :class:`EvaluationFailed` after writing the metrics of what finished when some
    sequences or image batches failed; :func:`cli` turns these into exit codes 2 and 1.
    """
    from kdtrack.threads import limit_blas_threads

    args = get_args_parser().parse_args(argv)
    cfg: Config = load_config(args.config, args.overrides)
    uri_source = args.mlflow_uri or cfg.mlflow.tracking_uri
    args.checkpoint = resolve_checkpoints(getattr(args, "checkpoint", None), uri_source)  # runs:/, models:/
    if getattr(args, "teacher_checkpoint", None):
        args.teacher_checkpoint = resolve_checkpoints(args.teacher_checkpoint, uri_source)
    limit_blas_threads()  # in-process inference and scoring (reid, --no-ray, the driver's ranking)
    if args.mode == "reid":
        return run_reid(args, cfg)
    if args.mode == "market1501":
        from jobs._market_eval import run_market1501

        return run_market1501(args.checkpoint, args.data_root, out=args.out, mlflow_uri=args.mlflow_uri,
                              run_id=args.run_id, batch_size=args.batch_size, experiment=args.experiment)
    if args.mode == "detection":
        from jobs._detection_eval import parse_thresholds, run_detection

        try:
            return run_detection(args.checkpoint, args.data_root, out=args.out,
                                 score_thresholds=parse_thresholds(args.score_thresholds), iou_threshold=args.iou,
                                 batch_size=args.batch_size, mlflow_uri=args.mlflow_uri or cfg.mlflow.tracking_uri,
                                 run_id=args.run_id, experiment=args.experiment)
        except (OSError, ValueError) as exc:  # FormatError / missing file / bad checkpoint: the message names it
            raise InputError(f"evaluate detection: {exc}") from None
    if args.mode == "mot-files":
        from kdtrack.metrics.mot import format_table

        metrics = score_mot_results(
            args.gt_root, args.results, args.benchmark, args.half,
            sequences=args.sequences, cfg=cfg.eval, use_ray=not args.no_ray,
        )
        print(format_table(metrics))
        result_files = sorted(args.results / f"{name}.txt" for name in metrics["sequences"])
        entry = CheckpointEvaluation(None, metrics, result_files=result_files)
        return _write_and_log(args, cfg, args.dataset or default_dataset_name(args.benchmark, args.half), [entry],
                              checkpoint_tag=str(args.checkpoint or ""))
    if args.mode == "mot":
        return _main_mot(args, cfg)
    return _main_person_search(args, cfg)


def _main_mot(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    from kdtrack.metrics.mot import format_table

    if args.association:
        cfg = replace(cfg, tracker=replace(cfg.tracker, mode=args.association))
    results_dir = args.results_dir or (args.out.resolve().parent / "results")
    render_dir = results_dir.parent / "frames" if cfg.eval.render_frames > 0 else ""
    evaluations, report = run_mot_checkpoints(
        args.checkpoint, args.data_root, results_dir, cfg, half=args.half, sequences=args.sequences,
        detector=args.detector, embedder=args.embedder, teacher_checkpoint=args.teacher_checkpoint,
        render_dir=render_dir, use_ray=not args.no_ray, progress=not args.no_progress,
    )
    dataset = args.dataset or default_dataset_name("MOT17", args.half)
    where = describe_workers(report.workers)
    if len(evaluations) == 1:
        ev = evaluations[0]
        if ev.metrics["sequences"]:
            print(format_table(ev.metrics))
            comb = ev.metrics["combined"]
            print(f"network {comb['network_fps']:.1f} FPS, association {comb['association_fps']:.1f} FPS "
                  f"({ev.runs[0]['device']}, association mode '{cfg.tracker.mode}', embedder {args.embedder}; "
                  f"{where})")
    else:
        print(format_checkpoint_table(evaluations, MOT_SUMMARY_COLUMNS))
        print(f"{len(evaluations)} checkpoints, association mode '{cfg.tracker.mode}', embedder {args.embedder}; "
              f"{where}")
    return _write_and_log(args, cfg, dataset, evaluations, checkpoint_tag=" ".join(map(str, args.checkpoint)),
                          what="sequences")


def _main_person_search(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    from kdtrack.metrics.person_search import save_person_search_npz

    eval_cfg = cfg.eval
    if args.cross_camera_only:
        eval_cfg = replace(eval_cfg, ps_cross_camera_only=True)
    gallery_size = eval_cfg.ps_gallery_size if args.gallery_size is None else args.gallery_size
    dataset = args.dataset or "person-search"
    if args.checkpoint is None:
        queries, gallery = load_person_search_inputs(args.detections)
        metrics = score_person_search(queries, gallery, gallery_size, eval_cfg)
        print(_person_search_line(metrics, eval_cfg))
        return _write_and_log(args, cfg, dataset, [CheckpointEvaluation(None, metrics)], checkpoint_tag="")
    inputs, stats = person_search_checkpoints(
        args.checkpoint, args.manifest, cfg, embedder=args.embedder, teacher_checkpoint=args.teacher_checkpoint,
        use_ray=not args.no_ray, progress=not args.no_progress)
    evaluations = []
    for result in inputs:
        metrics: dict[str, Any] = {"failed": result.failed}
        if not result.failed:
            metrics = score_person_search(result.queries, result.gallery, gallery_size, eval_cfg)
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
            print(_person_search_line(evaluations[0].metrics, eval_cfg))
    else:
        columns = ("mAP",) + tuple(f"top{k}" for k in eval_cfg.ps_top_k)
        print(format_checkpoint_table(evaluations, tuple((c, "pct") for c in columns)))
    print(f"{stats['tasks']} image batches on {stats['workers']} worker(s), {stats['model_builds']} network "
          f"build(s) ({', '.join(stats['devices'])})")
    return _write_and_log(args, cfg, dataset, evaluations, checkpoint_tag=" ".join(map(str, args.checkpoint)),
                          what="image batches")


def _person_search_line(metrics: dict[str, Any], eval_cfg: EvalConfig) -> str:
    return " ".join(f"{k} {100 * float(metrics[k]):.1f}" for k in ["mAP"] + [f"top{k}" for k in eval_cfg.ps_top_k])


MOT_SUMMARY_COLUMNS = (("MOTA", "pct"), ("IDF1", "pct"), ("HOTA", "pct"), ("DetA", "pct"), ("AssA", "pct"),
                       ("Rcll", "pct"), ("Prcn", "pct"), ("FP", "int"), ("FN", "int"), ("IDs", "int"))


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


def _write_and_log(args: argparse.Namespace, cfg: Config, dataset: str, evaluations: Sequence[CheckpointEvaluation],
                   *, checkpoint_tag: str, what: str = "sequences") -> dict[str, Any]:
    """Write ``--out`` (atomically), log each complete evaluation to MLflow at its checkpoint's
    iteration, then raise :class:`EvaluationFailed` if anything failed.

    A checkpoint with failed items is written (metrics of what finished, ``"failed"``: name ->
    error) but not logged: a combined number over part of the data would sit on the MLflow curve
    as if it were the whole.
    """
    if len(evaluations) == 1:
        record = evaluations[0].metrics
    else:
        record = {"checkpoints": [{"checkpoint": ev.checkpoint.path, "iteration": ev.checkpoint.iteration,
                                   "metrics": ev.metrics} for ev in evaluations]}
    atomic_write_json(args.out, record)
    failures = [(ev, name, error) for ev in evaluations for name, error in ev.failed.items()]
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    if uri:
        run_id = args.run_id
        for ev in evaluations:
            if ev.failed:
                continue
            run_id = log_evaluation_to_mlflow(
                ev.metrics, dataset=dataset, tracking_uri=uri, experiment=args.experiment or cfg.mlflow.experiment,
                run_id=run_id, checkpoint=checkpoint_tag, result_files=ev.result_files,
                rendered_frames=ev.rendered_frames, step=ev.checkpoint.iteration if ev.checkpoint else 0,
                artifact_subdir=ev.checkpoint.label if ev.checkpoint else "",
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


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.evaluate``: exit 0; 2 with one line on a bad config key or input path;
    1 when some sequences / image batches failed (after writing the others)."""
    return run_cli(main, argv, "evaluate", partial_failure=(EvaluationFailed,))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
