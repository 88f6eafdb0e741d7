"""Train step, schedule, NaN guard, resume from a checkpoint (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtrack.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from kdtrack.config import load_config
from kdtrack.engine import (
    attach_teacher_targets, build_optimizer, build_scheduler, lr_milestones, select_device, total_iterations,
    train_step,
)
from kdtrack.data.letterbox import letterbox
from kdtrack.losses import Criterion
from kdtrack.models import build_student, build_teacher, freeze_teacher
from kdtrack.models.momentum import MomentumEncoder
from kdtrack.models.teacher_targets import teacher_embeddings
from kdtrack.data.targets import encode_targets, person_keys

SMALL = ["model.input_width=128", "model.input_height=64", "model.width=8", "model.head_conv=16",
         "model.embedding_dim=16", "model.deformable=false", "loss.queue_size=64", "train.lr=0.001"]


def _batch(cfg, views: int = 2) -> dict:
    """Two images with two people each; views=2 repeats them (same person keys) as a second half."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(2):
        img = (rng.random((64, 128, 3)) * 255).astype(np.uint8)
        canvas, _ = letterbox(img, cfg.model.input_width, cfg.model.input_height)
        boxes = np.array([[10, 10, 40, 60], [70, 5, 110, 60]], np.float32)
        enc = encode_targets(boxes, person_keys(i + 1, 2), None, (64, 128), max_objects=4, size_channels=4)
        images.append(torch.from_numpy(canvas))
        targets.append(enc)
    images, targets = images * views, targets * views
    batch = {k: torch.stack([t[k] for t in targets]) for k in targets[0]}
    batch["image"] = torch.stack(images)
    return batch


def _setup(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train)
    return model, criterion, optimizer


def _key_encoder(cfg, model):
    return MomentumEncoder(model, cfg.loss.key_momentum) if cfg.loss.id_mode == "contrastive" else None


def test_step_schedule():
    cfg = load_config("tiny", ["train.lr_steps=[0.6, 0.8]"])
    # milestones round(0.6*100)=60, round(0.8*100)=80
    assert lr_milestones(cfg.train, 100) == [60, 80]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_scheduler(opt, cfg.train, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[59] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.001) and lrs[80] == pytest.approx(1e-4)
    assert total_iterations(cfg.train, 7) == cfg.train.epochs * 7
    assert total_iterations(load_config("tiny", ["train.max_iterations=5"]).train, 7) == 5
    with pytest.raises(ValueError, match="lr_steps"):
        lr_milestones(load_config("tiny", ["train.lr_steps=[1.5]"]).train, 10)


def test_epochs_zero_is_an_iteration_budget():
    # epochs 0 = unbounded: the run is exactly max_iterations, whatever the epoch length
    tc = load_config("tiny", ["train.epochs=0", "train.max_iterations=250", "train.lr_steps=[0.6, 0.8]"]).train
    assert [total_iterations(tc, n) for n in (1, 7, 1000)] == [250, 250, 250]
    assert lr_milestones(tc, total_iterations(tc, 7)) == [150, 200]
    # epochs > 0: epochs x epoch length, capped by max_iterations (a cap, not a budget)
    capped = load_config("tiny", ["train.epochs=3", "train.max_iterations=250"]).train
    assert total_iterations(capped, 7) == 21 and total_iterations(capped, 1000) == 250
    with pytest.raises(ValueError, match="max_iterations > 0"):
        total_iterations(load_config("tiny", ["train.epochs=0"]).train, 7)
    with pytest.raises(ValueError, match=">= 0"):
        total_iterations(load_config("tiny", ["train.epochs=-1"]).train, 7)


