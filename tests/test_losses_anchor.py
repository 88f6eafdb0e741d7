"""The detection anchor (``loss.detection_anchor_weight``, kdtrack.losses.anchor) against hand-computed values,
torch's Bernoulli KL, and what it does to a training step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, kl_divergence

from kdtrack.config import ConfigError, load_config
from kdtrack.config_checks import training_violations
from kdtrack.engine import build_optimizer, detection_anchor, freeze_parts, train_step, trainable_parameters
from kdtrack.losses import Criterion
from kdtrack.losses.anchor import bernoulli_kl_with_logits, detection_anchor_loss
from kdtrack.models import build_student
from tests.test_engine import SMALL, _batch


def _outputs(heatmap, size, offset):
    """(1, C, 1, 2) maps from per-cell lists: ``heatmap`` [c0, c1], ``size`` / ``offset`` [[c0 channels], [c1]]."""
    def maps(cells):
        return torch.tensor(cells, dtype=torch.float32).T.reshape(1, -1, 1, 2)
    return {"heatmap": torch.tensor(heatmap, dtype=torch.float32).reshape(1, 1, 1, 2), "size": maps(size),
            "offset": maps(offset)}


def test_anchor_loss_matches_the_hand_computed_value():
    # anchor heatmap logits [0, ln 3]: q = [0.5, 0.75], N = 1.25; the student's logits 0 (p = 0.5)
    anchor = _outputs([0.0, math.log(3.0)], [[1, 1], [1, 1]], [[0.5, 0.5], [0.3, 0.3]])
    student = _outputs([0.0, 0.0], [[2, 4], [1, 1]], [[0.0, 0.0], [0.1, 0.1]])
    terms = detection_anchor_loss(student, anchor, size_loss_scale=0.25)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # cell 1; cell 0 agrees
    assert terms["anchor/heatmap"].item() == pytest.approx(kl / 1.25, rel=1e-6)
    assert terms["anchor/size"].item() == pytest.approx(0.5 * 2.0 * 0.25 / 1.25, rel=1e-6)  # |2-1|,|4-1| -> mean 2
    assert terms["anchor/offset"].item() == pytest.approx((0.5 * 0.5 + 0.75 * 0.2) / 1.25, rel=1e-6)
    expected = kl / 1.25 + 0.1 * 0.2 + 0.32
    assert terms["anchor"].item() == pytest.approx(expected, rel=1e-6)


def test_bernoulli_kl_matches_torch_distributions_and_is_zero_at_agreement():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(50, generator=g) * 4, torch.randn(50, generator=g) * 4
    reference = kl_divergence(Bernoulli(logits=t), Bernoulli(logits=s))
    torch.testing.assert_close(bernoulli_kl_with_logits(t, s), reference, rtol=1e-5, atol=1e-6)
    assert bernoulli_kl_with_logits(t, t).abs().max().item() < 1e-6
    # stable where a sigmoid saturates
    assert torch.isfinite(bernoulli_kl_with_logits(torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0]))).all()


def test_anchor_loss_is_zero_with_no_gradient_when_the_outputs_agree_and_refuses_other_shapes():
    anchor = _outputs([-1.0, 2.0], [[1, 2], [3, 4]], [[0.1, 0.2], [0.3, 0.4]])
    student = {k: v.clone().requires_grad_(True) for k, v in anchor.items()}
    terms = detection_anchor_loss(student, anchor)
    assert terms["anchor"].item() == pytest.approx(0.0, abs=1e-7)
    terms["anchor"].backward()
    assert all(v.grad.abs().max().item() < 1e-6 for v in student.values())
    with pytest.raises(ValueError, match="heatmap"):
        detection_anchor_loss({**student, "heatmap": torch.zeros(1, 1, 2, 2)}, anchor)


def test_criterion_adds_the_weighted_anchor_and_refuses_a_missing_one():
    cfg = load_config("tiny", SMALL + ["loss.id_mode=none", "loss.detection_anchor_weight=2.5"])
    torch.manual_seed(0)
    model = build_student(cfg.model)
    batch = _batch(cfg, views=1)
    outputs = model(batch["image"].float())
    criterion = Criterion.from_config(cfg)
    with pytest.raises(ValueError, match="detection_anchor_weight"):
        criterion(outputs, batch)
    shifted = {k: v.detach() + 0.5 for k, v in outputs.items() if k in ("heatmap", "size", "offset")}
    terms = criterion(outputs, batch, anchor=shifted)
    plain = Criterion.from_config(load_config("tiny", SMALL + ["loss.id_mode=none"]))(outputs, batch)
    assert terms["anchor"].item() > 0
    assert terms["total"].item() == pytest.approx(plain["total"].item() + 2.5 * terms["anchor"].item(), rel=1e-6)


def _settled_student(cfg, batch):
    """A student whose BatchNorm running statistics are those of ``batch``, as a trained network's are of its
    data (at init they are 0 and 1, and eval mode would read statistics no image has)."""
    torch.manual_seed(0)
    model = build_student(cfg.model).train()
    with torch.no_grad():
        for _ in range(60):
            model(batch["image"].float())
    return model


def test_the_anchor_is_the_starting_network_and_holds_the_detector_while_the_body_trains():
    """Stage 2's shape: detection heads frozen, the body trained for identity only. The anchor is a frozen copy of
    the starting weights, and with it the detection outputs stay nearer the start."""
    overrides = SMALL + ["loss.id_mode=supervised", "loss.uncertainty=false", "loss.num_id_classes=4",
                         "loss.heatmap_weight=0", "loss.size_weight=0", "loss.offset_weight=0", "train.lr=0.005"]
    batch = _batch(load_config("tiny", overrides), views=1)
    batch["ids"] = torch.where(batch["mask"] > 0, torch.arange(batch["ids"].shape[1]).expand_as(batch["ids"]), -1)
    x = batch["image"].float()
    drift, drift_eval = {}, {}
    for weight in (0.0, 5.0):
        cfg = load_config("tiny", overrides + [f"loss.detection_anchor_weight={weight}"])
        model = _settled_student(cfg, batch)
        with torch.no_grad():
            start = model.eval()(x)
        freeze_parts(model, ["detection"])
        reference = detection_anchor(model)  # the start in the student's training modes
        anchor = reference if weight else None
        criterion = Criterion.from_config(cfg)
        optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), cfg.train)
        first = train_step(model, criterion, batch, optimizer, device="cpu", iteration=0, anchor=anchor)
        if weight:  # the starting network in the student's modes: the same outputs on the first batch
            assert first["anchor"] == pytest.approx(0.0, abs=1e-5)
            assert anchor.training and not anchor.heads["heatmap"].training  # frozen parts stay in eval mode
            assert not any(p.requires_grad for p in anchor.parameters())
        for it in range(1, 12):
            train_step(model, criterion, batch, optimizer, device="cpu", iteration=it, anchor=anchor)
        with torch.no_grad():  # the heatmap as training sees it (batch statistics) and at inference
            moved, then = detection_anchor(model)(x)["heatmap"], reference(x)["heatmap"]
            now = model.eval()(x)["heatmap"]
        drift[weight] = (torch.sigmoid(moved) - torch.sigmoid(then)).abs().mean().item()
        drift_eval[weight] = (torch.sigmoid(now) - torch.sigmoid(start["heatmap"])).abs().mean().item()
        if weight:  # the anchor did not move with the student: weights and running statistics as at the start
            model_at_start = _settled_student(cfg, batch)
            for name, value in model_at_start.state_dict().items():
                if not name.endswith("num_batches_tracked"):  # a counter; momentum 0 leaves the statistics
                    torch.testing.assert_close(anchor.state_dict()[name], value, msg=name)
    assert np.isfinite([*drift.values(), *drift_eval.values()]).all()
    assert drift[5.0] < 0.5 * drift[0.0], drift
    assert drift_eval[5.0] < drift_eval[0.0], drift_eval


def test_the_anchor_needs_a_starting_network():
    cfg = load_config("tiny", ["loss.detection_anchor_weight=1"])
    assert any(f == "loss.detection_anchor_weight" and "--init-from" in m for f, m in training_violations(cfg))
    started = load_config("tiny", ["loss.detection_anchor_weight=1", "train.init_from=x.pt"])
    assert not any(f == "loss.detection_anchor_weight" for f, _ in training_violations(started))
    with pytest.raises(ConfigError, match="detection_anchor_weight"):
        load_config("tiny", ["loss.detection_anchor_weight=-1"])


def test_the_anchor_converted_for_synced_batchnorm_stays_frozen():
    """``train.sync_batchnorm`` converts the anchor as it does the student (same statistics on both forwards):
    the conversion keeps its running statistics fixed (momentum 0), its modes and no gradient."""
    cfg = load_config("tiny", SMALL)
    student = build_student(cfg.model)
    freeze_parts(student, ["detection"])
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(detection_anchor(student))
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert norms and all(m.momentum == 0.0 and m.training for m in norms)
    assert not any(p.requires_grad for p in converted.parameters())
