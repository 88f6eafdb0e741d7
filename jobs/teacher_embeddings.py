"""KD teacher embeddings offline, as a Ray Data batch-inference job (METHOD.md section 3).

    python -m jobs.teacher_embeddings --teacher T/checkpoint.pt --data-root W --sources crowdhuman,mot17 --out E
    python -m jobs.train --config kd_cpu --data-root W --out K --set teacher.embeddings=E

Every ground-truth box of the training sources gets the frozen teacher's feature of its crop, cut from
the un-augmented image letterboxed to the network input: the crop the online KD path cuts, so a KD run
from ``E`` gets the same targets without running the teacher on the training GPUs
(``kdtrack.data.teacher_store``). Decoding runs in Ray Data CPU tasks, the teacher in an actor pool (built
once per actor from weights in the object store; a GPU per actor with ``--gpus-per-actor``, by default
when the cluster has a free GPU for each actor, else CPU actors; an actor runs on CUDA only when Ray
granted it a GPU).

Output: ``E/parts/part-NNNNN.parquet`` (source, image_id, box_row, x1, y1, x2, y2, embedding), each
written atomically as results arrive, so a rerun over the same ``--out`` skips the images already
stored (resume); a store of another teacher or canvas is refused. ``E/summary.json`` counts images,
boxes and the images that could not be read (skipped, named; exit code 1 when there are any).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError, run_cli
from kdtrack.config import Config, apply_overrides, load_config
from kdtrack.io import atomic_save, atomic_write_json
from kdtrack.recipes import recipe_of

SUMMARY_FILE = "summary.json"


class SomeImagesFailed(RuntimeError):
    """Some images could not be read: the others are stored, these are named in the summary."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.teacher_embeddings", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, type=Path, help="a trained teacher (train.recipe=teacher) checkpoint")
    p.add_argument("--data-root", required=True, type=Path, help="root of the training datasets (data.root)")
    p.add_argument("--sources", default=None, help="comma-separated data.sources (default: the config's)")
    p.add_argument("--out", required=True, type=Path, help="output folder (rerun over it to resume)")
    p.add_argument("--config", default=None,
                   help="the KD run's preset or YAML: its model input is the canvas, its teacher crop the crop size "
                        "(default: the teacher checkpoint's config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    p.add_argument("--actors", type=int, default=1, help="teacher actors (one model each)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=-1.0,
                   help="GPUs per teacher actor; -1 (default): 1 when every actor finds a free GPU as the "
                        "pool starts, else CPU actors (said so)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per Ray Data decode task")
    p.add_argument("--batch-images", type=int, default=16, help="images per decode task and per teacher call")
    p.add_argument("--crop-batch", type=int, default=256, help="crops per teacher forward")
    p.add_argument("--part-images", type=int, default=2000, help="images per parquet part")
    p.add_argument("--max-images", type=int, default=0, help=">0: only the first N images (debugging)")
    p.add_argument("--mlflow-uri", default=None, help="absolute tracking URI; logging is off without one")
    p.add_argument("--no-ray", action="store_true", help="decode and embed in this process")
    return p


def job_config(args: argparse.Namespace, state: dict[str, Any]) -> Config:
    """The config whose canvas and crop the store is cut with (and whose data the records are)."""
    overrides = list(args.overrides) + [f"data.root={args.data_root.resolve()}"]
    if args.sources:
        overrides.append(f"data.sources=[{args.sources}]")
    return load_config(args.config, overrides) if args.config else apply_overrides(state["config"], overrides)


