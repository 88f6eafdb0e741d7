"""IDF stage 2 pseudo-labelling, as a Ray job (METHOD.md section 4).

    python -m jobs.pseudo_label --checkpoint CKPT --videos ROOT/kinetics --out L [--split train] [--oracle-truth]
                                [--set pseudo.eps=0.3 ...] [--mlflow-uri sqlite:////abs/mlflow.db]

1. **Inference** (the expensive part): an actor pool (``jobs._ray.run_actor_pool``, the one
   ``jobs.evaluate`` uses: the network built once per actor from weights shipped through the object
   store, a GPU per actor when one is free as it starts, retries, a lost actor replaced) runs the
   stage-1 student over every ``pseudo.frame_stride``-th frame of each clip, decoded by seeking with
   OpenCV. Each finished clip comes back to this driver, which writes ``L/parts/<video>.npz``
   atomically: a rerun over the same ``--out`` skips finished clips (resume).
2. **Clustering**: scikit-learn DBSCAN of each video's embeddings, in parallel Ray tasks over
   cost-balanced chunks of videos (``pseudo.cluster_cpus`` each; ``pseudo.cluster_engine=ray_data``:
   one Ray Data row per video). Cheap, so it is redone on every run: changing ``pseudo.eps``
   re-clusters without re-running the network.
3. Pseudo ids made unique across videos (sorted video order), then written atomically:
   ``L/labels.parquet`` (video, frame, x1, y1, x2, y2, score, pseudo_id; -1 = outlier),
   ``L/videos.parquet`` (per video: boxes, clusters, outliers, valid trajectories, kept, status)
   and ``L/summary.json``; with the hidden truth beside the clips (``kinetics_truth/``, the synthetic
   world's) also ARI / NMI / purity / trajectories recovered. Logged to MLflow with ``--mlflow-uri``.
   With ``--storage s3://bucket/prefix`` (or a folder every node sees) the three finished files are then
   copied there, ``labels.parquet`` last (``jobs.train --set data.pseudo_labels=s3://bucket/prefix/labels.parquet``
   reads them); the storage is checked before any work, the parts (resume) stay under ``--out``.

Bad clips (not found, undecodable, zero frames) and clips without a detection are counted and
skipped, never fatal; the job exits 1 only when no clip could be clustered.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jobs._ray import ensure_ray, map_tasks, run_actor_pool
from jobs._cli import InputError, run_cli
from jobs._model_uri import resolve_checkpoints
from jobs._storage import Storage, check_storage, resolve_storage, upload
from jobs._inference_pool import InferenceWorker, ModelHandle, checkpoint_entry, read_checkpoint
from kdtrack.config import Config, apply_overrides, config_to_dict, flatten_config, load_config
from kdtrack.formats.common import ReadStats
from kdtrack.formats.kinetics import read_kinetics
from kdtrack.io import atomic_save, atomic_write_json
from kdtrack.progress import Progress
from kdtrack.pseudo_labels import (
    VideoDetections,
    clustering_quality,
    dbscan_labels,
    global_pseudo_ids,
    match_to_truth,
    summarize_labels,
)

PARTS_DIR = "parts"
LABELS_FILE = "labels.parquet"
VIDEOS_FILE = "videos.parquet"
SUMMARY_FILE = "summary.json"
SPLIT_CSV = {"train": "train.csv", "val": "validate.csv", "validate": "validate.csv", "test": "test.csv"}
STATUS_OK, STATUS_NO_DETECTIONS = "ok", "no_detections"
# what a part was computed with: a resumed run must not mix parts of another network or frame sampling
INFERENCE_FIELDS = ("frame_stride", "max_frames", "score_threshold")
CLUSTER_BLOCKS_PER_TASK = 4  # cluster_engine=ray_data: blocks of videos per concurrent clustering task
CLUSTER_CHUNKS_PER_SLOT = 2  # cluster_engine=tasks: cost-balanced chunks of videos per concurrent task


class PseudoLabelFailed(RuntimeError):
    """No clip could be clustered (every one was bad); the summary was written."""


# --------------------------------------------------------------------------- inputs


def list_clips(videos_root: str | Path, split: str) -> tuple[list[tuple[str, str]], "ReadStats"]:
    """``([(video, path)], read stats)`` of one split's csv: ``video`` is the clip's path relative to the
    Kinetics root without extension (``train/<label>/<id>_<start>_<end>``). Clips listed but absent
    (dead YouTube links in real Kinetics) and malformed rows are counted in the stats, not fatal."""
    root = Path(videos_root).resolve()
    csv_path = root / SPLIT_CSV.get(split, f"{split}.csv")
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no clip list for split '{split}' under --videos {root}")
    clips, stats = read_kinetics(csv_path, root, on_error="skip")
    return [(str(Path(c.path).relative_to(root).with_suffix("")), c.path) for c in clips], stats


def part_path(out: Path, video: str) -> Path:
    return out / PARTS_DIR / f"{video}.npz"


def save_part(out: Path, det: VideoDetections, status: str, inference_key: str) -> Path:
    return atomic_save(part_path(out, det.video), lambda handle: np.savez(
        handle, frames=det.frames, boxes_xyxy=det.boxes_xyxy, scores=det.scores, embeddings=det.embeddings,
        num_frames=np.int64(det.num_frames), status=np.str_(status), inference_key=np.str_(inference_key)))


def load_part(path: Path, video: str) -> tuple[VideoDetections, str, str]:
    """``(detections, status, inference key)`` of a finished clip."""
    with np.load(path, allow_pickle=False) as z:
        det = VideoDetections(video, z["frames"], z["boxes_xyxy"], z["scores"], z["embeddings"], int(z["num_frames"]))
        return det, str(z["status"]), str(z["inference_key"])


def inference_key(checkpoint: str, iteration: int, cfg: Config) -> str:
    settings = {name: getattr(cfg.pseudo, name) for name in INFERENCE_FIELDS}
    return json.dumps({"checkpoint": str(Path(checkpoint).resolve()), "iteration": int(iteration), **settings},
                      sort_keys=True)


# --------------------------------------------------------------------------- inference (actor pool)


class ClipWorker(InferenceWorker):
    """An inference actor that runs the stage-1 network over clips (the evaluation worker's network
    cache and device rule)."""

    def embed_clip(self, model: ModelHandle, path: str, video: str) -> dict[str, Any]:
        from jobs._ray import transient_errors, worker_location
        from kdtrack.formats.video import VideoError
        from kdtrack.pseudo_labels import detect_clip

        start = time.monotonic()
        try:
            with transient_errors():
                detector, _ = self._network(model)
                det = detect_clip(detector, path, video, stride=self.cfg.pseudo.frame_stride,
                                  max_frames=self.cfg.pseudo.max_frames, batch_frames=self.cfg.pseudo.batch_frames)
        except VideoError as exc:  # a bad clip is data, not a failure of the job
            return {"video": video, "status": "undecodable", "error": str(exc), **worker_location()}
        return {"video": video, "status": STATUS_OK if len(det) else STATUS_NO_DETECTIONS, "error": "",
                "frames": det.frames, "boxes_xyxy": det.boxes_xyxy, "scores": det.scores,
                "embeddings": det.embeddings, "num_frames": det.num_frames, "seconds": time.monotonic() - start,
                "device": str(self.device), **worker_location()}


def run_inference(clips: Sequence[tuple[str, str]], out: Path, handle: ModelHandle, key: str, cfg: Config, *,
                  use_ray: bool, progress: bool) -> list[dict[str, str]]:
    """Run the network of ``handle`` over ``clips`` and write one part per finished clip (tagged ``key``);
    returns the bad clips."""
    import torch

    from kdtrack.engine import select_device

    job_cfg = replace(cfg, decode=replace(cfg.decode, score_threshold=cfg.pseudo.score_threshold))
    bad: list[dict[str, str]] = []
    bar = Progress(len(clips), len(clips), unit="clip", items="clips", desc="pseudo-label inference",
                   enabled=progress)

    def on_done(outcome) -> None:
        video = clips[outcome.index][0]
        value = outcome.value or {}
        if outcome.error or value.get("status") == "undecodable":
            error = outcome.error or value.get("error", "")
            bad.append({"video": video, "status": "failed" if outcome.error else "undecodable", "error": error})
            bar.update(1, ok=False, line=f"{video}: skipped ({error})")
            return
        det = VideoDetections(video, value["frames"], value["boxes_xyxy"], value["scores"], value["embeddings"],
                              value["num_frames"])
        save_part(out, det, value["status"], key)
        bar.update(1, ok=True)

    calls = [("embed_clip", (handle, path, video)) for video, path in clips]
    pseudo = cfg.pseudo
    try:
        run_actor_pool(
            ClipWorker, {"config": config_to_dict(job_cfg), "device": None, "num_threads": max(1, int(pseudo.cpus_per_actor))},
            calls, use_ray=use_ray, num_actors=pseudo.num_actors, num_cpus=pseudo.cpus_per_actor,
            num_gpus=pseudo.gpus_per_actor, max_restarts=cfg.eval.actor_max_restarts,
            max_task_retries=cfg.eval.task_retries, start_timeout_s=cfg.eval.actor_start_timeout_s,
            local_kwargs={"device": str(select_device(pseudo.gpus_per_actor != 0 and torch.cuda.is_available())),
                          "num_threads": 0}, on_done=on_done)
    finally:
        bar.close()
    return bad


# --------------------------------------------------------------------------- clustering (Ray tasks or Ray Data)


def _cluster_row(row: dict[str, Any], *, eps: float, min_samples: int, metric: str) -> dict[str, Any]:
    embeddings = np.frombuffer(row["embeddings"], np.float32).reshape(int(row["n"]), int(row["k"]))
    labels = dbscan_labels(embeddings, eps=eps, min_samples=min_samples, metric=metric)
    return {"video": row["video"], "labels": labels.astype(np.int64).tobytes()}


def _cluster_chunk(embeddings: Sequence[np.ndarray], *, eps: float, min_samples: int, metric: str) -> np.ndarray:
    """The labels of every video of a chunk, concatenated: one array back to the driver instead of one per
    video, whose deserialisation there cost parallel efficiency at paper scale (45,000 videos of 22 boxes:
    0.82 -> 0.85 on 2 cores; bench/pseudo_label.py, bench/README.md)."""
    labels = [dbscan_labels(e, eps=eps, min_samples=min_samples, metric=metric) for e in embeddings]
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def balanced_chunks(costs: Sequence[float], num_chunks: int) -> list[list[int]]:
    """Indices of ``costs`` split into at most ``num_chunks`` non-empty chunks of near-equal total cost
    (longest first, each to the lightest chunk), heaviest chunk first."""
    num_chunks = max(1, min(int(num_chunks), len(costs)))
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        lightest = min(range(num_chunks), key=totals.__getitem__)
        chunks[lightest].append(i)
        totals[lightest] += float(costs[i])
    order = sorted(range(num_chunks), key=lambda c: -totals[c])
    return [chunks[c] for c in order if chunks[c]]


def cluster_videos(videos: Sequence[VideoDetections], cfg: Config, *, use_ray: bool = True) -> dict[str, np.ndarray]:
    """``{video: (N,) local DBSCAN labels}``, clustered in parallel (``pseudo.cluster_cpus`` per task) by
    ``pseudo.cluster_engine``; in-process without ``use_ray``. Same partitions every way."""
    p = cfg.pseudo
    kwargs = {"eps": p.eps, "min_samples": p.min_samples, "metric": p.metric}
    if not use_ray or not videos:
        return {v.video: dbscan_labels(v.embeddings, **kwargs) for v in videos}
    ray = ensure_ray()
    slots = max(1.0, ray.cluster_resources().get("CPU", 1.0) / max(p.cluster_cpus, 1e-3))
    if p.cluster_engine == "tasks":
        # DBSCAN's brute-force neighbour search costs ~N^2 per video: a few cost-balanced chunks per slot
        # keep every core busy to the end while the per-task overhead stays far below the clustering
        # (bench/pseudo_label.py measures this beside Ray Data and a loop)
        chunks = balanced_chunks([len(v) * max(len(v), 64) for v in videos], int(CLUSTER_CHUNKS_PER_SLOT * slots))
        results = map_tasks(functools.partial(_cluster_chunk, **kwargs),
                            [([videos[i].embeddings for i in chunk],) for chunk in chunks],
                            num_cpus=p.cluster_cpus)
        labels: dict[str, np.ndarray] = {}
        for chunk, out in zip(chunks, results):
            ends = np.cumsum([len(videos[i]) for i in chunk])
            if len(out) != ends[-1]:  # chunks are never empty
                raise RuntimeError(f"a clustering task returned {len(out)} labels for {ends[-1]} boxes")
            out = np.array(out, np.int64)  # writable: the object store hands back read-only memory
            labels.update({videos[i].video: part for i, part in zip(chunk, np.split(out, ends[:-1]))})
        return labels
    import ray.data

    # embeddings travel as raw bytes: an Arrow binary column costs nothing to build, where nested
    # float lists / tensor columns made the driver-side conversion slower than the clustering itself
    rows = [{"video": v.video, "n": len(v), "k": int(v.embeddings.shape[1]),
             "embeddings": np.ascontiguousarray(v.embeddings, np.float32).tobytes()} for v in videos]
    # a few blocks per concurrent task: one block per video made Ray Data's per-task overhead cost more
    # than the clustering (bench/pseudo_label.py: 200 blocks 0.6x a single core, 8 blocks 1.9x on 2 CPUs)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), int(CLUSTER_BLOCKS_PER_TASK * slots))))
    labelled = ds.map(_cluster_row, fn_kwargs=kwargs, num_cpus=p.cluster_cpus)
    return {row["video"]: np.frombuffer(row["labels"], np.int64).copy() for row in labelled.iter_rows()}


# --------------------------------------------------------------------------- oracle labels


def truth_videos(clips: Sequence[tuple[str, str]], truth_root: Path,
                 min_visibility: float) -> tuple[list[VideoDetections], dict[str, np.ndarray]]:
    """``--oracle-truth``: the hidden truth as if it were the clustering (pedestrian boxes at least this
    visible, one label per true track): stage 2's upper bound, and its pipeline tested without a network."""
    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.formats.mot import read_gt
    from kdtrack.formats.video import read_video_info

    videos, local = [], {}
    for video, path in clips:
        truth_path = truth_root / f"{video}.txt"
        if not truth_path.is_file():
            raise InputError(f"--oracle-truth: no truth file {truth_path} for clip {path}")
        rows = read_gt(truth_path)
        rows = rows[(rows[:, 7] == 1) & (rows[:, 8] >= min_visibility)]
        _, labels = np.unique(rows[:, 1].astype(np.int64), return_inverse=True)
        videos.append(VideoDetections(video, rows[:, 0].astype(np.int64), xywh_to_xyxy(rows[:, 2:6]),
                                      np.ones(len(rows), np.float32), np.zeros((len(rows), 0), np.float32),
                                      read_video_info(path)[0]))
        local[video] = labels.astype(np.int64).reshape(-1)
    return videos, local


