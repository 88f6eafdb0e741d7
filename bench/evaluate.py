"""Benchmark batch evaluation (``jobs.evaluate``): MOT frames/s serial vs Ray actors, person-search queries/s
before vs after batching, in one run on one machine.

* MOT — ``python -m jobs.evaluate mot`` over the MOT17-style sequences of the ``small`` world (7 x 150
  frames, 480x288; the val halves by default), the tiny student, each run a fresh process as a user
  runs it: serial (``--no-ray``: one process) vs a pool of ``--actors`` Ray actors (1 CPU and 1 torch
  thread each) on the cluster this script started (``RAY_ADDRESS``). The serial run is timed with
  torch on every core and on one thread (``OMP_NUM_THREADS=1``), and the speed-up is taken against
  the faster of the two (on a busy machine OpenMP threads that wait for each other can make the
  multi-thread run several times slower). frames/s = frames tracked and scored / wall seconds of
  the command (imports, actor start and weight shipping included). ``--checkpoints 1 4`` (default)
  repeats the comparison with 1 and with 4 different checkpoints in one command (a training run's
  folder, as users evaluate one): the per-process start-up (Python, torch, the network, one
  warm-up sequence per actor) is paid once either way, so more work per command shows how much
  of the gap is that fixed cost.
* Person search — producing the inputs (gallery detections + one embedding per query) from a checkpoint
  and the small world's manifest (300 test images, 100 queries). *Before*: the code this replaced,
  reproduced here: gallery images in chunks of 64 as Ray tasks of 1 CPU that each build the network from
  the checkpoint, then one full-image forward per query on the driver (torch threads as the faster
  serial MOT run). *After*:
  ``person_search_inputs_from_checkpoint`` on a pool of ``--actors`` actors (one network build each,
  ``eval.ps_batch_images`` images per forward, query boxes read from the gallery pass). queries/s =
  queries / wall seconds; the two must give the same embeddings (checked).

    .venv/bin/python bench/evaluate.py                  # generates runs/bench-world-small once (minutes)
    .venv/bin/python bench/evaluate.py --smoke-test     # the tiny world, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def make_world(preset: str, out: Path) -> Path:
    """The MOT17 and person-search parts of a synthetic world (the rest is not needed here), once."""
    from bench._world import world_parts

    return world_parts(preset, out, ("mot17", "person_search"), ("person_search/manifest.json", "MOT17/train"))


def make_checkpoint(out: Path, seed: int = 0, iteration: int = 1) -> Path:
    """A tiny student (random weights; size-head bias so that peaks become boxes and the tracker works)."""
    import torch

    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.config import load_config
    from kdtrack.models import build_student

    cfg = load_config("tiny", ["decode.top_k=100"])
    torch.manual_seed(seed)
    model = build_student(cfg.model)
    model.heads["heatmap"][-1].bias.data.fill_(0.0)  # random peaks pass the score threshold: the tracker works
    model.heads["size"][-1].bias.data.fill_(12.0)  # and they become 24x24 boxes the tracker keeps
    return save_checkpoint(out, model=model, config=cfg, iteration=iteration)


def make_run_folder(out: Path, count: int) -> Path:
    """``count`` different tiny students laid out as a training run's checkpoint folder (one per iteration),
    the form ``evaluate --checkpoint RUN`` takes; one checkpoint is its plain file."""
    if count == 1:
        return make_checkpoint(out / "single")
    run = out / f"run_{count}"
    for k in range(count):
        make_checkpoint(run / f"checkpoint_{k:03d}", seed=k, iteration=100 * (k + 1))
    return run


BENCH_CONFIG = ["decode.top_k=100", "eval.render_frames=0", "eval.cpus_per_actor=1.0"]


def _per_checkpoint(record: dict) -> list[dict]:
    """The metrics of each checkpoint in an ``evaluate mot --out`` file (one or several)."""
    return [entry["metrics"] for entry in record["checkpoints"]] if "checkpoints" in record else [record]


def bench_mot(world: Path, ckpt: Path, actors: int, half: str, address: str) -> dict:
    import torch

    root = world / "MOT17" / "train"
    sets = [f"--set={item}" for item in (*BENCH_CONFIG, f"eval.num_actors={actors}")]
    rows = {}
    cores = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for name, use_ray, threads in ((f"serial_{cores}t", False, cores), ("serial_1t", False, 1),
                                       ("ray", True, cores)):
            out = Path(tmp) / name / "metrics.json"
            cmd = [sys.executable, "-m", "jobs.evaluate", "mot", "--checkpoint", str(ckpt), "--data-root", str(root),
                   "--half", half, "--out", str(out), "--no-progress", *sets] + ([] if use_ray else ["--no-ray"])
            env = {**os.environ, "RAY_ADDRESS": address, "OMP_NUM_THREADS": str(threads)}
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{name}: {proc.stderr[-2000:]}")
            metrics = _per_checkpoint(json.loads(out.read_text()))
            combined = [m["combined"] for m in metrics]
            frames = sum(c["num_frames"] for c in combined)
            rows[name] = {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds,
                          "checkpoints": len(combined), "sequences": len(metrics[0]["sequences"]),
                          "threads": threads, "MOTA": [c["MOTA"] for c in combined],
                          "predictions_per_frame": sum(c["num_predictions"] for c in combined) / frames}
    serial = max((rows[f"serial_{cores}t"], rows["serial_1t"]), key=lambda r: r["frames_per_s"])
    # the actors run one torch thread each: the same arithmetic as the one-thread serial run, the same tracks
    # (other thread counts sum in another order, and a near-tie at the score threshold may flip a box)
    assert all(abs(a - b) < 1e-6 for a, b in zip(rows["serial_1t"]["MOTA"], rows["ray"]["MOTA"], strict=True)), \
        "serial and Ray tracks differ"
    rows["serial"] = serial
    rows["speedup"] = rows["ray"]["frames_per_s"] / serial["frames_per_s"]
    return rows


def _old_detect_chunk(checkpoint: str, paths: list[str], config: dict) -> list[tuple]:
    """The replaced Ray task body: build the network from the checkpoint, then detect a chunk of images."""
    from kdtrack.inference import detect_images

    detector = _old_build_detector(checkpoint, config)
    return [(d.boxes_xyxy, d.scores, d.embeddings) for d in detect_images(detector, paths)]


def _old_build_detector(checkpoint: str, config: dict):
    from dataclasses import replace

    import torch

    from kdtrack.config import config_from_dict
    from kdtrack.inference import Detector, load_student

    cli = config_from_dict(config)
    model, ckpt_cfg = load_student(checkpoint, "cpu")
    cfg = replace(ckpt_cfg, decode=cli.decode, tracker=cli.tracker, eval=cli.eval, teacher=cli.teacher)
    return Detector(model, cfg, torch.device("cpu"))


def person_search_before(ckpt: Path, manifest_path: Path, cfg) -> tuple[list, dict]:
    """The person-search inputs as the replaced code made them (student embedder)."""
    import numpy as np

    from jobs._ray import map_tasks
    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.config import config_to_dict
    from kdtrack.data.dataset import read_image_rgb
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.inference import student_embedding_at_boxes

    manifest = read_manifest(manifest_path)
    test_images = [im for im in manifest.images if im.split == "test"]
    paths = [str(manifest.image_path(im.file_name)) for im in test_images]
    config = config_to_dict(cfg)
    chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    per_chunk = map_tasks(_old_detect_chunk, [(str(ckpt), c, config) for c in chunks], num_cpus=1.0)
    gallery = dict(zip((im.file_name for im in test_images), (r for chunk in per_chunk for r in chunk)))
    detector = _old_build_detector(str(ckpt), config)
    query_embeddings = []
    for q in manifest.queries:
        image = read_image_rgb(manifest.image_path(q.file_name))
        box = xywh_to_xyxy(np.asarray(q.box_xywh, np.float32))
        query_embeddings.append(student_embedding_at_boxes(detector, image, box)[0])
    return query_embeddings, gallery


def bench_person_search(world: Path, ckpt: Path, actors: int, driver_threads: int) -> dict:
    import numpy as np
    import torch

    from jobs.evaluate import person_search_inputs_from_checkpoint
    from kdtrack.config import load_config

    manifest = world / "person_search" / "manifest.json"
    cfg = load_config("tiny", [*BENCH_CONFIG, f"eval.num_actors={actors}"])
    cores = torch.get_num_threads()
    torch.set_num_threads(driver_threads)
    start = time.perf_counter()
    before_q, before_g = person_search_before(ckpt, manifest, cfg)
    before_s = time.perf_counter() - start
    torch.set_num_threads(cores)
    stats: dict = {}
    start = time.perf_counter()
    queries, gallery = person_search_inputs_from_checkpoint(ckpt, manifest, cfg, use_ray=True, stats=stats)
    after_s = time.perf_counter() - start
    np.testing.assert_allclose(np.stack([q.embedding for q in queries]), np.stack(before_q), atol=1e-4)
    for name, (boxes, scores, _) in before_g.items():  # a batched forward differs in the last bits: near-ties may swap
        assert len(gallery[name].scores) == len(scores)
        np.testing.assert_allclose(gallery[name].scores, scores, atol=2e-3)
    n = len(queries)
    return {"queries": n, "gallery_images": len(gallery),
            "before": {"seconds": before_s, "queries_per_s": n / before_s, "driver_threads": driver_threads},
            "after": {"seconds": after_s, "queries_per_s": n / after_s, **stats},
            "speedup": before_s / after_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=None, help="existing world root (default: generate one)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--half", default="val", choices=("val", "full"), help="MOT frames: val halves or all")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[1, 4],
                        help="MOT: evaluate this many checkpoints in one command (a training run's folder); "
                             "one comparison per number")
    parser.add_argument("--smoke-test", action="store_true", help="the tiny world instead of small")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    preset = "tiny" if args.smoke_test else "small"
    world = make_world(preset, args.world or REPO / "runs" / f"bench-world-{preset}")

    import ray

    context = ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {k: make_run_folder(Path(tmp), k) for k in {1, *args.checkpoints}}
        mot = {k: bench_mot(world, folders[k], args.actors, args.half, context.address_info["gcs_address"])
               for k in args.checkpoints}
        threads = next(iter(mot.values()))["serial"]["threads"]
        ps = bench_person_search(world, folders[1], args.actors, threads)
    ray.shutdown()
    for k, rows in mot.items():
        print(f"\nMOT ({k} checkpoint(s) x {rows['serial']['sequences']} sequences, {rows['serial']['frames']} frames, "
              f"'{preset}' world, {args.half} halves, tiny student, {rows['ray']['predictions_per_frame']:.0f} "
              f"tracker boxes/frame, {os.cpu_count()} CPUs):")
        for name, row in rows.items():
            if name.startswith("serial_"):
                print(f"  serial, one process, {row['threads']} thread(s) {row['frames_per_s']:7.1f} frames/s "
                      f"({row['seconds']:.1f} s)")
        print(f"  Ray, {args.actors} actors x 1 thread     {rows['ray']['frames_per_s']:7.1f} frames/s "
              f"({rows['ray']['seconds']:.1f} s)")
        print(f"  speed-up vs the faster serial run {rows['speedup']:5.2f}x")
    print(f"person search ({ps['queries']} queries, {ps['gallery_images']} gallery images):")
    print(f"  before (model per chunk, a forward per query)  {ps['before']['queries_per_s']:7.2f} queries/s "
          f"({ps['before']['seconds']:.1f} s; driver {ps['before']['driver_threads']} thread(s))")
    print(f"  after ({args.actors} actors, batched, shared pass)   {ps['after']['queries_per_s']:7.2f} queries/s "
          f"({ps['after']['seconds']:.1f} s; {ps['after']['model_builds']} network builds)")
    print(f"  speed-up                   {ps['speedup']:7.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"mot": {str(k): v for k, v in mot.items()}, "person_search": ps}, indent=2))


if __name__ == "__main__":
    main()
