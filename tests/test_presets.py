"""The paper presets run the published schedules: run length, lr milestones, batch, multi-scale sizes.

The run length and the milestones are computed exactly as ``jobs.train`` computes them: a
``DistributedSampler(drop_last=True)`` + ``DataLoader(drop_last=True)`` per worker gives the
iterations per epoch, then ``engine.total_iterations`` and ``engine.lr_milestones``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from kdtrack.config import PRESET_DIR, TrainConfig, load_config
from kdtrack.engine import build_scheduler, lr_milestones, total_iterations
from kdtrack.formats.mot import half_split
from kdtrack.data.letterbox import multiscale_transform

CROWDHUMAN_TRAIN = 15_000  # CrowdHuman annotation_train.odgt
COCO_PERSON_TRAIN = 64_115  # COCO train2017 images with at least one person
MOT17_LENGTHS = (600, 1050, 837, 525, 654, 900, 750)  # MOT17-02/04/05/09/10/11/13, frames
MOT17_TRAIN_HALF = sum(len(half_split(n)[0]) for n in MOT17_LENGTHS)


def iterations_per_epoch(num_images: int, tc: TrainConfig) -> int:
    """Batches per worker per epoch, as jobs.train's sampler and loader yield them."""
    sampler = DistributedSampler(range(num_images), num_replicas=tc.num_workers, rank=0, shuffle=False,
                                 drop_last=True)
    return len(DataLoader(range(num_images), batch_size=tc.batch_size_per_worker, sampler=sampler, drop_last=True))


