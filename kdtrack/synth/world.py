"""The whole synthetic world: plan work units, run them through ``map_fn``, write the annotation files.

``generate_world(cfg, out_dir, map_fn=map)`` is serial by default; the job
passes a Ray-backed ``map_fn`` (``kdtrack`` itself never imports Ray). Units
are independent and pure, so any ``map_fn`` that preserves order gives
byte-identical files; only ``world.json`` records the (varying) wall time.

``world.json`` also records the identity populations' sizes (``counts``
``identities/*``, see ``datasets.identity_populations``) and each MOT
sequence's gt track id -> bank pid (``mot17_track_pids``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from kdtrack.config import SynthConfig
from kdtrack.formats import coco as coco_format
from kdtrack.formats import crowdhuman as ch_format
from kdtrack.formats import person_search as ps_format
from kdtrack.formats.kinetics import KineticsClip, write_kinetics_csv
from kdtrack.io import atomic_write_json
from kdtrack.synth import datasets

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]
Unit = tuple  # (kind, *args): ("crowdhuman", split, shard), ("mot17", index), ...
KINETICS_VAL_SPLIT = "val"
PERSON_SEARCH_IMAGE_ORDER = ("train", "test", "val")  # manifest image order (= file name order)
PERSON_SEARCH_TRUTH = "person_search_truth/views.json"  # per image, the view (kdtrack.synth.render.VIEWS) of each box


def _shards(total: int, size: int) -> range:
    return range(math.ceil(total / size)) if total > 0 else range(0)


def plan_units(cfg: SynthConfig) -> list[Unit]:
    """Every work unit of the world, in a fixed order (the order of the gathered results)."""
    if cfg.shard_size < 1:
        raise ValueError(f"synth.shard_size must be >= 1, got {cfg.shard_size}")
    datasets.check_populations(cfg)  # fail before any unit runs
    units: list[Unit] = []
    for split, n in (("train", cfg.crowdhuman_train_images), ("val", cfg.crowdhuman_val_images)):
        units += [("crowdhuman", split, s) for s in _shards(n, cfg.shard_size)]
    for split, n in (("train", cfg.coco_train_images), ("val", cfg.coco_val_images)):
        units += [("coco", split, s) for s in _shards(n, cfg.shard_size)]
    units += [("kinetics", "train", i) for i in range(cfg.kinetics_clips)]
    units += [("kinetics", KINETICS_VAL_SPLIT, i) for i in range(cfg.kinetics_val_clips)]
    units += [("mot17", i) for i in range(cfg.mot_sequences)]
    for split in PERSON_SEARCH_IMAGE_ORDER:
        units += [("person_search", split, s) for s in _shards(datasets.person_search_total(cfg, split),
                                                                cfg.shard_size)]
    for group, n in (("train", cfg.reid_train_ids), ("test", cfg.reid_test_ids), ("junk", cfg.reid_junk_crops),
                     ("distractor", cfg.reid_distractor_crops)):
        units += [("market1501", group, s) for s in _shards(n, cfg.shard_size)]
    return units


_UNIT_FUNCTIONS = {
    "crowdhuman": datasets.crowdhuman_shard,
    "coco": datasets.coco_shard,
    "kinetics": datasets.kinetics_clip,
    "mot17": datasets.mot_sequence,
    "person_search": datasets.person_search_shard,
    "market1501": datasets.market_shard,
}


def run_unit(task: tuple[dict, str, Unit]) -> dict[str, Any]:
    """Run one unit: ``task = (asdict(cfg), out_dir, unit)``; picklable for processes and Ray tasks."""
    cfg_dict, out_dir, unit = task
    cfg = SynthConfig(**cfg_dict)
    kind, *args = unit
    if kind not in _UNIT_FUNCTIONS:
        raise ValueError(f"unknown synth unit kind {kind!r}")
    return {"unit": list(unit), "result": _UNIT_FUNCTIONS[kind](cfg, out_dir, *args)}


def _gather(results: list[dict], kind: str, *match: Any) -> list[dict]:
    return [r["result"] for r in results if r["unit"][0] == kind and tuple(r["unit"][1:1 + len(match)]) == match]


def generate_world(cfg: SynthConfig, out_dir: str | Path, *, map_fn: MapFn = map, preset: str = "",
                   units: list[Unit] | None = None) -> dict[str, Any]:
    """Generate every dataset under ``out_dir`` and return the summary also written to ``world.json``.

    ``units`` restricts generation to a subset (tests); annotation files are then
    written only for the formats whose units ran.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_units(cfg) if units is None else list(units)
    cfg_dict = dataclasses.asdict(cfg)
    results = list(map_fn(run_unit, [(cfg_dict, str(out), tuple(u)) for u in plan]))
    kinds = {u[0] for u in plan}
    counts: dict[str, Any] = {f"identities/{k}": v for k, v in datasets.population_counts(cfg).items()}
    extra: dict[str, Any] = {}

    if "crowdhuman" in kinds:
        for split in ("train", "val"):
            entries = [e for r in _gather(results, "crowdhuman", split) for e in r["entries"]]
            ch_format.write_odgt(out / "crowdhuman" / f"annotation_{split}.odgt", entries)
            counts[f"crowdhuman/{split}/images"] = len(entries)
            counts[f"crowdhuman/{split}/persons"] = sum(
                1 for e in entries for b in e["gtboxes"] if b["tag"] == "person")

    if "coco" in kinds:
        for split in ("train", "val"):
            parts = _gather(results, "coco", split)
            images = [img for r in parts for img in r["images"]]
            annotations = [dict(a, id=i + 1) for i, a in enumerate(a for r in parts for a in r["annotations"])]
            coco_format.write_coco(out / "coco" / "annotations" / f"instances_{split}2017.json", images,
                                   annotations, datasets.COCO_CATEGORIES)
            counts[f"coco/{split}/images"] = len(images)
            counts[f"coco/{split}/persons"] = sum(1 for a in annotations if a["category_id"] == 1 and not a["iscrowd"])

    if "kinetics" in kinds:
        for split, csv_name in (("train", "train.csv"), (KINETICS_VAL_SPLIT, "validate.csv")):
            clips = [KineticsClip(label=r["label"], youtube_id=r["youtube_id"], time_start=r["time_start"],
                                  time_end=r["time_end"], split=r["split"], path=str(out / "kinetics" / r["relpath"]))
                     for r in _gather(results, "kinetics", split)]
            if clips:
                write_kinetics_csv(out / "kinetics" / csv_name, clips)
            counts[f"kinetics/{split}/clips"] = len(clips)

    if "mot17" in kinds:
        seqs = _gather(results, "mot17")
        counts["mot17/sequences"] = len(seqs)
        counts["mot17/frames"] = sum(s["frames"] for s in seqs)
        counts["mot17/gt_rows"] = sum(s["gt_rows"] for s in seqs)
        per_seq = [set(s["track_pids"].values()) for s in seqs]
        counts["mot17/identities"] = len(set().union(*per_seq))
        counts["mot17/max_identities_per_sequence"] = max((len(p) for p in per_seq), default=0)
        extra["mot17_track_pids"] = {s["name"]: s["track_pids"] for s in seqs}

    if "person_search" in kinds:
        images = [img for split in PERSON_SEARCH_IMAGE_ORDER for r in _gather(results, "person_search", split)
                  for img in r["images"]]
        queries = datasets.person_search_queries(cfg, images, "test")
        val_queries = datasets.person_search_queries(cfg, images, "val")

        def as_queries(items: list[dict]) -> list[ps_format.PersonSearchQuery]:
            return [ps_format.PersonSearchQuery(pid=q["pid"], file_name=q["file_name"], box_xywh=q["box_xywh"],
                                                galleries=q["galleries"]) for q in items]

        manifest = ps_format.PersonSearchManifest(
            name="synth",
            images=[ps_format.PersonSearchImage(file_name=i["file_name"], width=i["width"], height=i["height"],
                                                camera=i["camera"], split=i["split"], boxes_xywh=i["boxes_xywh"],
                                                pids=i["pids"]) for i in images],
            queries=as_queries(queries),
            protocol="cuhk",
            val_queries=as_queries(val_queries),
        )
        ps_format.write_manifest(out / "person_search" / "manifest.json", manifest)
        # hidden truth beside the dataset (no real dataset has it): the side each annotated person shows, box by box
        atomic_write_json(out / PERSON_SEARCH_TRUTH, {"views": {i["file_name"]: i["views"] for i in images}})
        counts["person_search/images"] = len(images)
        counts["person_search/queries"] = len(queries)
        for split in ("train", "val", "test"):
            counts[f"person_search/{split}/images"] = sum(1 for i in images if i["split"] == split)
        counts["person_search/val/queries"] = len(val_queries)

    if "market1501" in kinds:
        for r in _gather(results, "market1501"):
            for split, n in r["written"].items():
                counts[f"market1501/{split}"] = counts.get(f"market1501/{split}", 0) + n

    summary = {
        "preset": preset,
        "seed": cfg.seed,
        "config": cfg_dict,
        "units": len(plan),
        "counts": counts,
        **extra,
        "generation_seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_json(out / "world.json", summary)
    return summary
