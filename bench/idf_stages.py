"""The IDF stages measured end to end on a synthetic world (docs/results/idf-stages-2-3.md and idf-stage1.md).

In-process loops (no Ray, one torch thread) with the presets' settings -- ``idf_cpu`` (stage 1),
``idf_video_cpu`` (stage 2), ``idf_det_cpu`` (stage 3) -- and, between them, ``jobs.pseudo_label``
itself. Every probe line is JSON: oracle-box re-ID mAP (person search cross-camera, MOT cross-time;
``kdtrack.metrics.reid_probe``, what ``jobs.evaluate reid`` runs), the scene-code cosines on the person-search
boxes (different people of one image / of different images, the same person in another camera), and
detection recall / precision / AP on the CrowdHuman val images. The random-init and colour-histogram
baselines are probed once, on the same boxes.

    python -m jobs.generate_synth --preset small --out W --seed 0
    python bench/idf_stages.py --world W --out runs/idf-stages                      # the results pages' numbers
    python bench/idf_stages.py --world W --out runs/idf-stages --stage1-iters 0     # stage 2 from random init
    python bench/idf_stages.py --world W --out runs/idf-stages --set data.pair_sampling=random
    python bench/idf_stages.py --world W --out runs/wb --aug channel_gain=0.15 --labels none  # stage 1 only

Stage-1 variants: ``--aug`` (fields of the transforms preset stage 1 uses, ``data.augment``) and ``--set``
(config overrides, all stages).
``--stage1-from CKPT`` starts from a stage-1 checkpoint instead of training one; ``--stage2-set`` overrides
stage 2 alone, e.g. the pseudo-identities classified (``train.recipe=video_classify``'s loss):

    python bench/idf_stages.py --world W --out runs/classify --stage1-from O1/checkpoint.pt --labels pseudo \
        --stage2-set loss.id_mode=supervised --stage2-set loss.supervised_memory=4096 \
        --stage2-set loss.uncertainty=false --stage2-set train.classifier_lr_mult=10 --stage2-set train.lr=1e-3
    python bench/idf_stages.py --world W --out runs/classify --stage1-from O1/checkpoint.pt --labels pseudo \
        --stage2-config idf_classify_cpu --stage2-set data.white_balance=0.15 --stage3-iters 0   # as the preset

``--stage2-config`` names stage 2's preset (``idf_video_cpu``, PointID's stage 2, by default); ``--stage2-aug``
changes fields of the transforms preset stage 2 uses (``kdtrack.data.transforms.AugmentParams``), as ``--aug``
does for stage 1.
Two diagnostic controls patch the process before any network or sample is built (docs/results/idf-stage1.md,
"The dense contrastive objective fails at this scale"): ``--norm group`` makes every ``BatchNorm2d`` a
``GroupNorm`` (8 groups; no batch statistics, so nothing can leak between the samples of a batch, MoCo's
"shuffle BN" concern; ``--norm per-view`` keeps BatchNorm and puts stage 1's two views through the network in forwards
of their own instead), and ``--keys ids`` gives the contrastive loss the records' true identities (ids > 0) as person keys instead
of one key per person and image: the same person in two images of a batch is a positive and never a
negative (a *supervised* upper-bound control, e.g. with ``--set data.sources=[person_search]``).

    python bench/idf_stages.py --world W --out runs/sup --labels none --keys ids --set 'data.sources=[person_search]'
    python bench/idf_stages.py --world W --out runs/sup-pk --labels none --keys ids --batches identity \
        --set 'data.sources=[person_search]'     # every batch: four images of one drawn person
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kdtrack.data.transforms as transforms  # noqa: E402
from jobs import pseudo_label  # noqa: E402
from kdtrack.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from kdtrack.config import Config, load_config  # noqa: E402
from kdtrack.data.dataset import TrainingDataset, augment_preset, load_records, read_image_rgb  # noqa: E402
from kdtrack.engine import (  # noqa: E402
    build_optimizer, build_scheduler, detection_anchor, freeze_parts, train_in_process, trainable_parameters,
)
from kdtrack.formats.crowdhuman import read_crowdhuman  # noqa: E402
from kdtrack.inference import Detector  # noqa: E402
from kdtrack.losses import Criterion  # noqa: E402
from kdtrack.metrics.detection import detection_metrics  # noqa: E402
from kdtrack.models import build_student  # noqa: E402
from kdtrack.models.momentum import MomentumEncoder  # noqa: E402
from kdtrack.metrics.reid_probe import build_embedders, embed_box_set, load_reid_box_sets, score_box_set  # noqa: E402
from kdtrack.data.video_pairs import VideoPairDataset, pseudo_id_classes, read_clip_labels  # noqa: E402


def scene_cosines(box_set: Any, features: np.ndarray) -> dict[str, float]:
    """Mean cosine of different people in one image / in different images, and of the same person in
    the same camera (other images) / in another camera: how much of the embedding is the scene."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-9)
    image = np.concatenate([np.full(len(b), i) for i, b in enumerate(box_set.boxes_xyxy)])
    cos = f @ f.T
    other_id = box_set.ids[:, None] != box_set.ids[None]
    same_image = image[:, None] == image[None]
    same_cam = box_set.groups[:, None] == box_set.groups[None]
    pairs = {"cos_other_id_same_image": other_id & same_image, "cos_other_id_other_image": other_id & ~same_image,
             "cos_same_id_same_camera": ~other_id & same_cam & ~same_image,
             "cos_same_id_other_camera": ~other_id & ~same_cam}
    return {name: round(float(cos[mask].mean()), 3) if mask.any() else float("nan") for name, mask in pairs.items()}


