"""Evaluate tracking and person search; write ``metrics.json`` and optionally log to MLflow.

Modes (argparse subcommands), each in a module of its own (``jobs._mot_eval``, ``jobs._person_search_eval``,
``jobs._reid_eval``, ``jobs._market_eval``, ``jobs._detection_eval``; ``jobs._eval_results`` writes and logs
what the checkpoint modes return); this module is the command line:

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

* ``reid``: oracle-box re-identification (``kdtrack.metrics.reid_probe``): the identity
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
import sys
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError, run_cli  # noqa: F401  (InputError: part of this module's API)
from jobs._eval_results import CheckpointEvaluation, EvaluationFailed  # noqa: F401  (this module's API)
from jobs._inference_pool import TEACHER_EMBEDDERS, InferenceWorker  # noqa: F401  (InferenceWorker: API)
from jobs._mlflow_eval import log_evaluation_to_mlflow
from jobs._model_uri import resolve_checkpoints
from jobs._mot_eval import (  # noqa: F401  (re-exported: the MOT mode's API)
    mot_sequence_dirs, run_mot, run_mot_checkpoint, run_mot_checkpoints, run_mot_files, score_mot_results,
)
from jobs._person_search_eval import (  # noqa: F401  (re-exported: the person-search mode's API)
    person_search_checkpoints, person_search_inputs_from_checkpoint, run_person_search, score_person_search,
)
from jobs._reid_eval import add_reid_parser, reid_tables, run_reid  # noqa: F401  (reid_tables: API)
from kdtrack.config import Config, load_config

__all__ = [
    "EvaluationFailed", "InputError", "InferenceWorker", "cli", "log_evaluation_to_mlflow", "main",
    "person_search_checkpoints", "run_mot_checkpoints", "run_reid", "score_mot_results", "score_person_search",
]


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
        return run_reid(args, cfg, log_to_mlflow=log_evaluation_to_mlflow)  # this module's name: a test swaps it
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
        return run_mot_files(args, cfg)
    if args.mode == "mot":
        return run_mot(args, cfg)
    return run_person_search(args, cfg)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.evaluate``: exit 0; 2 with one line on a bad config key or input path;
    1 when some sequences / image batches failed (after writing the others)."""
    return run_cli(main, argv, "evaluate", partial_failure=(EvaluationFailed,))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
