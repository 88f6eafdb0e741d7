"""Frames per second of ``Tracker.update`` vs the plain per-track reference implementation.

Synthetic random-walk scenes (people persisting across frames, births/deaths,
misses, clutter, noisy embeddings) at 10, 50 and 200 detections per frame with
128-d and 2048-d embeddings. Both trackers see identical frames; the time of
``update`` alone is measured (best of ``--repeats`` runs for each).

    .venv/bin/python bench/tracker.py [--smoke-test] [--frames 300] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the reference tracker lives beside its tests

from _reference_tracker import ReferenceTracker, random_walk_scene  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from kdtrack.tracker import Tracker, TrackerConfig  # noqa: E402

DETECTIONS = (10, 50, 200)
EMBEDDING_DIMS = (128, 2048)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300, help="frames per scene")
    p.add_argument("--repeats", type=int, default=3, help="runs per tracker; the fastest counts")
    p.add_argument("--mode", default="both", choices=["both", "boxes", "embeddings"])
    p.add_argument("--smoke-test", action="store_true", help="20 frames, one repeat")
    p.add_argument("--profile", action="store_true", help="cProfile the fast tracker at 50 dets, 128-d")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for both trackers (0 = library default); per-frame matrices are "
                        "small, and extra threads mostly add synchronisation, badly so on a busy machine")
    return p


def frames_per_second(make_tracker, frames, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        tracker = make_tracker()
        start = time.perf_counter()
        for boxes, scores, emb in frames:
            tracker.update(boxes, scores, emb)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main(args: argparse.Namespace) -> list[dict]:
    if args.smoke_test:
        args.frames, args.repeats = 20, 1
    if args.blas_threads > 0:
        with threadpool_limits(limits=args.blas_threads):
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> list[dict]:
    cfg = TrackerConfig(mode=args.mode)
    rows = []
    print(f"mode={args.mode} frames={args.frames} repeats={args.repeats} blas_threads={args.blas_threads}")
    print(f"{'dets':>5} {'dim':>5} {'vectorised fps':>15} {'reference fps':>14} {'speed-up':>9}")
    for dim in EMBEDDING_DIMS:
        for n in DETECTIONS:
            frames = random_walk_scene(args.frames, n, dim, seed=n + dim)
            fast = frames_per_second(lambda: Tracker(cfg), frames, args.repeats)
            ref = frames_per_second(lambda: ReferenceTracker(cfg), frames, 1)
            rows.append({"detections": n, "dim": dim, "fast_fps": fast, "reference_fps": ref})
            print(f"{n:>5} {dim:>5} {fast:>15.0f} {ref:>14.1f} {fast / ref:>8.1f}x", flush=True)
    if args.profile:
        frames = random_walk_scene(args.frames, 50, 128, seed=0)
        tracker = Tracker(cfg)
        profiler = cProfile.Profile()
        profiler.enable()
        for boxes, scores, emb in frames:
            tracker.update(boxes, scores, emb)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
