"""Per-video DBSCAN at scale: the clustering stage of ``jobs.pseudo_label`` vs a single-process loop.

Synthetic videos (clusters of unit vectors plus outliers, the shape the stage-1 network gives) are
clustered three times in one run: a plain loop over videos in this process (scikit-learn DBSCAN per
video, the reference), then ``jobs.pseudo_label.cluster_videos`` on a local Ray cluster of
``--cpus`` CPUs with each ``pseudo.cluster_engine``: ``tasks`` (cost-balanced chunks of videos as
plain Ray tasks, the default) and ``ray_data`` (one Ray Data row per video); 1 CPU per task. Prints
boxes/s of each, the speed-ups, the parallel efficiencies (speed-up / CPUs), the same chunks in a plain
process pool whose processes built the videos themselves (the machine's own ceiling: no Ray, no data
moved) and the projected wall time of the paper's scale (1 M boxes in 45 k videos) on 16 cores from
the measured per-box cost, with the assumptions. Every run must give the loop's partitions (checked).
Each side is timed ``--repeats`` times after its warm-up: rates and efficiencies come from the median
run, and the Ray engines' first timed run (on a store and workers that have not yet held data of this
size) is printed beside it as ``*_first_run_*``. Where the cores went during the tasks engine's timed
runs is printed as ``tasks_cpu_seconds``: the CPU seconds of the Ray worker processes (the clustering),
of this driver and of every other process on the machine (Ray's daemons, the OS), beside the seconds
the cores were there (wall x CPUs) and the loop's CPU seconds for the same work.

    python bench/pseudo_label.py [--videos 400] [--boxes 600] [--dim 256] [--cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

# One BLAS thread, as each Ray task gets (OMP_NUM_THREADS = its CPUs): otherwise the "single-process" loop
# would already run its distance matrices on every core and the comparison would not be one core vs N.
# Set before numpy is imported: OpenBLAS reads them once, as it loads (until 2026-12-03 they came after
# `import numpy`, and the loop ran with a second BLAS thread busy beside it; bench/README.md).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtrack.config import load_config  # noqa: E402
from kdtrack.pseudo_labels import VideoDetections  # noqa: E402

PAPER_BOXES, PAPER_VIDEOS, PAPER_CORES = 1_000_000, 45_000, 16


def synthetic_videos(n_videos: int, boxes: int, dim: int, seed: int = 0) -> list[VideoDetections]:
    rng = np.random.default_rng(seed)
    out = []
    for v in range(n_videos):
        people = int(rng.integers(3, 9))
        centres = rng.normal(size=(people, dim))
        labels = rng.integers(0, people, boxes)
        emb = centres[labels] + 0.25 * rng.normal(size=(boxes, dim)) / np.sqrt(dim) * 4
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        out.append(VideoDetections(f"v{v:05d}", np.arange(boxes) % 60 + 1, np.zeros((boxes, 4), np.float32),
                                   np.ones(boxes, np.float32), emb, 60))
    return out


_WORKER_VIDEOS: list[VideoDetections] = []


def _make_worker_videos(n_videos: int, boxes: int, dim: int) -> None:
    _WORKER_VIDEOS[:] = synthetic_videos(n_videos, boxes, dim)


def _cluster_worker_chunk(chunk: list[int], eps: float, min_samples: int, metric: str) -> float:
    from kdtrack.pseudo_labels import dbscan_labels

    start = time.perf_counter()
    for i in chunk:
        dbscan_labels(_WORKER_VIDEOS[i].embeddings, eps=eps, min_samples=min_samples, metric=metric)
    return time.perf_counter() - start


def cpu_seconds_by_role() -> dict[tuple[int, float], tuple[str, float]]:
    """``{(pid, start time): (role, user + system CPU seconds)}`` of every process on the machine; role is
    ``driver`` (this process), ``ray_workers`` (a process named ``ray::...``: task workers) or ``other``."""
    import psutil

    from bench._procs import is_ray_worker

    me, out = os.getpid(), {}
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            cpu = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = "driver" if proc.info["pid"] == me else "ray_workers" if is_ray_worker(proc) else "other"
        out[(proc.info["pid"], proc.info["create_time"])] = (role, cpu.user + cpu.system)
    return out


def cpu_split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent by each role between two :func:`cpu_seconds_by_role` snapshots (a process that
    started in between counts from zero; one that ended in between is lost, so none should)."""
    split = {"ray_workers": 0.0, "driver": 0.0, "other": 0.0}
    for key, (role, cpu) in after.items():
        split[role] += cpu - before.get(key, (role, 0.0))[1]
    return {role: round(sec, 2) for role, sec in split.items()}


