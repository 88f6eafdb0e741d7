"""MOT evaluation (``jobs.evaluate mot-files`` and ``mot``): tracker files scored against gt, and
checkpoints tracked over MOT17-style sequences on the inference actor pool (``jobs._inference_pool``), each
sequence scored where it was tracked; this driver writes the result files and logs to MLflow."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError
from jobs._eval_results import CheckpointEvaluation, format_checkpoint_table, write_and_log
from jobs._inference_pool import (
    InferenceWorker, describe_workers, inference_worker_kwargs, load_checkpoints, numeric_paths, pool_options,
)
from jobs._ray import PoolReport, map_tasks, run_actor_pool
from kdtrack.config import Config, EvalConfig
from kdtrack.formats.common import FormatError
from kdtrack.progress import Progress

MOT_SUMMARY_COLUMNS = (("MOTA", "pct"), ("IDF1", "pct"), ("HOTA", "pct"), ("DetA", "pct"), ("AssA", "pct"),
                       ("Rcll", "pct"), ("Prcn", "pct"), ("FP", "int"), ("FN", "int"), ("IDs", "int"))


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
            ev.metrics["numeric_paths"] = numeric_paths({r["name"]: r["numeric_path"] for r in ev.runs})
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


def run_mot_files(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """``mot-files`` mode: score tracker files against gt, print the table, write and log."""
    from kdtrack.metrics.mot import format_table

    metrics = score_mot_results(
        args.gt_root, args.results, args.benchmark, args.half,
        sequences=args.sequences, cfg=cfg.eval, use_ray=not args.no_ray,
    )
    print(format_table(metrics))
    result_files = sorted(args.results / f"{name}.txt" for name in metrics["sequences"])
    entry = CheckpointEvaluation(None, metrics, result_files=result_files)
    return write_and_log(args, cfg, args.dataset or default_dataset_name(args.benchmark, args.half), [entry],
                         checkpoint_tag=str(args.checkpoint or ""))


def run_mot(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """``mot`` mode: track and score every checkpoint, print, write and log."""
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
    return write_and_log(args, cfg, dataset, evaluations, checkpoint_tag=" ".join(map(str, args.checkpoint)),
                         what="sequences")