def _teacher_state(path: Path) -> dict[str, Any]:
    from jobs._inference_pool import read_checkpoint

    state = read_checkpoint(path)
    recipe = state["config"].train.recipe
    if recipe_of(state["config"]).student:
        raise InputError(f"--teacher {path}: a checkpoint of train.recipe={recipe!r}, not a Re-ID teacher "
                         f"(train one with python -m jobs.train --config teacher_cpu)")
    return state


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from kdtrack.data.dataset import load_records
    from kdtrack.data.teacher_store import PARTS_DIR, image_key, rows_table, stored_images, store_meta

    args = get_args_parser().parse_args(argv)
    if args.batch_images < 1 or args.part_images < 1 or args.actors < 1 or args.crop_batch < 1:
        raise InputError("--batch-images, --part-images, --crop-batch and --actors must be >= 1")
    teacher_path = args.teacher.resolve()
    state = _teacher_state(teacher_path)
    cfg = job_config(args, state)
    meta = store_meta(cfg, str(teacher_path), int(state.get("iteration", 0)), state["config"].teacher.feature_dim)
    out = args.out.resolve()
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)

    records = load_records(cfg)
    records = records[:args.max_images] if args.max_images > 0 else records
    keys = [image_key(r) for r in records]
    twice = next((k for k, n in Counter(keys).items() if n > 1), None)
    if twice is not None:
        raise InputError(f"image {twice[1]} ({twice[0]}) is listed twice in the sources: the store's key "
                         f"(source, image id, box row) would be ambiguous")
    try:
        done, found_meta = stored_images(out)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if found_meta is not None and found_meta != meta:
        diff = ", ".join(f"{k}: {found_meta.get(k)!r} stored vs {meta[k]!r} now" for k in meta
                         if found_meta.get(k) != meta[k])
        raise InputError(f"{out}: holds embeddings of another teacher or canvas ({diff}); use a new --out")
    todo = [r for r, k in zip(records, keys) if k not in done and r.num_boxes]  # no box: nothing to store
    before = sum(k in done for k in keys)
    print(f"{len(records)} images of {', '.join(cfg.data.sources)} under {cfg.data.root}: {before} stored before "
          f"(resumed), {len(records) - before - len(todo)} without boxes, {len(todo)} to embed; canvas "
          f"{cfg.model.input_width}x{cfg.model.input_height}, "
          f"crops {cfg.teacher.crop_height}x{cfg.teacher.crop_width}, "
          f"teacher {teacher_path} "
          f"(iteration {meta['teacher_iteration']})", flush=True)

    numbers = [int(p.stem.split("-")[-1]) for p in (out / PARTS_DIR).glob("part-*.parquet") if p.stem[5:].isdigit()]
    next_part = max(numbers, default=-1) + 1  # after the last one: a deleted part never gets overwritten
    pending: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    boxes = 0
    start = time.time()

    def flush() -> None:
        nonlocal next_part, pending
        if pending:
            import pyarrow.parquet as pq

            table = rows_table(pending, meta)
            atomic_save(out / PARTS_DIR / f"part-{next_part:05d}.parquet", lambda h: pq.write_table(table, h))
            next_part, pending = next_part + 1, []

    for result in _results(todo, cfg, state, args):
        if "error" in result:
            bad.append({"source": result["source"], "image_id": result["image_id"], "error": result["error"]})
            print(f"skipped {result['image_id']}: {result['error']}", flush=True)
            continue
        pending.append(result)
        boxes += len(result["embeddings"])
        if len(pending) >= args.part_images:
            flush()
    flush()
    seconds = time.time() - start
    embedded = len(todo) - len(bad)
    summary = {"teacher": str(teacher_path), "store": str(out), **meta, "sources": list(cfg.data.sources),
               "images": len(records), "images_before": before, "images_embedded": embedded,
               "boxes_embedded": boxes, "images_bad": len(bad), "bad_examples": bad[:20],
               "seconds": round(seconds, 2), "images_per_second": round(embedded / seconds, 2) if seconds > 0 else 0.0}
    atomic_write_json(out / SUMMARY_FILE, summary)
    print(f"teacher embeddings: {embedded} images ({boxes} boxes) embedded in {seconds:.1f} s, "
          f"{summary['images_before']} stored before, {len(bad)} unreadable -> {out}", flush=True)
    uri = args.mlflow_uri or cfg.mlflow.tracking_uri
    if uri:
        from jobs._mlflow_eval import log_evaluation_to_mlflow

        summary["mlflow_run_id"] = log_evaluation_to_mlflow(
            {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            dataset="teacher_embeddings", tracking_uri=uri, experiment=cfg.mlflow.experiment,
            checkpoint=str(teacher_path), run_name="teacher_embeddings", params={"sources": ",".join(cfg.data.sources)},
            result_files=[out / SUMMARY_FILE])
    if bad:
        raise SomeImagesFailed(f"{len(bad)} images could not be read (e.g. {bad[0]['image_id']}: {bad[0]['error']}); "
                               f"the others are stored; see {out / SUMMARY_FILE}")
    return summary


def _results(todo: Sequence[Any], cfg: Config, state: dict[str, Any], args: argparse.Namespace):
    """Per-image results of the Ray Data pipeline (or, ``--no-ray``, of the same functions in-process)."""
    from data_pipelines import teacher_embeddings as pipeline

    if not todo:
        return
    if args.no_ray:
        import torch

        from kdtrack.config import config_to_dict

        # in this process: the GPU when there is one, unless --gpus-per-actor 0 asks for the CPU
        device = torch.device("cuda" if args.gpus_per_actor != 0 and torch.cuda.is_available() else "cpu")
        teacher = pipeline.frozen_teacher(state["config"].teacher, pipeline.teacher_weights(state), device)
        config = config_to_dict(cfg)
        for start in range(0, len(todo), args.batch_images):
            batch = pipeline._pickled([r.to_dict() for r in todo[start:start + args.batch_images]])
            items = list(pipeline._unpickled(pipeline.decode_canvases(batch, config)))
            yield from pipeline.embed_items(teacher, items, cfg, device, args.crop_batch)
        return
    from jobs._ray import ensure_ray

    ray = ensure_ray()
    try:
        gpus, note = pipeline.pool_gpus(args.gpus_per_actor, args.actors, ray.cluster_resources(),
                                        ray.available_resources())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if note:
        print(note, flush=True)
    dataset = pipeline.embedding_dataset(
        todo, cfg, state, actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=gpus,
        decode_cpus=args.decode_cpus, batch_images=args.batch_images, crop_batch=args.crop_batch)
    yield from pipeline.iter_results(dataset)


def cli(argv: Sequence[str] | None = None) -> int:
    """Exit 0; 2 with one line on a bad config key or path; 1 when some images could not be read."""
    return run_cli(main, argv, "teacher_embeddings", partial_failure=(SomeImagesFailed,))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