# --------------------------------------------------------------------------- outputs


def truth_root_for(videos_root: Path) -> Path:
    """The synthetic world writes hidden identities beside the dataset: ``<root>/../kinetics_truth``."""
    return videos_root.resolve().parent / "kinetics_truth"


def measure_quality(videos: Sequence[VideoDetections], ids: dict[str, np.ndarray], truth_root: Path,
                    iou: float) -> dict[str, Any] | None:
    """ARI / NMI / purity / trajectories recovered over boxes matched to a true person (None without truth)."""
    from kdtrack.formats.mot import read_gt

    if not truth_root.is_dir():
        return None
    true_all, pseudo_all, truth_boxes, matched_boxes, per_video_ari = [], [], 0, 0, []
    for det in videos:
        path = truth_root / f"{det.video}.txt"
        if not path.is_file():
            continue
        truth = read_gt(path)
        truth_boxes += len(truth)
        matched = match_to_truth(det.frames, det.boxes_xyxy, truth, iou)
        ok = matched >= 0
        matched_boxes += int(ok.sum())
        true_ids = [f"{det.video}/{t}" for t in matched[ok]]
        true_all.extend(true_ids)
        pseudo_all.extend(ids[det.video][ok].tolist())
        if ok.sum() > 1:
            per_video_ari.append(clustering_quality(true_ids, ids[det.video][ok])["ari"])
    quality = clustering_quality(true_all, pseudo_all)
    quality["mean_video_ari"] = float(np.mean(per_video_ari)) if per_video_ari else float("nan")
    quality["detections_matched"] = matched_boxes
    quality["truth_boxes"] = truth_boxes
    return quality