def lr_per_iteration(tc: TrainConfig, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    sched = build_scheduler(opt, tc, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads(name):
    cfg = load_config(name)
    tc = cfg.train
    if tc.epochs == 0:  # an iteration budget must say where it ends
        assert tc.max_iterations > 0
    assert total_iterations(tc, 10) > 0
    lr_milestones(tc, total_iterations(tc, 10))  # valid fractions


def test_idf_paper_runs_25k_iterations_with_steps_at_15k_and_20k():
    cfg = load_config("idf_paper")
    tc = cfg.train
    assert tc.batch_size_per_worker * tc.num_workers == 32  # 32 image pairs per iteration
    ipe = iterations_per_epoch(CROWDHUMAN_TRAIN + COCO_PERSON_TRAIN, tc)
    assert ipe == 2472  # 79,115 images / 8 workers / 4 per batch
    total = total_iterations(tc, ipe)
    assert total == 25_000
    assert lr_milestones(tc, total) == [15_000, 20_000]
    # the budget does not depend on the dataset size (epochs 0 = unbounded, never caps it)
    assert all(total_iterations(tc, n) == 25_000 for n in (1, 7, 2472, 100_000))
    lrs = lr_per_iteration(tc, total)
    assert lrs[14_999] == pytest.approx(0.01) and lrs[15_000] == pytest.approx(1e-3)
    assert lrs[19_999] == pytest.approx(1e-3) and lrs[20_000] == pytest.approx(1e-4) and len(lrs) == 25_000


def test_idf_paper_multiscale_sizes():
    data = load_config("idf_paper").data
    assert data.multiscale_short_sides == (480, 560, 640, 720, 800) and data.multiscale_max_long_side == 1024
    assert load_config("idf_paper").model.unet_merge == "concat"
    # a 1920x1080 frame: short side s, long 1920 s / 1080 capped at 1024; canvas rounded up to 32
    expected = {480: (864, 480), 560: (1024, 576), 640: (1024, 576), 720: (1024, 576), 800: (1024, 576)}
    for side, canvas in expected.items():
        tf, w, h = multiscale_transform(1920, 1080, side, data.multiscale_max_long_side)
        assert (w, h) == canvas and w % 32 == 0 and h % 32 == 0
        assert round(1920 * tf.scale) <= 1024
    # a portrait COCO image 427x640: short side 800 -> 800 x 1199 capped -> 683 x 1024 -> canvas 704 x 1024
    tf, w, h = multiscale_transform(427, 640, 800, 1024)
    assert (w, h) == (704, 1024) and tf.scale == pytest.approx(1024 / 640)


@pytest.mark.parametrize("name, sources, images", [("kd_paper", ("crowdhuman",), CROWDHUMAN_TRAIN),
                                                    ("kd_paper_mot17", ("mot17",), MOT17_TRAIN_HALF)])
def test_kd_paper_runs_30_epochs_with_the_step_at_epoch_20(name, sources, images):
    """KDMOT's two stages, each its own run: CrowdHuman pre-training, then MOT17 fine-tuning (--init-from)."""
    cfg = load_config(name)
    tc = cfg.train
    assert cfg.data.sources == sources and tc.run_name == name and not tc.init_from
    assert tc.batch_size_per_worker * tc.num_workers == 16 and tc.epochs == 30 and tc.max_iterations == 0
    ipe = iterations_per_epoch(images, tc)
    assert ipe == images // 4 // 4
    total = total_iterations(tc, ipe)
    assert total == 30 * ipe
    assert lr_milestones(tc, total) == [20 * ipe]
    lrs = lr_per_iteration(tc, total)
    assert lrs[20 * ipe - 1] == pytest.approx(1e-4) and lrs[20 * ipe] == pytest.approx(1e-5)


def test_kd_paper_step_lands_on_epoch_20_for_any_epoch_length():
    tc = load_config("kd_paper").train
    for ipe in list(range(1, 20_001)) + [123_457, 500_001, 999_983, 10**7 + 1]:
        assert lr_milestones(tc, total_iterations(tc, ipe)) == [20 * ipe], ipe


def test_kd_cpu_distils_the_teacher_cpu_checkpoint(tmp_path):
    import dataclasses

    from jobs.train import check_recipe
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_teacher, teacher_feature_dim

    kd, teacher = load_config("kd_cpu"), load_config("teacher_cpu")
    assert (kd.train.recipe, kd.loss.id_mode, kd.data.sources) == ("kd", "kd", ("crowdhuman", "mot17"))
    assert kd.model.embedding_dim == teacher_feature_dim(kd.teacher) == 128 and not kd.model.normalize_embedding
    assert kd.loss.kd_reduction == "sum_per_object" and kd.loss.eta == 1.0 and kd.loss.uncertainty
    # what `--config teacher_cpu --out T` writes loads key for key (strictly) into kd_cpu's teacher
    path = save_checkpoint(tmp_path, model=build_teacher(teacher.teacher, num_classes=7), config=teacher)
    check_recipe(load_config("kd_cpu", [f"teacher.checkpoint={path}"]))
    build_teacher(dataclasses.replace(kd.teacher, checkpoint=str(path)))
    # an iteration budget (the small world's ~381 iterations per epoch do not change it), lr / 10 at 2/3
    tc = kd.train
    assert tc.batch_size_per_worker * tc.num_workers == 4
    assert all(total_iterations(tc, n) == 900 for n in (7, 381, 10_000))
    assert lr_milestones(tc, 900) == [600]


def test_sup_presets_are_fairmot_and_idf_cpus_budget():
    """sup_paper: FairMOT's re-ID branch and schedule (METHOD.md 4b); sup_cpu: idf_cpu's network, input,
    optimiser and iteration budget, so that the label-free numbers are read against it at the same budget."""
    paper, cpu, idf = load_config("sup_paper"), load_config("sup_cpu"), load_config("idf_cpu")
    assert (paper.train.recipe, paper.loss.id_mode, paper.model.embedding_dim) == ("supervised", "supervised", 128)
    assert paper.model.backbone == "dla34" and (paper.model.input_width, paper.model.input_height) == (1088, 608)
    tc = paper.train
    assert tc.optimizer == "adam" and tc.lr == 1e-4 and tc.epochs == 30 and tc.lr_steps == (2 / 3,)
    assert tc.batch_size_per_worker * tc.num_workers == 12 and paper.loss.uncertainty
    assert (paper.loss.s_det_init, paper.loss.s_id_init) == (-1.85, -1.05)
    assert {"mot17", "person_search"} <= set(paper.data.sources)
    assert (cpu.train.recipe, cpu.loss.id_mode) == ("supervised", "supervised")
    # the same network, the identity read over two bands of the box's central region (kdtrack.readout; ours)
    assert cpu.model == idf.model and cpu.model.id_readout == "centre_halves"
    assert paper.model.id_readout == "cell" == load_config("idf_paper").model.id_readout  # the papers' reading
    for field in ("optimizer", "lr", "epochs", "max_iterations", "lr_steps", "batch_size_per_worker", "num_workers"):
        assert getattr(cpu.train, field) == getattr(idf.train, field), field
    # sup_cpu: the person-search train split alone (the world's MOT17 sequences share their people; docs/results/
    # identity-learning.md); sup_paper: every dataset with identities, as FairMOT
    assert tuple(cpu.data.sources) == ("person_search",)
    assert paper.train.classifier_lr_mult == 1.0 and cpu.train.classifier_lr_mult == 10.0  # FairMOT's; ours


@pytest.mark.parametrize("name", ["kd_paper", "kd_paper_mot17", "idf_paper", "teacher_paper", "sup_paper"])
def test_paper_presets_survive_worker_loss_and_bound_their_checkpoints(name):
    tc = load_config(name).train
    assert tc.max_failures >= 3 and tc.keep_checkpoints > 0
