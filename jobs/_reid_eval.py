"""Oracle-box re-ID evaluation (``jobs.evaluate reid``, ``kdtrack.metrics.reid_probe``): a checkpoint's identity
embedding read at every ground-truth box, with its baselines on the same boxes, scored by retrieval."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from jobs._inference_pool import inference_gpus
from jobs._mlflow_eval import jsonable, log_evaluation_to_mlflow
from kdtrack.config import Config
from kdtrack.io import atomic_write_json

TEACHER_INPUT = "teacher_input"  # reid row: the teacher on crops of the frame letterboxed to the student's input


def reid_dataset_name(split: str) -> str:
    """MLflow metric prefix: ``reid`` for the test split, ``reid-<split>`` otherwise (e.g. ``reid-val``)."""
    return "reid" if split == "test" else f"reid-{split}"


def add_reid_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``reid`` subcommand's arguments."""
    from kdtrack.metrics.reid_probe import BASELINES

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


def run_reid(args: argparse.Namespace, cfg: Config, *,
             log_to_mlflow: Callable[..., str] = log_evaluation_to_mlflow) -> dict[str, Any]:
    """``reid`` mode: load boxes and checkpoint, embed, score, print, write JSON, log to MLflow.

    A missing or malformed input (world, manifest, sequence, checkpoint) stops
    with one line naming the file.
    """
    import time

    from kdtrack.engine import select_device
    from kdtrack.inference import load_student, load_teacher, teacher_config_of, teacher_embed_fn
    from kdtrack.metrics.reid_probe import (
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
        run_id = log_to_mlflow(
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

