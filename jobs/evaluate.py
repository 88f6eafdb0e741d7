"""Evaluate tracking and person search; write ``metrics.json`` and optionally log to MLflow.

Modes (argparse subcommands; more, e.g. a checkpoint-driven ``mot``, plug in beside them):

* ``mot-files``: score MOTChallenge tracker files against gt::

    python -m jobs.evaluate mot-files --gt-root GT --results DIR --benchmark MOT17 \\
        [--half val] --out metrics.json [--mlflow-uri URI --experiment NAME --run-id RUN]

  ``GT/<SEQ>/`` holds ``seqinfo.ini`` (required: seqLength fixes the scored
  frames) and ``gt/gt.txt``; ``DIR/<SEQ>.txt`` are tracker outputs. More than
  one sequence are scored as parallel Ray tasks (``ray.init()`` when Ray is not
  initialised; ``RAY_ADDRESS`` is honoured), ``--no-ray`` scores serially.

* ``mot``: run a checkpoint over MOT17-style sequences (letterbox, decode,
  tracker; one Ray task per sequence, on a GPU when the cluster has one —
  ``eval.gpus_per_sequence``, -1 = auto), write MOTChallenge result files, then score them as ``mot-files``::

    python -m jobs.evaluate mot --checkpoint CKPT --data-root MOT17/train \
        [--half val] [--association both|boxes|embeddings] \
        [--embedder student|teacher --teacher-checkpoint T] --out metrics.json

  The network comes from the checkpoint; decode, tracker and eval thresholds
  from ``--config``/``--set`` (FairMOT's defaults). Network FPS (pre-processing,
  forward, decode) and association FPS (``Tracker.update``) are reported apart.

* ``person-search``: mAP / top-k from precomputed detections and embeddings in
  the npz layout of ``kdtrack.metrics.person_search.NPZ_FORMAT``::

    python -m jobs.evaluate person-search --detections dets.npz [--gallery-size 100|-1] --out metrics.json

Metrics are fractions in 0..1 in the JSON; the printed table shows percent.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from jobs._mlflow_eval import log_evaluation_to_mlflow
from jobs._ray import ensure_ray, map_tasks
from kdtrack.config import Config, EvalConfig, load_config
from kdtrack.io import atomic_write_json
from kdtrack.metrics.mot import BENCHMARKS, format_table
from kdtrack.metrics.mot_files import HALVES, evaluate_mot_files
from kdtrack.metrics.person_search import (
    GalleryImage,
    Query,
    evaluate_person_search,
    load_person_search_npz,
    save_person_search_npz,
)

__all__ = ["log_evaluation_to_mlflow", "score_mot_results", "score_person_search", "main"]


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
    cfg = cfg or EvalConfig()

    def ray_map(score, files):
        return map_tasks(score, [(f,) for f in files], use_ray=use_ray, num_cpus=cfg.cpus_per_sequence)

    return evaluate_mot_files(gt_root, results_dir, benchmark=benchmark, half=half, sequences=sequences,
                              cfg=cfg, map_fn=ray_map)


def default_dataset_name(benchmark: str, half: str) -> str:
    """MLflow metric prefix: ``MOT17-val`` for the val half, ``MOT17`` for full sequences."""
    return f"{benchmark}-val" if half == "val" else benchmark


# --------------------------------------------------------------------------- MOT from a checkpoint


def track_sequence_to_file(
    checkpoint: str,
    seq_dir: str,
    results_path: str,
    config: dict[str, Any],
    *,
    split: str = "all",
    embedder: str = "student",
    teacher_checkpoint: str = "",
    render_dir: str = "",
    use_gpu: bool = False,
) -> dict[str, Any]:
    """One sequence: checkpoint -> tracker -> ``results_path`` (MOTChallenge rows), atomically.

    Runs inside a Ray task (or in-process); returns timings and rendered frame paths.
    """
    import cv2
    import numpy as np

    from kdtrack.formats.mot import read_seqinfo, split_frames, write_results
    from kdtrack.inference import track_sequence
    from kdtrack.io import atomic_write_bytes

    detector, embed_fn = _build_detector(checkpoint, config, embedder, teacher_checkpoint, use_gpu)
    cfg = detector.cfg
    num_render = cfg.eval.render_frames if render_dir else 0
    n = len(split_frames(read_seqinfo(seq_dir).seq_length, split))
    render = sorted({int(round(x)) for x in np.linspace(1, n, num_render)}) if num_render else []
    run = track_sequence(detector, seq_dir, cfg.tracker, split=split,
                         embed_fn=embed_fn, render_frames=render)
    write_results(results_path, run.rows)
    frames = []
    for frame, image in sorted(run.rendered.items()):
        ok, encoded = cv2.imencode(".jpg", image)
        if ok:
            path = Path(render_dir) / f"{run.name}_{frame:06d}.jpg"
            atomic_write_bytes(path, encoded.tobytes())
            frames.append(str(path))
    return {
        "name": run.name,
        "frames": run.num_frames,
        "detections": run.num_detections,
        "network_seconds": run.network_seconds,
        "association_seconds": run.association_seconds,
        "rendered": frames,
        "device": str(detector.device),
    }


def inference_gpus(cfg: EvalConfig, use_ray: bool) -> float:
    """GPUs per inference task: the configured number, or (-1) one when GPUs exist, else 0."""
    if cfg.gpus_per_sequence >= 0:
        return float(cfg.gpus_per_sequence)
    if use_ray:
        return 1.0 if ensure_ray().cluster_resources().get("GPU", 0) > 0 else 0.0
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def run_mot_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    results_dir: str | Path,
    cfg: Config,
    *,
    half: str = "full",
    sequences: Sequence[str] | None = None,
    embedder: str = "student",
    teacher_checkpoint: str = "",
    render_dir: str | Path = "",
    use_ray: bool = True,
) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """Track every sequence under ``data_root`` with the checkpoint, then score: (metrics, runs)."""
    from kdtrack.config import config_to_dict
    from kdtrack.formats.mot import list_sequences

    checkpoint = str(Path(checkpoint).resolve())
    data_root = Path(data_root).resolve()
    results_dir = Path(results_dir).resolve()
    seq_dirs = [d for d in list_sequences(data_root) if sequences is None or d.name in sequences]
    if not seq_dirs:
        raise FileNotFoundError(f"no MOT sequences (folders with seqinfo.ini) under {data_root}")
    split = "val_half" if half == "val" else "all"
    gpus = inference_gpus(cfg.eval, use_ray and len(seq_dirs) > 1)
    use_gpu = gpus > 0
    kwargs = dict(split=split, embedder=embedder, teacher_checkpoint=teacher_checkpoint,
                  render_dir=str(Path(render_dir).resolve()) if render_dir else "", use_gpu=use_gpu)
    cfg_dict = config_to_dict(cfg)
    jobs = [(checkpoint, str(d), str(results_dir / f"{d.name}.txt"), cfg_dict) for d in seq_dirs]
    runs = map_tasks(track_sequence_to_file, jobs, use_ray=use_ray, num_cpus=cfg.eval.cpus_per_sequence,
                     num_gpus=gpus, **kwargs)
    metrics = score_mot_results(data_root, results_dir, "MOT17", half,
                                sequences=[d.name for d in seq_dirs], cfg=cfg.eval, use_ray=use_ray)
    for run in runs:
        seq = metrics["sequences"][run["name"]]
        seq["network_fps"] = run["frames"] / max(run["network_seconds"], 1e-9)
        seq["association_fps"] = run["frames"] / max(run["association_seconds"], 1e-9)
    frames = sum(r["frames"] for r in runs)
    metrics["combined"]["network_fps"] = frames / max(sum(r["network_seconds"] for r in runs), 1e-9)
    metrics["combined"]["association_fps"] = frames / max(sum(r["association_seconds"] for r in runs), 1e-9)
    return metrics, runs


# --------------------------------------------------------------------------- person search


def load_person_search_inputs(detections: str | Path) -> tuple[list[Query], dict[str, GalleryImage]]:
    """The model boundary: queries and gallery detections/embeddings from a precomputed npz.

    A checkpoint-driven variant (detect + embed every gallery image, embed each
    query box) returns the same ``(queries, gallery)`` pair.
    """
    return load_person_search_npz(detections)


def _detect_chunk(checkpoint: str, image_paths: list[str], config: dict[str, Any], embedder: str,
                  teacher_checkpoint: str, use_gpu: bool) -> list[tuple]:
    """Ray task body: detections of a chunk of gallery images as plain arrays."""
    detector, embed_fn = _build_detector(checkpoint, config, embedder, teacher_checkpoint, use_gpu)
    from kdtrack.inference import detect_images

    return [(d.boxes_xyxy, d.scores, d.embeddings) for d in detect_images(detector, image_paths, embed_fn)]


def _build_detector(checkpoint: str, config: dict[str, Any], embedder: str, teacher_checkpoint: str,
                    use_gpu: bool):
    from dataclasses import replace as _replace

    from kdtrack.config import config_from_dict
    from kdtrack.engine import select_device
    from kdtrack.inference import Detector, load_student, load_teacher, teacher_embed_fn

    cli_cfg = config_from_dict(config)
    device = select_device(use_gpu)
    model, ckpt_cfg = load_student(checkpoint, device)
    # the network comes from the checkpoint; thresholds and protocols from this job's config
    cfg = _replace(ckpt_cfg, decode=cli_cfg.decode, tracker=cli_cfg.tracker, eval=cli_cfg.eval,
                   teacher=cli_cfg.teacher)
    embed_fn = None
    if embedder == "teacher":
        if not teacher_checkpoint:
            raise ValueError("--embedder teacher needs --teacher-checkpoint")
        teacher = load_teacher(cfg.teacher, teacher_checkpoint, device)
        embed_fn = teacher_embed_fn(teacher, (cfg.teacher.crop_height, cfg.teacher.crop_width), device)
    return Detector(model, cfg, device), embed_fn


def person_search_inputs_from_checkpoint(
    checkpoint: str | Path,
    manifest_path: str | Path,
    cfg: Config,
    *,
    embedder: str = "student",
    teacher_checkpoint: str = "",
    use_ray: bool = True,
    images_per_task: int = 64,
) -> tuple[list[Query], dict[str, GalleryImage]]:
    """Detect + embed every test image of a person-search manifest and embed each query box.

    Query embeddings come from the student's identity map at the query box
    centre, or from the teacher on the query crop (``embedder="teacher"``,
    which also embeds the gallery detections: KDMOT's two-step setting).
    """
    import numpy as np

    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.config import config_to_dict
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.data import read_image_rgb
    from kdtrack.inference import student_embedding_at_boxes
    from kdtrack.metrics.person_search import queries_from_manifest

    checkpoint = str(Path(checkpoint).resolve())
    manifest = read_manifest(manifest_path)
    test_images = [im for im in manifest.images if im.split == "test"]
    paths = [str(manifest.image_path(im.file_name)) for im in test_images]
    cfg_dict = config_to_dict(cfg)
    chunks = [paths[i:i + images_per_task] for i in range(0, len(paths), images_per_task)]
    gpus = inference_gpus(cfg.eval, use_ray and len(chunks) > 1)
    use_gpu = gpus > 0
    args = (cfg_dict, embedder, teacher_checkpoint, use_gpu)
    per_chunk = map_tasks(_detect_chunk, [(checkpoint, c, *args) for c in chunks], use_ray=use_ray,
                          num_cpus=cfg.eval.cpus_per_sequence, num_gpus=gpus)
    results = [r for chunk in per_chunk for r in chunk]
    gallery = {
        im.file_name: GalleryImage(boxes, scores, emb, camera=int(im.camera))
        for im, (boxes, scores, emb) in zip(test_images, results)
    }
    detector, embed_fn = _build_detector(checkpoint, cfg_dict, embedder, teacher_checkpoint, use_gpu)
    query_embeddings = []
    for q in manifest.queries:
        image = read_image_rgb(manifest.image_path(q.file_name))
        box = xywh_to_xyxy(np.asarray(q.box_xywh, np.float32))
        embed = embed_fn or functools.partial(student_embedding_at_boxes, detector)
        query_embeddings.append(embed(image, box)[0])
    return queries_from_manifest(manifest, query_embeddings), gallery


def score_person_search(
    queries: Sequence[Query], gallery: dict[str, GalleryImage], gallery_size: int | None, cfg: EvalConfig
) -> dict[str, Any]:
    return evaluate_person_search(queries, gallery, gallery_size=gallery_size, cfg=cfg)


# --------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
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

    mot = sub.add_parser("mot-files", help="score MOTChallenge tracker output files")
    mot.add_argument("--gt-root", required=True, type=Path)
    mot.add_argument("--results", required=True, type=Path)
    mot.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    mot.add_argument("--half", default="full", choices=HALVES, help="val: frames N//2+2..N renumbered from 1")
    mot.add_argument("--sequences", nargs="*", default=None, help="subset of GT sequences (default: all)")
    mot.add_argument("--no-ray", action="store_true", help="score sequences serially in this process")
    common(mot)

    mc = sub.add_parser("mot", help="run a checkpoint over MOT17-style sequences, then score")
    mc.add_argument("--checkpoint", required=True, type=Path, help="kdtrack checkpoint (file or folder)")
    mc.add_argument("--data-root", required=True, type=Path,
                    help="folder of sequences (MOT17/train): <SEQ>/seqinfo.ini, img1/, gt/gt.txt")
    mc.add_argument("--half", default="full", choices=HALVES, help="val: track and score frames N//2+2..N")
    mc.add_argument("--sequences", nargs="*", default=None, help="subset of sequences (default: all)")
    mc.add_argument("--association", default=None, choices=("both", "boxes", "embeddings"),
                    help="tracker ablation (default: tracker.mode)")
    mc.add_argument("--embedder", default="student", choices=("student", "teacher"),
                    help="teacher: embed detected crops with the Re-ID teacher (KDMOT two-step)")
    mc.add_argument("--teacher-checkpoint", default="", help="teacher weights for --embedder teacher")
    mc.add_argument("--results-dir", default=None, type=Path,
                    help="tracker output files (default: <out dir>/results)")
    mc.add_argument("--no-ray", action="store_true", help="track and score sequences serially in this process")
    common(mc, checkpoint_tag=False)

    ps = sub.add_parser("person-search", help="mAP / top-k from precomputed detections and embeddings")
    src = ps.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", type=Path, help="precomputed npz (kdtrack.metrics.person_search.NPZ_FORMAT)")
    src.add_argument("--checkpoint", type=Path, help="kdtrack checkpoint: detect and embed the manifest's images")
    ps.add_argument("--manifest", type=Path, help="person-search manifest.json (with --checkpoint)")
    ps.add_argument("--embedder", default="student", choices=("student", "teacher"),
                    help="teacher: embed queries and detections with the Re-ID teacher")
    ps.add_argument("--teacher-checkpoint", default="", help="teacher weights for --embedder teacher")
    ps.add_argument("--save-detections", type=Path, default=None, help="write the computed inputs as npz")
    ps.add_argument("--no-ray", action="store_true", help="detect gallery images in this process")
    ps.add_argument("--gallery-size", type=int, default=None,
                    help="CUHK-SYSU gallery list size; -1 = all-frames gallery (default: eval.ps_gallery_size)")
    ps.add_argument("--cross-camera-only", action="store_true", help="all-frames gallery: other cameras only")
    common(ps, checkpoint_tag=False)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    cfg: Config = load_config(args.config, args.overrides)
    eval_cfg = cfg.eval
    rendered_frames: list[str] = []
    if args.mode == "mot-files":
        metrics = score_mot_results(
            args.gt_root, args.results, args.benchmark, args.half,
            sequences=args.sequences, cfg=eval_cfg, use_ray=not args.no_ray,
        )
        dataset = args.dataset or default_dataset_name(args.benchmark, args.half)
        result_files = sorted(args.results / f"{name}.txt" for name in metrics["sequences"])
        print(format_table(metrics))
    elif args.mode == "mot":
        if args.association:
            cfg = replace(cfg, tracker=replace(cfg.tracker, mode=args.association))
        results_dir = args.results_dir or (args.out.resolve().parent / "results")
        render_dir = results_dir.parent / "frames" if cfg.eval.render_frames > 0 else ""
        metrics, runs = run_mot_checkpoint(
            args.checkpoint, args.data_root, results_dir, cfg, half=args.half,
            sequences=args.sequences, embedder=args.embedder,
            teacher_checkpoint=args.teacher_checkpoint, render_dir=render_dir, use_ray=not args.no_ray,
        )
        dataset = args.dataset or default_dataset_name("MOT17", args.half)
        result_files = sorted(results_dir / f"{name}.txt" for name in metrics["sequences"])
        rendered_frames = [p for run in runs for p in run["rendered"]]
        print(format_table(metrics))
        comb = metrics["combined"]
        print(f"network {comb['network_fps']:.1f} FPS, association {comb['association_fps']:.1f} FPS "
              f"({runs[0]['device']}, association mode '{cfg.tracker.mode}', embedder {args.embedder})")
    else:
        if args.cross_camera_only:
            eval_cfg = replace(eval_cfg, ps_cross_camera_only=True)
        gallery_size = eval_cfg.ps_gallery_size if args.gallery_size is None else args.gallery_size
        if args.checkpoint is not None:
            if args.manifest is None:
                raise SystemExit("person-search --checkpoint needs --manifest")
            queries, gallery = person_search_inputs_from_checkpoint(
                args.checkpoint, args.manifest, cfg, embedder=args.embedder,
                teacher_checkpoint=args.teacher_checkpoint, use_ray=not args.no_ray)
            if args.save_detections:
                save_person_search_npz(args.save_detections, queries, gallery)
        else:
            queries, gallery = load_person_search_inputs(args.detections)
        metrics = score_person_search(queries, gallery, gallery_size, eval_cfg)
        dataset = args.dataset or "person-search"
        result_files = []
        print(" ".join(f"{k} {100 * float(metrics[k]):.1f}" for k in ["mAP"] + [f"top{k}" for k in eval_cfg.ps_top_k]))
    atomic_write_json(args.out, metrics)
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    if uri:
        run_id = log_evaluation_to_mlflow(
            metrics, dataset=dataset, tracking_uri=uri,
            experiment=args.experiment or cfg.mlflow.experiment, run_id=args.run_id,
            checkpoint=str(args.checkpoint or ""), result_files=result_files,
            rendered_frames=rendered_frames,
        )
        print(f"logged to MLflow run {run_id} ({uri})")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
