"""The id-free collapse diagnosis (docs/results/idf-stage1.md, "Why the id-free embedding collapsed"), rerunnable.

Trains the tiny student in-process (no Ray) with the IDF stage-1 recipe on a synthetic world's
CrowdHuman + COCO images, one variant per run, and prints every 25 iterations the collapse monitor
of the training batch (between-person cosine, cross-view instance top-1, in eval mode) and at the
end (and every ``--eval-every``) the oracle-box cross-camera person-search re-ID of the student, a
random-init student of the same architecture and the colour histogram, on the same boxes
(``kdtrack.metrics.reid_probe``). Variants are config overrides and view-transform strengths:

    python -m jobs.generate_synth --preset tiny --out runs/world --seed 0
    python bench/idf_collapse.py --world runs/world --set loss.key_momentum=0 \\
        --set loss.batch_negatives=false --set model.embedding_norm=none      # the recipe that collapsed
    python bench/idf_collapse.py --world runs/world                           # the shipped recipe
    python bench/idf_collapse.py --world runs/world --aug hue=0.0 --aug saturation=0.1
    python bench/idf_collapse.py --world runs/world --set loss.heatmap_weight=0 --set loss.size_weight=0 \\
        --set loss.offset_weight=0 --set loss.id_weight=1.0                   # identity loss alone

Settings of that page's table: tiny preset at 320x192, Adam 1e-3, 4 image pairs per iteration,
queue 2048, 300-400 iterations, one torch thread.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kdtrack.data.transforms as transforms  # noqa: E402
from kdtrack.config import SynthConfig, load_config  # noqa: E402
from kdtrack.data.dataset import TrainingDataset, collate, load_records  # noqa: E402
from kdtrack.engine import build_optimizer, build_scheduler, train_step  # noqa: E402
from kdtrack.losses import Criterion  # noqa: E402
from kdtrack.losses.collapse import collapse_stats  # noqa: E402
from kdtrack.models import build_student  # noqa: E402
from kdtrack.models.momentum import MomentumEncoder  # noqa: E402
from kdtrack.metrics.reid_probe import build_embedders, evaluate_reid_box_sets, load_reid_box_sets  # noqa: E402
from kdtrack.synth.world import generate_world  # noqa: E402

DEFAULT_WORLD = Path(__file__).resolve().parents[1] / "runs" / "bench-world-tiny"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default=str(DEFAULT_WORLD),
                    help="a synthetic world root (default: the tiny world, generated there once)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    ap.add_argument("--aug", action="append", default=[], help="AugmentParams field=value of the idf_view preset")
    ap.add_argument("--eval-every", type=int, default=0, help="iterations between re-ID probes (0: at the end)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (Path(args.world) / "world.json").exists():
        generate_world(SynthConfig(), args.world, preset="tiny")
    if args.aug:
        changes = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in args.aug)}
        transforms.PRESETS["idf_view"] = dataclasses.replace(transforms.PRESETS["idf_view"], **changes)
    cfg = load_config("tiny", [f"data.root={Path(args.world).resolve()}", "train.recipe=contrastive",
                               "loss.id_mode=contrastive", "train.optimizer=adam", "train.lr=1e-3",
                               "data.sources=[crowdhuman,coco]", "train.lr_steps=[0.85]", *args.overrides])
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, args.iters)
    keys = MomentumEncoder(model, cfg.loss.key_momentum) if cfg.loss.key_momentum > 0 else None
    box_sets = load_reid_box_sets(args.world, cfg.eval, protocols=("person_search",))

    def probe() -> dict[str, float]:
        results = evaluate_reid_box_sets(build_embedders(model, cfg, seed=cfg.train.seed), box_sets, cfg.eval)
        model.train()
        return {name: round(row["mAP"], 4) for name, row in results["person_search"].items()}

    dataset = TrainingDataset(load_records(cfg), cfg, views=2)
    bs = cfg.train.batch_size_per_worker
    it, epoch, start = 0, 0, time.time()
    while it < args.iters:
        dataset.set_epoch(epoch)
        order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(dataset))
        for s in range(0, len(order) - bs + 1, bs):
            batch = collate([dataset[int(i)] for i in order[s:s + bs]])
            terms = train_step(model, criterion, batch, optimizer, device="cpu", iteration=it, key_encoder=keys)
            scheduler.step()
            it += 1
            if it == 1 or it % 25 == 0:
                model.eval()
                with torch.no_grad():
                    mon = collapse_stats(model(batch["image"])["embedding"], batch["region_index"],
                                         batch["region_mask"], batch["ids"])
                model.train()
                line = {"it": it, "det": round(terms["det"], 3), "contrastive": round(terms["id/contrastive"], 3),
                        **{k: round(v, 3) for k, v in mon.items()}, "s": round(time.time() - start)}
                if args.eval_every and it % args.eval_every == 0:
                    line["person_search_mAP"] = probe()
                print(json.dumps(line), flush=True)
            if it >= args.iters:
                break
        epoch += 1
    print(json.dumps({"iterations": it, "overrides": args.overrides, "aug": args.aug,
                      "person_search_mAP": probe()}), flush=True)


if __name__ == "__main__":
    main()
