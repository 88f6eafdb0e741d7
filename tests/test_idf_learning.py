"""The id-free recipe keeps learning its training task instead of collapsing (a regression test of IDF stage 1).

A short training of a small student on the tiny world's CrowdHuman-style images, twice, side by side
in two processes: the recipe as built now (momentum key encoder filling the queue, in-batch negatives) and
the recipe that collapsed (the student's own stale embeddings in the queue, queue-only negatives,
no centring before the L2 norm).
Both are measured on HELD-OUT images (CrowdHuman val, two views each) with the collapse monitor:
the cosine between different persons and the cross-view instance top-1. The old recipe must
collapse (this is what makes the test able to fail) and the current one must not.

The second test is the oracle-box regression: stage 1 as ``idf_cpu`` runs it (background swap of the
second view, people re-laid out, a person's colours kept between the views), small student, 600 iterations
on a micro world, must re-identify the person-search TEST people across cameras (oracle boxes,
``kdtrack.metrics.reid_probe``, what ``jobs.evaluate reid`` runs) clearly better than the random-init network
it started from. Its strict-xfail twin runs the recipe without the swap and with the paper's colour jitter,
which learns the scene instead of the person (docs/results/idf-stage1.md,
"The oracle-box regression test"): if that control ever passes, the threshold no longer tells learning from noise.
"""

from __future__ import annotations

import math
import multiprocessing
import os

import numpy as np
import pytest
import torch

from kdtrack.config import SynthConfig, load_config
from kdtrack.data.dataset import TrainingDataset, collate, load_records
from kdtrack.engine import build_optimizer, build_scheduler, train_in_process
from kdtrack.formats import read_crowdhuman
from kdtrack.losses import Criterion
from kdtrack.losses.collapse import collapse_stats
from kdtrack.models import build_student
from kdtrack.models.momentum import MomentumEncoder
from kdtrack.metrics.reid_probe import build_embedders, embed_box_set, person_search_box_set, score_box_set
from kdtrack.synth.world import generate_world, plan_units
from kdtrack.threads import limit_blas_threads

SMALL = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
         "model.embedding_dim=32", "model.deformable=false", "loss.queue_size=512", "train.lr=1e-3",
         "train.batch_size_per_worker=4", "data.sources=[crowdhuman]"]
ITERATIONS = 60


