"""The Re-ID teacher's train step (BoT losses), its NaN guard and the warm-up schedule (no Ray)."""

from __future__ import annotations

import pytest
import torch

from kdtrack.config import TeacherConfig, TrainConfig
from kdtrack.engine import build_warmup_scheduler, teacher_train_one_epoch, teacher_train_step
from kdtrack.models import build_teacher

TINY = TeacherConfig(backbone="tiny", width=8, feature_dim=32, crop_height=32, crop_width=16)


def _pk_batch(p: int = 4, k: int = 2) -> dict:
    """P identities x K crops: each identity a flat colour plus noise, so identities are separable."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(p, 3, 1, 1, generator=g)
    images = colours.repeat_interleave(k, 0) + 0.1 * torch.rand(p * k, 3, 32, 16, generator=g)
    return {"image": images.clamp(0, 1), "label": torch.arange(p).repeat_interleave(k)}


def test_teacher_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    teacher = build_teacher(TINY, num_classes=4)
    optimizer = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad], lr=1e-3)
    batch = _pk_batch()
    first = teacher_train_step(teacher, batch, optimizer, label_smoothing=0.1, triplet_margin=0.3, device="cpu")
    assert set(first) == {"total", "id", "triplet", "accuracy", "lr"}
    assert first["total"] == pytest.approx(first["id"] + first["triplet"], rel=1e-5)
    # label-smoothed CE with (near-)uniform initial logits (classifier weights ~ N(0, 0.001^2)) is ~ log 4
    assert first["id"] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=0.05)
    assert teacher.training
    for _ in range(30):
        last = teacher_train_step(teacher, batch, optimizer, label_smoothing=0.1, triplet_margin=0.3, device="cpu")
    assert last["total"] < 0.6 * first["total"]
    assert last["accuracy"] == 1.0
    assert float(teacher.bnneck.bias.abs().max()) == 0.0  # BNNeck bias stays frozen at 0


def test_non_finite_loss_stops_before_touching_the_weights():
    teacher = build_teacher(TINY, num_classes=4)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.1)
    batch = _pk_batch()
    batch["image"][0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in teacher.state_dict().items() if v.is_floating_point()}
    with pytest.raises(FloatingPointError, match="iteration 7: loss is nan"):
        teacher_train_step(teacher, batch, optimizer, label_smoothing=0.1, triplet_margin=0.3, device="cpu",
                           iteration=7)
    # BatchNorm running statistics are updated by the forward pass; parameters are untouched
    for name, p in teacher.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_warmup_then_steps():
    # 100 iterations, warm-up 10 from 0.1 x lr, lr / 10 at 40 % and 70 %: BoT's 10 / 40 / 70 of 100 epochs
    tc = TrainConfig(lr=1.0, lr_steps=(0.4, 0.7), lr_gamma=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    sched = build_warmup_scheduler(opt, tc, 100, warmup_iterations=10, warmup_factor=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 5 / 10)  # linear ramp
    assert lrs[10] == lrs[39] == pytest.approx(1.0)
    assert lrs[40] == lrs[69] == pytest.approx(0.1)
    assert lrs[70] == lrs[99] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="warm-up factor"):
        build_warmup_scheduler(opt, tc, 100, warmup_iterations=10, warmup_factor=0.0)


def test_one_epoch_stops_at_max_iterations_and_logs():
    teacher = build_teacher(TINY, num_classes=4)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    logged = []
    iteration, terms = teacher_train_one_epoch(
        teacher, optimizer, [_pk_batch()] * 5, "cpu", 0, label_smoothing=0.1, triplet_margin=0.3,
        start_iteration=2, max_iterations=5, log_every=2, log_fn=lambda it, t: logged.append(it))
    assert iteration == 5 and logged == [3, 4, 5] and terms["total"] > 0