class Probe:
    """Re-ID, scene cosines and detection of a model, on boxes loaded once."""

    def __init__(self, world: Path, cfg: Config) -> None:
        self.cfg = cfg
        self.box_sets = load_reid_box_sets(world, cfg.eval, protocols=("person_search", "mot"))
        self.val, _ = read_crowdhuman(world / "crowdhuman" / "annotation_val.odgt", world / "crowdhuman" / "Images")

    def __call__(self, model: torch.nn.Module, baselines: tuple[str, ...] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {}
        embedders = build_embedders(model, self.cfg, seed=self.cfg.train.seed, baselines=baselines)
        for protocol, box_set in self.box_sets.items():
            for name, features in embed_box_set(box_set, embedders).items():
                out[f"{protocol}/{name}/mAP"] = round(100 * score_box_set(box_set, features).summary()["mAP"], 1)
                if protocol == "person_search" and name != "colour":
                    out.update({f"{name}/{k}": v for k, v in scene_cosines(box_set, features).items()})
        model.eval()
        detector = Detector(model, self.cfg, torch.device("cpu"), score_threshold=0.05)
        found = [detector(read_image_rgb(r.image_path))[0] for r in self.val]
        det = detection_metrics([(d.boxes_xyxy, d.scores) for d in found], [r.boxes_xyxy for r in self.val],
                                score_threshold=0.4)
        out.update({f"detection/{k}": round(det[k], 3) for k in ("recall", "precision", "ap")})
        model.train()
        return out


def identity_batches(dataset: Any, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches in which all images show one drawn identity (P x K with P = 1, K = batch size):
    every batch holds cross-image positives for the ``--keys ids`` control. Identities in fewer than
    ``batch_size`` images are not drawn."""
    rng = np.random.default_rng([seed, epoch, 1])
    images_of: dict[int, list[int]] = {}
    for i, record in enumerate(dataset.items):
        for pid in {int(p) for p in record.ids if p > 0}:
            images_of.setdefault(pid, []).append(i)
    pids = sorted(p for p, images in images_of.items() if len(images) >= batch_size)
    if not pids:
        raise ValueError(f"no identity is seen in {batch_size} images: no identity batches")
    return [[int(i) for i in rng.choice(images_of[int(rng.choice(pids))], batch_size, replace=False)]
            for _ in range(len(dataset) // batch_size)]


def train(model: torch.nn.Module, cfg: Config, dataset: Any, iterations: int, *, stage: str,
          probe: Callable[[], dict[str, Any]], probe_every: int, by_identity: bool = False,
          batchnorm_views: int = 1) -> None:
    """The stages' loop: :func:`kdtrack.engine.train_in_process` over shuffled batches (a new order and new
    draws every epoch), a JSON line every 50 iterations and ``probe()`` every ``probe_every`` and at the end;
    ``by_identity``: :func:`identity_batches` instead; ``batchnorm_views`` 2: each view in a forward of its own
    (:func:`kdtrack.engine.forward_by_views`)."""
    freeze_parts(model, cfg.train.freeze)
    anchor = detection_anchor(model) if cfg.loss.detection_anchor_weight > 0 else None  # the stage's start
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), cfg.train,
                                criterion.classifier_parameters())
    scheduler = build_scheduler(optimizer, cfg.train, iterations)
    keys = MomentumEncoder(model, cfg.loss.key_momentum) if cfg.loss.id_mode == "contrastive" else None
    bs, start = cfg.train.batch_size_per_worker, time.time()

    def report(iteration: int, terms: dict[str, float]) -> None:
        if iteration % 50 == 0:
            print(json.dumps({"stage": stage, "it": iteration, "s": round(time.time() - start),
                              **{k: round(v, 3) for k, v in terms.items()
                                 if k in ("det", "id/contrastive", "monitor/cos_between", "monitor/xview_top1")}}),
                  flush=True)
        if (probe_every and iteration % probe_every == 0) or iteration == iterations:
            print(json.dumps({"stage": stage, "it": iteration, **probe()}), flush=True)

    train_in_process(model, criterion, optimizer, dataset, iterations, batch_size=bs, seed=cfg.train.seed,
                     scheduler=scheduler, key_encoder=keys, log_fn=report, anchor=anchor,
                     batchnorm_views=batchnorm_views,
                     log_every=math.gcd(50, probe_every) if probe_every else 50,
                     epoch_batches=(lambda e: identity_batches(dataset, bs, cfg.train.seed, e)) if by_identity else None)


@contextlib.contextmanager
def changed_transforms(cfg: Config, changes: list[str]) -> Iterator[None]:
    """Inside: the transforms preset ``cfg`` augments with (``data.augment``) has the ``field=value`` ``changes``;
    restored after, so that a later stage gets the preset as it is."""
    preset = augment_preset(cfg)
    params = transforms.PRESETS[preset]
    if changes:
        if params is None:
            raise SystemExit(f"data.augment {preset!r} has no transforms to change")
        fields = {k: ast.literal_eval(v) for k, v in (c.split("=", 1) for c in changes)}
        transforms.PRESETS[preset] = dataclasses.replace(params, **fields)
    try:
        yield
    finally:
        transforms.PRESETS[preset] = params


def use_group_norm(groups: int = 8, set_attr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Every ``nn.BatchNorm2d`` built from now on in this process is a ``GroupNorm`` (affine as asked)."""

    def group_norm(channels: int, *args: Any, affine: bool = True, **kwargs: Any) -> torch.nn.Module:
        return torch.nn.GroupNorm(groups if channels % groups == 0 else 1, channels, affine=affine)

    set_attr(torch.nn, "BatchNorm2d", group_norm)


def use_true_ids_as_keys(set_attr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Contrastive person keys = the record's true ids where > 0 (else the usual per-image key)."""
    import kdtrack.data.dataset as data

    image_uid, person_keys = data.image_uid, data.person_keys
    set_attr(data, "image_uid", lambda record: record)  # person_keys below gets the record

    def keys(record: Any, num_boxes: int) -> np.ndarray:
        ids = np.asarray(record.ids, np.int64)
        return np.where(ids > 0, ids, person_keys(image_uid(record), num_boxes))

    set_attr(data, "person_keys", keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--stage1-iters", type=int, default=900, help="0: stage 2 starts from random init")
    ap.add_argument("--stage2-iters", type=int, default=400)
    ap.add_argument("--stage3-iters", type=int, default=300)
    ap.add_argument("--probe-every", type=int, default=300)
    ap.add_argument("--labels", default="pseudo,oracle", help="stage-2 label sets: pseudo, oracle (or none)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value (all stages)")
    ap.add_argument("--stage2-set", dest="stage2_overrides", action="append", default=[],
                    help="section.field=value (stage 2 only, after --set)")
    ap.add_argument("--stage2-config", default="idf_video_cpu", help="stage 2's preset")
    ap.add_argument("--stage2-aug", action="append", default=[],
                    help="field=value of stage 2's transforms preset (its data.augment)")
    ap.add_argument("--stage1-from", type=Path, help="a stage-1 checkpoint to start from instead of training stage 1")
    ap.add_argument("--aug", action="append", default=[], help="field=value of stage 1's transforms preset (data.augment)")
    ap.add_argument("--norm", choices=("batch", "group", "per-view"), default="batch",
                    help="group: every BatchNorm2d becomes a GroupNorm (diagnostic, all stages); per-view: stage 1's "
                         "two views in forwards of their own, so a person's views never share batch statistics")
    ap.add_argument("--keys", choices=("image", "ids"), default="image",
                    help="ids: contrastive keys = true identities (supervised control, all stages)")
    ap.add_argument("--batches", choices=("shuffled", "identity"), default="shuffled",
                    help="identity: stage-1 batches whose images all show one drawn identity (with --keys ids)")
    args = ap.parse_args()
    if args.norm == "group":
        use_group_norm()
    if args.keys == "ids":
        use_true_ids_as_keys()
    torch.set_num_threads(1)
    world, out = args.world.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={world}", *args.overrides]
    cfg1 = load_config("idf_cpu", common)
    probe = Probe(world, cfg1)

    torch.manual_seed(cfg1.train.seed)
    model = build_student(cfg1.model)
    print(json.dumps({"stage": "init", "it": 0, **probe(model, baselines=("random", "colour"))}), flush=True)
    if args.stage1_from:
        model.load_state_dict(load_checkpoint(args.stage1_from)["model"])
        print(json.dumps({"stage": "stage1_from", "it": 0, **probe(model)}), flush=True)
    elif args.stage1_iters > 0:
        with changed_transforms(cfg1, args.aug):  # idf_cpu's view transforms (data.augment)
            train(model, cfg1, TrainingDataset(load_records(cfg1), cfg1, views=2), args.stage1_iters, stage="stage1",
                  probe=lambda: probe(model), probe_every=args.probe_every, by_identity=args.batches == "identity",
                  batchnorm_views=2 if args.norm == "per-view" else 1)
    stage1 = save_checkpoint(out / "stage1", model=model, config=cfg1, iteration=args.stage1_iters)

    for labels in [x for x in args.labels.split(",") if x and x != "none"]:
        label_dir = out / f"labels_{labels}"
        if labels == "oracle":
            pseudo_label.main(["--oracle-truth", "--videos", str(world / "kinetics"), "--out", str(label_dir)])
        elif args.stage1_iters > 0 or args.stage1_from:
            print(json.dumps({"stage": "pseudo_label", **pseudo_label.main(
                ["--checkpoint", str(stage1), "--videos", str(world / "kinetics"), "--out", str(label_dir),
                 "--no-ray", "--no-progress", *[x for o in args.overrides for x in ("--set", o)]])["quality"]}),
                flush=True)
        else:
            continue  # a random-init network detects nothing: no pseudo-labels of its own
        cfg2 = load_config(args.stage2_config, [*common, f"data.pseudo_labels={label_dir / 'labels.parquet'}",
                                             *args.stage2_overrides])
        clips = read_clip_labels(cfg2.data.pseudo_labels, world)
        if cfg2.loss.id_mode == "supervised" and cfg2.loss.num_id_classes == 0:  # as jobs.train classes them
            clips, classes = pseudo_id_classes(clips)
            cfg2 = dataclasses.replace(cfg2, loss=dataclasses.replace(cfg2.loss, num_id_classes=classes))
        model2 = build_student(cfg2.model)
        model2.load_state_dict(model.state_dict())
        with changed_transforms(cfg2, args.stage2_aug):
            train(model2, cfg2, VideoPairDataset(clips, cfg2),
                  args.stage2_iters, stage=f"stage2_{labels}", probe=lambda m=model2: probe(m),
                  probe_every=args.probe_every)
        save_checkpoint(out / f"stage2_{labels}", model=model2, config=cfg2, iteration=args.stage2_iters)
        if not args.stage3_iters:
            continue
        cfg3 = load_config("idf_det_cpu", common)
        model3 = build_student(cfg3.model)
        model3.load_state_dict(model2.state_dict())
        train(model3, cfg3, TrainingDataset(load_records(cfg3), cfg3, views=1), args.stage3_iters,
              stage=f"stage3_{labels}", probe=lambda m=model3: probe(m), probe_every=0)
        save_checkpoint(out / f"stage3_{labels}", model=model3, config=cfg3, iteration=args.stage3_iters)


if __name__ == "__main__":
    main()