def _train_and_probe(world, overrides):
    cfg = load_config("tiny", SMALL + [f"data.root={world}"] + overrides)
    records, _ = read_crowdhuman(world / "crowdhuman" / "annotation_train.odgt", world / "crowdhuman" / "Images")
    held_out, _ = read_crowdhuman(world / "crowdhuman" / "annotation_val.odgt", world / "crowdhuman" / "Images")
    torch.manual_seed(0)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train)
    keys = MomentumEncoder(model, cfg.loss.key_momentum) if cfg.loss.key_momentum > 0 else None
    bs = cfg.train.batch_size_per_worker
    train_in_process(model, criterion, optimizer, TrainingDataset(records, cfg, views=2), ITERATIONS, batch_size=bs,
                     seed=0, key_encoder=keys)
    model.eval()
    probe = TrainingDataset(held_out, cfg, views=2)
    cos, top1, chance, weights = [], [], [], []
    with torch.no_grad():
        for s in range(0, len(probe), bs):
            batch = collate([probe[i] for i in range(s, min(s + bs, len(probe)))])
            stats = collapse_stats(model(batch["image"])["embedding"], batch["region_index"],
                                   batch["region_mask"], batch["ids"])
            if math.isfinite(stats["cos_between"]) and math.isfinite(stats["xview_top1"]):
                persons_view1 = int(batch["mask"][len(batch["mask"]) // 2:].sum())
                cos.append(stats["cos_between"])
                top1.append(stats["xview_top1"])
                chance.append(1.0 / max(persons_view1, 1))  # a person is looked for among all view-1 persons
                weights.append(int((batch["mask"][: len(batch["mask"]) // 2]).sum()))
    return tuple(float(np.average(v, weights=weights)) for v in (cos, top1, chance))


def _one_thread(fn, *args):
    """``fn(*args)`` on one torch thread and one BLAS thread, in a pool process: two trainings run side by side,
    one per core (two threads per training spun on 2 shared cores: 6-10x slower under load)."""
    torch.set_num_threads(1)
    limit_blas_threads()
    return fn(*args)


@pytest.fixture(scope="module")
def pool():
    """Two processes for :func:`_one_thread`; a training no test waits for (-k) is not waited for at the end."""
    processes = multiprocessing.get_context("spawn").Pool(2)
    yield processes
    processes.terminate()
    processes.join()


@pytest.mark.slow
def test_fixed_recipe_learns_where_the_old_one_collapses(tiny_world, pool):
    old = pool.apply_async(_one_thread, (_train_and_probe, tiny_world, ["loss.key_momentum=0",
                                                                         "loss.batch_negatives=false",
                                                                         "model.embedding_norm=none"]))
    new = pool.apply_async(_one_thread, (_train_and_probe, tiny_world, []))
    (old_cos, old_top1, chance), (new_cos, new_top1, _) = old.get(), new.get()
    measured = dict(old_cos=old_cos, old_top1=old_top1, new_cos=new_cos, new_top1=new_top1, chance=chance)
    # Old: every person gets nearly the same vector on held-out images.
    assert old_cos > 0.97, measured
    # New: people stay apart, and a person is found again in the other view among all the batch's
    # view-1 persons far above chance and clearly above the collapsed recipe.
    assert new_cos < old_cos - 0.1, measured
    assert new_top1 > 3 * chance and new_top1 > old_top1 + 0.08, measured
    print(measured)


# The micro world: the tiny preset's CrowdHuman images to train on and a person-search TEST split nine
# times the tiny one's (360 frames, 120 people, 3 cameras). With 120 frames, seed-to-seed spread of the
# ratio below overlapped the control's (recipe 1.16-1.53x, control 0.89-1.08x over train.seed 0-3).
REID_WORLD = dict(person_search_test_images=360, person_search_test_ids=120, num_identities=230)
# not fewer: at 300 iterations the control reached 1.40x at seed 0 (the recipe 2.01x, 1.86x, 1.66x, 1.50x at 0-3)
REID_ITERATIONS = 600
# student / random-init person-search mAP. Measured over train.seed 0-3 (the test's docstring): the recipe 2.03x
# at its lowest, the control 1.20x at its highest, where 1.2 sat until a float-level change of the loss (the same
# loss, summed in another order) moved the seed-0 control from 1.03x to 1.20x: 1.5 leaves both a margin.
REID_MIN_RATIO = 1.5
# the control: stage 1 as it was before its two fixes of the scene shortcut -- no background swap, and the
# paper's colour jitter (hue 0.1), which leaves the scene and the pose, not the clothing, as what the two views
# share. With the kept colours and no swap it does learn the person (1.88x at seed 0): not a control. Nor with
# MoCo's positives (idf_cpu's loss.key_positives, at its lambda 0.5): then it passes the threshold too, so the control
# keeps the loss as it was, the student's own positives at the paper's lambda and tau.
NO_SWAP = ["data.background_swap=0", "data.background_relayout=false", "data.augment=idf_view",
           "loss.key_positives=false", "loss.id_weight=0.2", "loss.temperature=0.07"]
# train.seed of both tests; KDTRACK_REID_SEEDS=0,1,2,3 reruns the seed sweep the docstring quotes
REID_SEEDS = [int(x) for x in os.environ.get("KDTRACK_REID_SEEDS", "0").split(",")]


@pytest.fixture(scope="module")
def reid_world(tmp_path_factory):
    cfg = SynthConfig(**REID_WORLD)
    root = tmp_path_factory.mktemp("reid_world")
    generate_world(cfg, root, preset="tiny",
                   units=[u for u in plan_units(cfg) if u[0] in ("crowdhuman", "person_search")])
    return root


def _cross_camera_map(world, overrides):
    """Person-search test mAP (%) of the trained student and of its random init, trained as idf_cpu."""
    cfg = load_config("idf_cpu", SMALL + [f"data.root={world}", f"train.max_iterations={REID_ITERATIONS}"]
                      + overrides)
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train)
    iterations = cfg.train.max_iterations
    train_in_process(model, criterion, optimizer, TrainingDataset(load_records(cfg), cfg, views=2), iterations,
                     batch_size=cfg.train.batch_size_per_worker, seed=cfg.train.seed,
                     scheduler=build_scheduler(optimizer, cfg.train, iterations),
                     key_encoder=MomentumEncoder(model, cfg.loss.key_momentum))
    box_set = person_search_box_set(world / "person_search" / "manifest.json", "test")
    features = embed_box_set(box_set, build_embedders(model, cfg, baselines=("random",)))
    return {name: 100 * score_box_set(box_set, f).summary()["mAP"] for name, f in features.items()}


@pytest.fixture(scope="module")
def cross_camera_maps(reid_world, pool):
    """``maps(seed, kind)``: the mAPs of ``"recipe"`` or ``"control"`` at ``train.seed`` ``seed``. The first
    request for a seed starts both trainings at once; the other test of that seed then finds its result."""
    started = {}

    def maps(seed, kind):
        if seed not in started:
            started[seed] = {name: pool.apply_async(_one_thread, (_cross_camera_map, reid_world,
                                                                  [*extra, f"train.seed={seed}"]))
                             for name, extra in (("recipe", []), ("control", NO_SWAP))}
        return started[seed][kind].get()

    return maps


def _assert_beats_random_init(m):
    """The one threshold, shared by the recipe and its control."""
    print(m)
    assert m["student"] >= REID_MIN_RATIO * m["random"], m


@pytest.mark.slow
@pytest.mark.parametrize("seed", REID_SEEDS)
def test_stage1_reidentifies_people_across_cameras_better_than_its_random_init(cross_camera_maps, seed):
    """Measured with these settings over ``train.seed`` 0-3 (seed 0 is this test), the identity read at the
    centre cell: student / random 1.55x, 1.59x, 1.56x, 1.32x (3.6 vs 2.3 mAP at seed 0); the no-swap control
    0.89x, 1.07x, 0.98x, 0.82x (two torch threads; on the one thread the test now trains with, seed 0 gives
    1.56x and 0.89x). Read over two bands of the box's central region (``idf_cpu``'s ``model.id_readout``
    now), seed 0 gives 2.53x (5.9 vs 2.3) and the control 1.03x; with the two views keeping a person's colours
    (``idf_cpu``'s ``data.augment`` now) 3.01x (7.0 vs 2.3), the control (the paper's colour jitter, no swap)
    1.03x. With the contrastive loss's positives summed in another order (the same loss to 1e-7 in its
    gradients) seeds 0-3 give the recipe 2.67x, 2.38x, 3.11x, 2.03x and the control 1.20x, 0.86x, 1.11x, 0.71x:
    a float-level change moves the control by 0.17, so the threshold sits between the two ranges, at 1.5x.
    Chance (a random ranking) is 1.4 mAP on these 1,587 query boxes. With MoCo's positives at lambda 0.5
    seed 0 gave 4.17x (9.6 vs 2.3), and with tau 0.1 beside them (``idf_cpu``'s loss now) 4.50x (10.4 vs 2.3);
    the control, with the loss it had, 1.16x."""
    _assert_beats_random_init(cross_camera_maps(seed, "recipe"))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="control: without the background swap and with the paper's colour jitter stage 1 learns "
                          "the scene, not the person, and must not pass the same threshold")
@pytest.mark.parametrize("seed", REID_SEEDS)
def test_control_without_background_swap_does_not_pass_the_threshold(cross_camera_maps, seed):
    _assert_beats_random_init(cross_camera_maps(seed, "control"))