def test_select_device_never_requires_cuda():
    assert select_device(False).type == "cpu"
    assert select_device(True).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    cfg = load_config("tiny", SMALL + ["loss.id_mode=none", "train.lr=0.005"])
    model, criterion, optimizer = _setup(cfg)
    batch = _batch(cfg, views=1)
    losses = [train_step(model, criterion, batch, optimizer, device="cpu", iteration=i)["total"] for i in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_nan_loss_raises_naming_iteration_and_terms():
    cfg = load_config("tiny", SMALL + ["loss.id_mode=none"])
    model, criterion, optimizer = _setup(cfg)
    with torch.no_grad():
        model.heads["heatmap"][-1].bias.fill_(float("nan"))  # the heatmap head's final 1x1 conv
    before = [p.detach().clone() for p in model.body.parameters()]
    with pytest.raises(FloatingPointError, match=r"iteration 7: loss is nan.*det/heatmap"):
        train_step(model, criterion, _batch(cfg, 1), optimizer, device="cpu", iteration=7)
    assert all(torch.equal(a, b) for a, b in zip(before, model.body.parameters()))  # nothing was stepped


def test_checkpoint_resume_continues_exactly(tmp_path):
    cfg = load_config("tiny", SMALL)  # contrastive: the criterion holds a queue, a key encoder fills it
    batch = _batch(cfg, views=2)
    model, criterion, optimizer = _setup(cfg)
    keys = _key_encoder(cfg, model)
    sched = build_scheduler(optimizer, cfg.train, 10)
    for i in range(2):
        train_step(model, criterion, batch, optimizer, device="cpu", iteration=i, key_encoder=keys)
        sched.step()
    save_checkpoint(tmp_path, model=model, config=cfg, criterion=criterion, optimizer=optimizer,
                    scheduler=sched, key_encoder=keys, epoch=1, iteration=2)
    continued = train_step(model, criterion, batch, optimizer, device="cpu", iteration=2, key_encoder=keys)
    queue_after = criterion.contrastive.queue.clone()

    model2, criterion2, optimizer2 = _setup(cfg, seed=123)
    keys2 = _key_encoder(cfg, model2)
    sched2 = build_scheduler(optimizer2, cfg.train, 10)
    epoch, iteration = restore_training_state(load_checkpoint(tmp_path), model=model2, criterion=criterion2,
                                              optimizer=optimizer2, scheduler=sched2, key_encoder=keys2)
    assert (epoch, iteration) == (1, 2)
    # 2 images x 2 people enqueued per step -> 4 persons per step, 8 after two steps
    assert int(criterion2.contrastive.queue_fill) == 8
    resumed = train_step(model2, criterion2, batch, optimizer2, device="cpu", iteration=2, key_encoder=keys2)
    assert resumed["id"] > 0  # the restored queue gives negatives at once
    assert resumed["total"] == pytest.approx(continued["total"], rel=1e-5)
    # The key encoder was restored too: the entries it pushed match the uninterrupted run's.
    assert torch.allclose(criterion2.contrastive.queue, queue_after, atol=1e-5)


def test_momentum_encoder_is_an_ema_and_fills_the_queue():
    cfg = load_config("tiny", SMALL + ["loss.key_momentum=0.9"])
    model, criterion, optimizer = _setup(cfg)
    keys = _key_encoder(cfg, model)
    before = [p.detach().clone() for p in keys.encoder.parameters()]
    assert all(not p.requires_grad for p in keys.encoder.parameters())
    batch = _batch(cfg, views=2)
    with torch.no_grad():
        key_map = keys(batch["image"]).clone()  # what the key encoder says before the step
    train_step(model, criterion, batch, optimizer, device="cpu", key_encoder=keys)
    # theta_k <- 0.9 theta_k + 0.1 theta_q, with theta_q the student AFTER its step
    for old, new, q in zip(before, keys.encoder.parameters(), model.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * q.detach(), atol=1e-6)
    # The queue holds the key encoder's person means (of the pre-step key map), not the student's.
    from kdtrack.losses.contrastive import gather_points

    pts, pkeys = gather_points(key_map, batch["region_index"], batch["region_mask"], batch["ids"])
    emb, uniq = criterion.contrastive.person_embeddings(pts, pkeys)
    assert torch.allclose(criterion.contrastive.queue[: len(uniq)], emb, atol=1e-5)
    # Without an encoder the step refuses (a stale self-filled queue collapses), unless m = 0.
    with pytest.raises(ValueError, match="key_encoder"):
        train_step(model, criterion, batch, optimizer, device="cpu")
    cfg0 = load_config("tiny", SMALL + ["loss.key_momentum=0"])
    m0, c0, o0 = _setup(cfg0)
    assert np.isfinite(train_step(m0, c0, batch, o0, device="cpu")["total"])
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        MomentumEncoder(model, 1.0)


def test_teacher_targets_follow_the_slots():
    cfg = load_config("tiny", SMALL + ["loss.id_mode=kd"])
    teacher = freeze_teacher(build_teacher(cfg.teacher))
    orig = torch.rand(1, 3, 64, 128)
    boxes = torch.tensor([[[10.0, 10, 40, 60], [70, 5, 110, 60], [0, 0, 0, 0]]])
    batch = {"orig_image": orig, "teacher_boxes_xyxy": boxes, "mask": torch.tensor([[True, True, False]])}
    crop = (cfg.teacher.crop_height, cfg.teacher.crop_width)
    out = attach_teacher_targets(teacher, batch, crop)["teacher"]
    # slot 1 must hold the teacher feature of box 1 alone; the empty slot stays zero
    (ref,) = teacher_embeddings(teacher, orig, [boxes[0, 1:2]], out_size=crop)
    torch.testing.assert_close(out[0, 1], ref[0], rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(out[0, 2]) == 0


def test_run_epoch_reports_throughput_and_data_wait():
    """perf/* terms: images counted per batch, and a slow loader shows up as data wait, not as step time."""
    import time as _time

    from jobs.train import perf_suffix
    from kdtrack.engine import run_epoch

    def slow_loader():
        for _ in range(4):
            _time.sleep(0.05)  # the input pipeline is the bottleneck
            yield {"image": torch.zeros(6, 3, 4, 4)}

    reports = []
    iteration, _ = run_epoch(lambda batch, it: {"total": 1.0}, slow_loader(), 0, log_every=2,
                             log_fn=lambda it, terms: reports.append((it, terms)))
    assert iteration == 4 and [it for it, _ in reports] == [1, 2, 4]
    terms = reports[-1][1]
    assert terms["perf/data_wait"] > 0.8  # two 50 ms waits against microsecond steps
    assert 6 * 2 / 0.2 < terms["perf/images_per_s"] < 6 * 2 / 0.09  # 12 images in about 0.1 s
    assert terms["perf/seconds_per_iteration"] >= 0.045
    line = perf_suffix(2, 10, {"perf/images_per_s": 12.0, "perf/data_wait": 0.25, "perf/seconds_per_iteration": 450.0})
    assert line == " | 12.0 img/s, data wait 25%, ETA 1:00:00"


def test_run_epoch_stops_at_the_budget_without_fetching_another_batch():
    """At ``max_iterations`` the loop ends before asking the loader for a batch it would not train on (a
    wasted decode, or a wait on a stream that has nothing more to give), also when an epoch starts with the
    budget already spent (a resume at the last iteration)."""
    from kdtrack.engine import run_epoch

    fetched = []

    def loader():
        for i in range(10):
            fetched.append(i)
            yield {"image": torch.zeros(2, 3, 4, 4)}

    steps = []
    iteration, _ = run_epoch(lambda batch, it: steps.append(it) or {"total": 1.0}, loader(), 0,
                             start_iteration=5, max_iterations=8)
    assert iteration == 8 and steps == [5, 6, 7] and fetched == [0, 1, 2]
    fetched.clear()
    assert run_epoch(lambda batch, it: {"total": 1.0}, loader(), 1, start_iteration=8, max_iterations=8)[0] == 8
    assert fetched == []  # a budget already spent fetches nothing


def test_train_in_process_refuses_a_dataset_that_fills_no_batch():
    """Fewer samples than one batch is an error naming both, not an endless loop of empty epochs."""
    from kdtrack.engine import train_in_process

    class ThreeSamples:
        def __len__(self):
            return 3

        def set_epoch(self, epoch):
            pass

    with pytest.raises(ValueError, match="3 samples do not fill one batch of 4"):
        train_in_process(None, None, None, ThreeSamples(), 10, batch_size=4, seed=0)


def test_forward_by_views_keeps_each_views_batch_statistics_apart():
    """Each view's rows come out as a forward of that view alone would give them (train-mode BatchNorm), unlike
    one forward over the whole batch; dict and tensor outputs are put back in the batch's order."""
    from kdtrack.engine import forward_by_views

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).train()
    images = torch.randn(6, 3, 8, 8)
    images[3:] += 2.0  # view 1's canvases: other statistics
    split = forward_by_views(net, images, 2)
    assert torch.allclose(split[:3], net(images[:3]), atol=1e-6)
    assert torch.allclose(split[3:], net(images[3:]), atol=1e-6)
    assert not torch.allclose(split, net(images), atol=1e-3)
    assert torch.equal(forward_by_views(net.eval(), images, 1), net(images))
    as_dict = forward_by_views(lambda x, scale: {"y": x * scale}, images, 2, scale=2.0)
    assert torch.equal(as_dict["y"], images * 2.0)
    with pytest.raises(ValueError, match="do not split"):
        forward_by_views(net, images[:5], 2)


@pytest.mark.parametrize("readout", ["cell", "centre_halves"])
def test_key_positives_take_the_key_encoders_map_through_the_criterion(readout):
    """``loss.key_positives``: the positives and in-batch negatives come from ``extra["key_embedding"]``. The key
    encoder starts as a copy of the student, so at step 1 the loss's value is the student-only loss's; a key map
    that differs changes it, and it changes nothing without the option."""
    on = load_config("tiny", [*SMALL, f"model.id_readout={readout}", "loss.key_positives=true"])
    off = load_config("tiny", [*SMALL, f"model.id_readout={readout}"])
    model, criterion_on, _ = _setup(on)
    criterion_off = Criterion.from_config(off)
    keys = _key_encoder(on, model)
    batch = _batch(on)
    outputs = model(batch["image"])
    same = keys(batch["image"])
    moved = same + 0.3 * torch.randn_like(same)

    def loss(criterion, key_map):
        return criterion(outputs, batch, key_embedding=key_map, update_queue=False)["id/contrastive"].item()

    assert torch.allclose(same, outputs["embedding"], atol=1e-6)
    assert loss(criterion_on, same) == pytest.approx(loss(criterion_off, same), rel=1e-5)
    assert loss(criterion_on, moved) != pytest.approx(loss(criterion_on, same), rel=1e-3)
    assert loss(criterion_off, moved) == pytest.approx(loss(criterion_off, same), rel=1e-6)
    with pytest.raises(ValueError, match="key_positives"):
        criterion_on(outputs, batch, update_queue=False)


def test_key_positives_need_a_key_encoder():
    from kdtrack.config_checks import training_violations

    cfg = load_config("tiny", ["loss.key_positives=true", "loss.key_momentum=0"])
    assert any(f == "loss.key_positives" for f, _ in training_violations(cfg))
    assert not any(f == "loss.key_positives" for f, _ in training_violations(load_config("tiny", ["loss.key_positives=true"])))
    ignored = load_config("sup_cpu", ["loss.key_positives=true", "loss.key_momentum=0"])  # no contrastive term
    assert not any(f == "loss.key_positives" for f, _ in training_violations(ignored))