def write_outputs(out: Path, videos: Sequence[VideoDetections], local: dict[str, np.ndarray],
                  bad: Sequence[dict[str, str]], cfg: Config) -> tuple[dict[str, np.ndarray], list[dict]]:
    """``labels.parquet`` and ``videos.parquet``, atomically; returns the global ids and the video rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = global_pseudo_ids(local)
    order = sorted(videos, key=lambda v: v.video)
    columns: dict[str, list] = {name: [] for name in ("video", "frame", "x1", "y1", "x2", "y2", "score", "pseudo_id")}
    for det in order:
        columns["video"].extend([det.video] * len(det))
        columns["frame"].append(det.frames.astype(np.int32))
        for i, name in enumerate(("x1", "y1", "x2", "y2")):
            columns[name].append(det.boxes_xyxy[:, i].astype(np.float32))
        columns["score"].append(det.scores.astype(np.float32))
        columns["pseudo_id"].append(ids[det.video].astype(np.int64))
    table = pa.table({
        "video": pa.array(columns["video"], pa.string()),
        **{name: pa.array(np.concatenate(columns[name]) if columns[name] else np.zeros(0, dtype))
           for name, dtype in (("frame", np.int32), ("x1", np.float32), ("y1", np.float32), ("x2", np.float32),
                               ("y2", np.float32), ("score", np.float32), ("pseudo_id", np.int64))},
    })
    atomic_save(out / LABELS_FILE, lambda handle: pq.write_table(table, handle))
    video_rows = [{**row, "status": STATUS_OK if row["boxes"] else STATUS_NO_DETECTIONS, "error": ""}
                  for row in summarize_labels(order, local, cfg.pseudo.min_track_frames)]
    video_rows += [{"video": b["video"], "frames": 0, "boxes": 0, "clusters": 0, "outliers": 0,
                    "outlier_fraction": float("nan"), "valid_trajectories": 0, "kept": False,
                    "status": b["status"], "error": b["error"]} for b in bad]
    atomic_save(out / VIDEOS_FILE, lambda handle: pq.write_table(pa.Table.from_pylist(video_rows), handle))
    return ids, video_rows


# --------------------------------------------------------------------------- re-clustering cached embeddings


def cached_videos(labels_dir: str | Path) -> list[VideoDetections]:
    """Every clip a finished run embedded (``<labels_dir>/parts/**/*.npz``, sorted by video): what a new
    clustering needs, without the network. A folder without parts is a ConfigError naming it."""
    from kdtrack.config import ConfigError

    root = Path(labels_dir) / PARTS_DIR
    parts = sorted(root.rglob("*.npz"))  # a video's name is its clip path (train/<label>/<id>): nested parts
    if not parts:
        raise ConfigError(f"{root}: no cached embeddings (jobs.pseudo_label --out {labels_dir} writes them; "
                          f"--oracle-truth runs have none)")
    return [load_part(path, str(path.relative_to(root).with_suffix("")))[0] for path in parts]


def relabel(videos: Sequence[VideoDetections], cfg: Config, out: Path, *, use_ray: bool = True) -> dict[str, Any]:
    """The clips of ``videos`` clustered again with ``cfg.pseudo`` (eps, min_samples, metric, min_track_frames),
    written to ``out`` as a run of this job writes them (``labels.parquet``, ``videos.parquet``,
    ``summary.json``); the network is not run. Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    local = cluster_videos(videos, cfg, use_ray=use_ray)
    _, video_rows = write_outputs(out, videos, local, [], cfg)
    summary = {"videos": len(videos), **label_counts(videos, video_rows),
               "cluster_seconds": round(time.time() - start, 2), "pseudo": pseudo_settings(cfg)}
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def label_counts(videos: Sequence[VideoDetections], video_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a clustering gave, for a summary: clips clustered and kept, boxes, pseudo ids, the outlier share."""
    clustered = [r for r in video_rows if r["status"] == STATUS_OK]
    boxes = sum(len(v) for v in videos)
    return {"videos_clustered": len(clustered), "videos_kept": sum(r["kept"] for r in clustered), "boxes": boxes,
            "pseudo_ids": int(sum(r["clusters"] for r in clustered)),
            "outlier_fraction": float(sum(r["outliers"] for r in clustered) / boxes) if boxes else float("nan")}


def pseudo_settings(cfg: Config) -> dict[str, Any]:
    """``cfg.pseudo`` as ``{field: value}`` (the summary's record of how the clips were labelled)."""
    return {k.removeprefix("pseudo."): v for k, v in flatten_config(cfg).items() if k.startswith("pseudo.")}


def _log_mlflow(uri: str, cfg: Config, summary: dict[str, Any], out: Path, checkpoint: str) -> str:
    from jobs._mlflow_eval import log_evaluation_to_mlflow

    params = {k.removeprefix("pseudo."): v for k, v in flatten_config(cfg).items() if k.startswith("pseudo.")}
    return log_evaluation_to_mlflow(
        {k: v for k, v in summary.items() if not isinstance(v, (dict, list))} | (summary.get("quality") or {}),
        dataset="pseudo_labels", tracking_uri=uri, experiment=cfg.mlflow.experiment, checkpoint=checkpoint,
        run_name="pseudo_label", params=params, result_files=[out / VIDEOS_FILE])


# --------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.pseudo_label", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the stage-1 (id-free image) checkpoint: a path, or an MLflow URI (runs:/<run>/student, "
                        "models:/<name>/<version>) fetched from --mlflow-uri (required unless --oracle-truth)")
    p.add_argument("--videos", required=True, type=Path, help="Kinetics root: <split>.csv and <split>/<label>/*.mp4")
    p.add_argument("--out", required=True, type=Path, help="output folder (rerun over it to resume)")
    p.add_argument("--storage", default=None,
                   help="also copy the finished labels there: s3://bucket/prefix (AWS_* variables, as jobs.train's "
                        "--storage) or a folder; checked before any work")
    p.add_argument("--split", default="train", help="clip list: train (train.csv), val (validate.csv), test")
    p.add_argument("--truth", type=Path, default=None,
                   help="hidden identity truth, <video>.txt MOT rows (default: <videos>/../kinetics_truth if present)")
    p.add_argument("--config", default=None, help="preset or YAML for pseudo.* / eval.* (default: the checkpoint's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value, e.g. pseudo.eps=0.25")
    p.add_argument("--max-videos", type=int, default=0, help=">0: only the first N clips of the list (debugging)")
    p.add_argument("--mlflow-uri", default=None, help="absolute tracking URI; logging is off without one")
    p.add_argument("--oracle-truth", action="store_true",
                   help="no network: write the hidden truth (--truth) as the labels (stage 2's upper bound)")
    p.add_argument("--no-ray", action="store_true", help="run inference and clustering in this process")
    p.add_argument("--no-progress", action="store_true")
    return p


def checked_storage(args: argparse.Namespace) -> Storage | None:
    """``--storage`` resolved and checked (a bad URI, a missing bucket: a StorageError naming it, exit 2)."""
    if not args.storage:
        return None
    storage = resolve_storage(args.storage)
    check_storage(storage)
    return storage


def publish(storage: Storage | None, out: Path, summary: dict[str, Any]) -> None:
    """The finished files copied to ``--storage``, the labels last (whoever finds them finds the rest)."""
    if storage is not None:
        summary["storage"] = upload(storage, [out / VIDEOS_FILE, out / SUMMARY_FILE, out / LABELS_FILE])
        print(f"labels copied to {storage.uri}/{LABELS_FILE}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    storage = checked_storage(args)
    if args.oracle_truth:
        return _main_oracle(args, storage)
    if args.checkpoint is None:
        raise InputError("--checkpoint is required (the stage-1 network), unless --oracle-truth")
    args.checkpoint = Path(resolve_checkpoints(args.checkpoint, args.mlflow_uri))  # runs:/, models:/ URIs
    if not args.checkpoint.is_file():
        raise InputError(f"--checkpoint {args.checkpoint}: file not found")
    state = read_checkpoint(args.checkpoint)  # read once: config, iteration and the weights to ship
    cfg = load_config(args.config, args.overrides) if args.config else apply_overrides(state["config"], args.overrides)
    videos_root, out, clips, listing = _clip_list(args)
    info, _ = checkpoint_entry(args.checkpoint.resolve(), state, ship=False)
    key = inference_key(info.path, info.iteration, cfg)
    start = time.time()

    loaded: dict[str, tuple[VideoDetections, str]] = {}  # video -> (detections, status), each part read once
    todo = []
    for video, path in clips:
        part = part_path(out, video)
        if not part.is_file():
            todo.append((video, path))
            continue
        det, status, part_key = load_part(part, video)
        if part_key != key:
            raise InputError(f"{part}: computed with {part_key}, this run is {key}; use a new --out (or delete "
                             f"{out / PARTS_DIR}) to pseudo-label with another checkpoint or frame sampling")
        loaded[video] = (det, status)
    print(f"{len(clips)} clips of split '{args.split}' under {videos_root}: {len(loaded)} done before "
          f"(resumed), {len(todo)} to run; {listing.missing_images} listed but missing, "
          f"{listing.skipped_records} malformed rows", flush=True)
    bad: list[dict[str, str]] = []
    if todo:
        _, handle = checkpoint_entry(info.path, state, ship=not args.no_ray)
        bad = run_inference(todo, out, handle, key, cfg, use_ray=not args.no_ray, progress=not args.no_progress)
        for video, _ in todo:
            if part_path(out, video).is_file():
                det, status, _ = load_part(part_path(out, video), video)
                loaded[video] = (det, status)
    inference_seconds = time.time() - start

    videos = [loaded[video][0] for video, _ in clips if video in loaded]
    empty = sum(loaded[video][1] == STATUS_NO_DETECTIONS for video, _ in clips if video in loaded)
    start = time.time()
    local = cluster_videos(videos, cfg, use_ray=not args.no_ray)
    cluster_seconds = time.time() - start
    ids, video_rows = write_outputs(out, videos, local, bad, cfg)

    truth_root = args.truth.resolve() if args.truth else truth_root_for(videos_root)
    quality = measure_quality(videos, ids, truth_root, cfg.pseudo.truth_iou)
    counts = label_counts(videos, video_rows)
    boxes = counts["boxes"]
    summary: dict[str, Any] = {
        "checkpoint": info.path, "checkpoint_iteration": info.iteration, "split": args.split,
        "videos": len(clips), **counts,
        "videos_no_detections": empty, "videos_bad": len(bad), "videos_missing": listing.missing_images,
        "csv_rows_malformed": listing.skipped_records,
        "inference_seconds": round(inference_seconds, 2), "cluster_seconds": round(cluster_seconds, 2),
        "cluster_boxes_per_second": round(boxes / cluster_seconds, 1) if cluster_seconds > 0 else float("nan"),
        "pseudo": pseudo_settings(cfg), "bad_examples": bad[:20], "listing_problems": listing.messages,
        "quality": quality,
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    print(_summary_line(summary), flush=True)
    publish(storage, out, summary)
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    if uri:
        summary["mlflow_run_id"] = _log_mlflow(uri, cfg, summary, out, info.path)
    if not counts["videos_clustered"]:
        raise PseudoLabelFailed(f"no clip could be clustered ({len(bad)} bad, {empty} without detections); "
                                f"see {out / SUMMARY_FILE}")
    return summary


def _clip_list(args: argparse.Namespace) -> tuple[Path, Path, list[tuple[str, str]], ReadStats]:
    """``(videos root, out folder (created), clips, listing stats)`` of the command line."""
    videos_root, out = args.videos.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clips, listing = list_clips(videos_root, args.split)
    return videos_root, out, clips[:args.max_videos] if args.max_videos > 0 else clips, listing


def _main_oracle(args: argparse.Namespace, storage: Storage | None) -> dict[str, Any]:
    cfg = load_config(args.config, args.overrides)
    videos_root, out, clips, listing = _clip_list(args)
    truth_root = args.truth.resolve() if args.truth else truth_root_for(videos_root)
    videos, local = truth_videos(clips, truth_root, cfg.data.min_visibility)
    _, video_rows = write_outputs(out, videos, local, [], cfg)
    summary = {"oracle_truth": str(truth_root), "videos": len(clips), "videos_missing": listing.missing_images,
               "videos_kept": sum(r["kept"] for r in video_rows), "boxes": sum(len(v) for v in videos),
               "pseudo_ids": int(sum(r["clusters"] for r in video_rows))}
    atomic_write_json(out / SUMMARY_FILE, summary)
    print(f"oracle labels from {truth_root}: {summary['videos_kept']}/{len(clips)} clips kept, {summary['boxes']} "
          f"boxes, {summary['pseudo_ids']} identities", flush=True)
    publish(storage, out, summary)
    return summary


def _summary_line(s: dict[str, Any]) -> str:
    line = (f"pseudo-labels: {s['videos_clustered']}/{s['videos']} clips clustered ({s['videos_kept']} kept, "
            f"{s['videos_bad']} bad, {s['videos_no_detections']} without detections), {s['boxes']} boxes, "
            f"{s['pseudo_ids']} pseudo ids, outliers {s['outlier_fraction']:.1%}")
    q = s.get("quality")
    if q:
        line += (f"; vs hidden truth ({q['detections_matched']} of {s['boxes']} boxes matched): ARI {q['ari']:.3f}, "
                 f"NMI {q['nmi']:.3f}, purity {q['purity']:.3f}, trajectories recovered "
                 f"{q['trajectories_recovered']:.1%}")
    return line


def cli(argv: Sequence[str] | None = None) -> int:
    """Exit 0; 2 with one line on a bad config key or path; 1 when no clip could be clustered."""
    return run_cli(main, argv, "pseudo_label", partial_failure=(PseudoLabelFailed,))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