def timed_runs(fn, repeats: int) -> tuple[list[float], object]:
    """Seconds of each of ``repeats`` calls of ``fn()``, and the last call's result."""
    seconds, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def process_pool_seconds(args: argparse.Namespace, chunks: list[list[int]], cfg) -> list[float]:
    """The machine's own ceiling: the same chunks in ``--cpus`` plain processes that each built the
    videos themselves (nothing crosses a process boundary but indices), after a warm-up round; seconds of
    each of ``--repeats`` runs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    p = cfg.pseudo
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.cpus, mp_context=context, initializer=_make_worker_videos,
                             initargs=(args.videos, args.boxes, args.dim)) as pool:
        for f in [pool.submit(_cluster_worker_chunk, c[:1], p.eps, p.min_samples, p.metric) for c in chunks]:
            f.result()  # warm: every process has imported scikit-learn and run DBSCAN once

        def run() -> None:
            for f in [pool.submit(_cluster_worker_chunk, c, p.eps, p.min_samples, p.metric) for c in chunks]:
                f.result()

        return timed_runs(run, args.repeats)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--boxes", type=int, default=600, help="boxes per video")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (median reported)")
    args = ap.parse_args()
    import ray

    from jobs.pseudo_label import CLUSTER_CHUNKS_PER_SLOT, balanced_chunks, cluster_videos

    videos = synthetic_videos(args.videos, args.boxes, args.dim)
    total = args.videos * args.boxes
    cfg = load_config("tiny", ["pseudo.eps=0.3", "pseudo.min_samples=3", "pseudo.cluster_cpus=1"])

    # warm both sides alike: timed cold, the loop's first DBSCAN calls (imports, first allocations) made it look
    # slower (200 x 600: 55,779 boxes/s cold, 97,446 warm) and flattered every Ray speed-up (bench/README.md)
    cluster_videos(videos[: min(len(videos), 4 * args.cpus)], cfg, use_ray=False)
    loop_cpu_runs: list[float] = []

    def loop() -> dict:
        start = time.process_time()
        labels = cluster_videos(videos, cfg, use_ray=False)
        loop_cpu_runs.append(time.process_time() - start)
        return labels

    serial_runs, serial = timed_runs(loop, args.repeats)
    serial_s = statistics.median(serial_runs)
    loop_cpu = statistics.median(loop_cpu_runs)  # CPU seconds of one loop

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    seconds, each, same = {}, {}, {}
    for engine in ("tasks", "ray_data"):
        engine_cfg = replace(cfg, pseudo=replace(cfg.pseudo, cluster_engine=engine))
        cluster_videos(videos[: min(len(videos), 4 * args.cpus)], engine_cfg, use_ray=True)  # warm: workers, imports
        before = cpu_seconds_by_role()
        # the first full-size run also maps fresh object-store pages and grows the workers' heaps: a once-per-
        # invocation cost that made single timings swing (bench/README.md; each run's figure is printed)
        runs, distributed = timed_runs(lambda: cluster_videos(videos, engine_cfg, use_ray=True), args.repeats)
        seconds[engine], each[engine] = statistics.median(runs), runs
        if engine == "tasks":
            tasks_cpu = {**cpu_split(before, cpu_seconds_by_role()), "wall_x_cpus": round(sum(runs) * args.cpus, 2),
                         "loop_same_work": round(loop_cpu * len(runs), 2)}
        same[engine] = all(np.array_equal(serial[v.video], distributed[v.video]) for v in videos)
    # what the driver alone spends copying the tasks engine's arguments (every embedding, in the job's
    # chunks) into the object store: on 2 cores that copy takes CPU from the clustering tasks, so
    # serial / (serial + put) bounds the efficiency; on a cluster it is one core of many
    chunks = balanced_chunks([len(v) * max(len(v), 64) for v in videos], CLUSTER_CHUNKS_PER_SLOT * args.cpus)
    for _ in range(2):  # the first put of a session also maps the store's memory: time the second
        start = time.perf_counter()
        refs = [ray.put([videos[i].embeddings for i in chunk]) for chunk in chunks]
        put_s = time.perf_counter() - start
        del refs
    ray.shutdown()
    pool_s = statistics.median(process_pool_seconds(args, chunks, cfg))
    ray_s = seconds["tasks"]
    speedup = serial_s / ray_s
    per_box_core_s = serial_s / total
    projected = PAPER_BOXES * per_box_core_s / (PAPER_CORES * min(1.0, speedup / args.cpus))
    print(json.dumps({
        "videos": args.videos, "boxes_per_video": args.boxes, "dim": args.dim, "cpus": args.cpus,
        "repeats": args.repeats, "serial_seconds_each_run": [round(x, 3) for x in serial_runs],
        "serial_boxes_per_s": round(total / serial_s),
        **{f"{engine}_boxes_per_s": round(total / sec) for engine, sec in seconds.items()},
        **{f"{engine}_speedup": round(serial_s / sec, 2) for engine, sec in seconds.items()},
        **{f"{engine}_parallel_efficiency": round(serial_s / sec / args.cpus, 2) for engine, sec in seconds.items()},
        **{f"{engine}_first_run_parallel_efficiency": round(serial_s / runs[0] / args.cpus, 2)
           for engine, runs in each.items()},
        **{f"{engine}_parallel_efficiency_each_run": [round(serial_s / sec / args.cpus, 2) for sec in runs]
           for engine, runs in each.items()},
        "same_partitions": same,
        "tasks_cpu_seconds": tasks_cpu,
        "driver_object_store_put_s": round(put_s, 3),
        "tasks_efficiency_bound_with_put": round(serial_s / (serial_s + put_s), 2),
        "process_pool_boxes_per_s": round(total / pool_s),
        "process_pool_parallel_efficiency": round(serial_s / pool_s / args.cpus, 2),
        "projected_paper_scale_s_on_16_cores": round(projected, 1),
        "projection_assumes": (f"{PAPER_BOXES} boxes in {PAPER_VIDEOS} videos (~{PAPER_BOXES // PAPER_VIDEOS} per "
                               "video: DBSCAN cost grows with boxes^2 per video, so smaller videos cost less per "
                               "box than measured here), this machine's per-box cost per core, and the "
                               "parallel efficiency measured here with the tasks engine; inference time not included"),
    }, indent=1))


if __name__ == "__main__":
    main()
