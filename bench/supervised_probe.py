"""The supervised reference (``train.recipe=supervised``) trained in process, probed as it learns.

One process, no Ray (``torch`` threads as given), the records and classes that ``jobs.train`` would read
(``jobs.train.training_data``), the student, criterion, optimiser and lr schedule of the preset, and every
``--probe-every`` iterations one JSON line: oracle-box person-search mAP on the world's test split
(``kdtrack.metrics.reid_probe``, what ``jobs.evaluate reid`` scores), and the training accuracy of the identity
classifier over those iterations. It answers how the supervised recipe's re-ID grows with its budget
without a Ray job per budget (docs/results/identity-learning.md).

    python -m jobs.generate_synth --preset small --out W --seed 0
    python bench/supervised_probe.py --world W --iterations 1500 --probe-every 300   # sup_cpu's budget
    python bench/supervised_probe.py --world W --iterations 4500 --probe-every 900
    python bench/supervised_probe.py --world W --iterations 1500 --set model.embedding_norm=none
    python bench/supervised_probe.py --world W --iterations 1500 --set train.classifier_lr_mult=1   # FairMOT's lr
    python bench/supervised_probe.py --world W --iterations 1500 --id-cells region
    python bench/supervised_probe.py --world W --iterations 1500 --set loss.supervised_memory=0   # no metric term
    python bench/supervised_probe.py --world W --iterations 1500 --set data.sources=[person_search,mot17] \
        --mot-classes world   # MOT17 tracks classed by the world's true person (an oracle)
    python bench/supervised_probe.py --world W --iterations 1500 --set model.id_readout=centre_halves
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.train import training_data, with_id_classes  # noqa: E402
from kdtrack.config import load_config  # noqa: E402
from kdtrack.data.dataset import TrainingDataset, dataset_wide_ids, person_key  # noqa: E402
from kdtrack.engine import build_optimizer, build_scheduler, train_in_process  # noqa: E402
from kdtrack.losses import Criterion  # noqa: E402
from kdtrack.models import build_student  # noqa: E402
from kdtrack.recipes import recipe_of  # noqa: E402
from kdtrack.metrics.reid_probe import build_embedders, embed_box_set, load_reid_box_sets, score_box_set  # noqa: E402
from kdtrack.structures import ImageRecord  # noqa: E402


class RegionCellCriterion(Criterion):
    """The supervised criterion with every centre-region cell of a labelled person as one more classified
    sample of its identity (``--id-cells region``); detection terms unchanged."""

    def forward(self, outputs, targets, **extra):  # type: ignore[override]
        region, valid = targets["region_index"], targets["region_mask"]  # (B, K, R)
        b, k, r = region.shape
        cells = {**targets, "index": region.reshape(b, k * r),
                 "mask": (valid & targets["mask"].bool()[..., None]).reshape(b, k * r),
                 "ids": targets["ids"][..., None].expand(b, k, r).reshape(b, k * r)}
        terms = super().forward(outputs, targets, **extra)
        dense = self.supervised(outputs["embedding"], cells["index"], cells["mask"], cells["ids"])
        terms.update(dense)
        terms["total"] = self.uncertainty(terms["det"], dense["id"]) if self.uncertainty else terms["det"] + dense["id"]
        return terms


def classes_by_world_person(world: Path):
    """``dataset_wide_ids`` with every MOT17 track classed by the person the synthetic world drew for it
    (``world.json``'s ``mot17_track_pids``): an oracle no real dataset offers. The world's MOT17 sequences
    share their people, which the recipe's one class per (source, sequence, track) splits into several."""
    manifest = world / "world.json"
    try:
        track_person = json.loads(manifest.read_text())["mot17_track_pids"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"--mot-classes world: {manifest} holds no mot17_track_pids ({exc!r}): a synthetic world "
                         f"written by jobs.generate_synth is needed") from None

    def key(source: str, sequence: str, pid: int):
        if source != "mot17":
            return person_key(source, sequence, pid)
        try:
            return "world", track_person[sequence][str(pid)]
        except KeyError:
            raise SystemExit(f"--mot-classes world: {manifest} has no person for {sequence} track {pid}") from None

    return functools.partial(dataset_wide_ids, key=key)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=None,
                    help="a synthetic world (jobs.generate_synth); default: the small world's person-search and "
                         "MOT17 parts, generated once into runs/bench-world-small-labelled")
    ap.add_argument("--config", default="sup_cpu", help="a supervised preset")
    ap.add_argument("--iterations", type=int, default=1500, help="the run length (the lr steps scale with it)")
    ap.add_argument("--probe-every", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    ap.add_argument("--id-cells", choices=("centre", "region"), default="centre",
                    help="where the identity loss reads each labelled person: its centre cell (the recipe), or "
                         "every cell of its centre region (loss.centre_region_radius, the contrastive loss's "
                         "positives), a denser signal per person")
    ap.add_argument("--mot-classes", choices=("track", "world"), default="track",
                    help="MOT17's identity classes: one per sequence and track (the recipe, as FairMOT), or one per "
                         "person of the synthetic world (an oracle: its sequences share people)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.world is None:
        from bench._world import world_parts

        args.world = world_parts("small", REPO / "runs" / "bench-world-small-labelled", ("person_search", "mot17"),
                                 ("person_search/manifest.json", "MOT17/train"))
    cfg = load_config(args.config, [f"data.root={args.world.resolve()}", *args.overrides])
    if recipe_of(cfg).classifier != "always":  # the probe reads the identity classifier every step
        raise SystemExit(f"supervised_probe: {args.config} trains '{cfg.train.recipe}', not 'supervised'")
    if args.id_cells == "region" and cfg.model.id_readout != "cell":
        raise SystemExit("supervised_probe: --id-cells region classifies cells, not model.id_readout's pooled region")
    if args.mot_classes == "world":
        with mock.patch("kdtrack.data.dataset.dataset_wide_ids", classes_by_world_person(args.world)):
            _, loop_data = training_data(cfg)
    else:
        _, loop_data = training_data(cfg)
    cfg = with_id_classes(cfg, loop_data)
    dataset = TrainingDataset([ImageRecord.from_dict(r) for r in loop_data["records"]], cfg, views=1)
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg) if args.id_cells == "centre" else RegionCellCriterion.from_config(cfg)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train,
                                criterion.classifier_parameters())
    scheduler = build_scheduler(optimizer, cfg.train, args.iterations)
    boxes = load_reid_box_sets(args.world, cfg.eval, protocols=["person_search"])["person_search"]
    accuracy: list[float] = []
    start = time.time()

    def probe(step: int, terms: dict[str, float]) -> None:
        accuracy.append(terms["id/accuracy"] if terms.get("id", 0.0) > 0 else np.nan)  # nan: nobody labelled
        if step % args.probe_every and step != args.iterations:
            return
        features = embed_box_set(boxes, build_embedders(model, cfg, baselines=()))["student"]
        model.train()
        print(json.dumps({"it": step, "ps_mAP": round(100 * score_box_set(boxes, features).summary()["mAP"], 1),
                          "train_accuracy": round(float(np.nanmean(accuracy[-args.probe_every:])), 3),
                          "id": round(terms["id"], 3), "s_id": round(terms.get("s_id", float("nan")), 3),
                          "seconds": round(time.time() - start)}), flush=True)

    train_in_process(model, criterion, optimizer, dataset, args.iterations, batch_size=cfg.train.batch_size_per_worker,
                     seed=cfg.train.seed, scheduler=scheduler, log_every=1, log_fn=probe)


if __name__ == "__main__":
    main()
