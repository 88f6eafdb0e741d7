"""Evaluate tracking and person search; write ``metrics.json`` and optionally log to MLflow.

Modes (argparse subcommands; more, e.g. a checkpoint-driven ``mot``, plug in beside them):

* ``mot-files``: score MOTChallenge tracker files against gt::

    python -m jobs.evaluate mot-files --gt-root GT --results DIR --benchmark MOT17 \\
        [--half val] --out metrics.json [--mlflow-uri URI --experiment NAME --run-id RUN]

  ``GT/<SEQ>/`` holds ``seqinfo.ini`` (required: seqLength fixes the scored
  frames) and ``gt/gt.txt``; ``DIR/<SEQ>.txt`` are tracker outputs. More than
  one sequence are scored as parallel Ray tasks (``ray.init()`` when Ray is not
  initialised; ``RAY_ADDRESS`` is honoured), ``--no-ray`` scores serially.

* ``person-search``: mAP / top-k from precomputed detections and embeddings in
  the npz layout of ``kdtrack.metrics.person_search.NPZ_FORMAT``::

    python -m jobs.evaluate person-search --detections dets.npz [--gallery-size 100|-1] --out metrics.json

Metrics are fractions in 0..1 in the JSON; the printed table shows percent.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from jobs._mlflow_eval import log_evaluation_to_mlflow
from kdtrack.config import Config, EvalConfig, load_config
from kdtrack.io import atomic_write_json
from kdtrack.metrics.mot import BENCHMARKS, SequenceEvaluation, format_table, summarize_sequences
from kdtrack.metrics.mot_files import HALVES, SequenceFiles, find_sequence_files, score_sequence_files
from kdtrack.metrics.person_search import (
    GalleryImage,
    Query,
    evaluate_person_search,
    load_person_search_npz,
)

__all__ = ["log_evaluation_to_mlflow", "score_mot_results", "score_person_search", "main"]


# --------------------------------------------------------------------------- MOT


def _score_with_ray(
    files: Sequence[SequenceFiles], benchmark: str, half: str, cfg: EvalConfig
) -> list[SequenceEvaluation]:
    import ray

    if not ray.is_initialized():
        ray.init()  # connects to RAY_ADDRESS when set, else starts a local cluster
    task = ray.remote(num_cpus=cfg.cpus_per_sequence)(score_sequence_files)
    refs = [task.remote(f, benchmark=benchmark, half=half, cfg=cfg) for f in files]
    return ray.get(refs)


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
    files = find_sequence_files(gt_root, results_dir, sequences)
    if use_ray and len(files) > 1:
        evaluations = _score_with_ray(files, benchmark, half, cfg)
    else:
        evaluations = [score_sequence_files(f, benchmark=benchmark, half=half, cfg=cfg) for f in files]
    return summarize_sequences(evaluations)


def default_dataset_name(benchmark: str, half: str) -> str:
    """MLflow metric prefix: ``MOT17-val`` for the val half, ``MOT17`` for full sequences."""
    return f"{benchmark}-val" if half == "val" else benchmark


# --------------------------------------------------------------------------- person search


def load_person_search_inputs(detections: str | Path) -> tuple[list[Query], dict[str, GalleryImage]]:
    """The model boundary: queries and gallery detections/embeddings from a precomputed npz.

    A checkpoint-driven variant (detect + embed every gallery image, embed each
    query box) returns the same ``(queries, gallery)`` pair.
    """
    return load_person_search_npz(detections)


def score_person_search(
    queries: Sequence[Query], gallery: dict[str, GalleryImage], gallery_size: int | None, cfg: EvalConfig
) -> dict[str, Any]:
    return evaluate_person_search(queries, gallery, gallery_size=gallery_size, cfg=cfg)


# --------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, type=Path, help="metrics.json to write")
        p.add_argument("--config", default=None, help="preset name or YAML (eval.* fields)")
        p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
        p.add_argument("--dataset", default=None, help="MLflow metric prefix (default from the mode)")
        p.add_argument("--mlflow-uri", default=None, help="absolute tracking URI; logging is off without one")
        p.add_argument("--experiment", default=None, help="MLflow experiment (default: config mlflow.experiment)")
        p.add_argument("--run-id", default=None, help="log into this existing run (e.g. the training run)")
        p.add_argument("--checkpoint", default="", help="checkpoint evaluated (tag of a new run)")

    mot = sub.add_parser("mot-files", help="score MOTChallenge tracker output files")
    mot.add_argument("--gt-root", required=True, type=Path)
    mot.add_argument("--results", required=True, type=Path)
    mot.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    mot.add_argument("--half", default="full", choices=HALVES, help="val: frames N//2+2..N renumbered from 1")
    mot.add_argument("--sequences", nargs="*", default=None, help="subset of GT sequences (default: all)")
    mot.add_argument("--no-ray", action="store_true", help="score sequences serially in this process")
    common(mot)

    ps = sub.add_parser("person-search", help="mAP / top-k from precomputed detections and embeddings")
    ps.add_argument("--detections", required=True, type=Path, help="npz (kdtrack.metrics.person_search.NPZ_FORMAT)")
    ps.add_argument("--gallery-size", type=int, default=None,
                    help="CUHK-SYSU gallery list size; -1 = all-frames gallery (default: eval.ps_gallery_size)")
    ps.add_argument("--cross-camera-only", action="store_true", help="all-frames gallery: other cameras only")
    common(ps)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    cfg: Config = load_config(args.config, args.overrides)
    eval_cfg = cfg.eval
    if args.mode == "mot-files":
        metrics = score_mot_results(
            args.gt_root, args.results, args.benchmark, args.half,
            sequences=args.sequences, cfg=eval_cfg, use_ray=not args.no_ray,
        )
        dataset = args.dataset or default_dataset_name(args.benchmark, args.half)
        result_files = sorted(args.results / f"{name}.txt" for name in metrics["sequences"])
        print(format_table(metrics))
    else:
        if args.cross_camera_only:
            eval_cfg = replace(eval_cfg, ps_cross_camera_only=True)
        gallery_size = eval_cfg.ps_gallery_size if args.gallery_size is None else args.gallery_size
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
            checkpoint=args.checkpoint, result_files=result_files,
        )
        print(f"logged to MLflow run {run_id} ({uri})")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
