"""Criterion assembly per id_mode and checkpointing of every learnable / buffer piece."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdtrack.config import Config, LossConfig
from kdtrack.losses import Criterion
from kdtrack.data.targets import collate_targets, encode_targets

H, W, DIM = 64, 96, 6


def _batch(with_teacher: bool = False):
    boxes = [np.array([[8, 8, 40, 60], [50, 4, 90, 56]], np.float32), np.zeros((0, 4), np.float32)]
    ids = [np.array([100, 101]), np.zeros((0,), np.int64)]
    teacher = [np.ones((2, DIM), np.float32), np.zeros((0, DIM), np.float32)] if with_teacher else [None, None]
    return collate_targets(
        [encode_targets(b, i, None, (H, W), max_objects=4, teacher_embeddings=t) for b, i, t in zip(boxes, ids, teacher)]
    )


def _outputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "heatmap": torch.randn(2, 1, H // 4, W // 4, generator=g).requires_grad_(True),
        "size": torch.randn(2, 4, H // 4, W // 4, generator=g).requires_grad_(True),
        "offset": torch.randn(2, 2, H // 4, W // 4, generator=g).requires_grad_(True),
        "embedding": F.normalize(torch.randn(2, DIM, H // 4, W // 4, generator=g), dim=1).requires_grad_(True),
    }


def test_none_mode_is_detection_only():
    crit = Criterion(LossConfig(id_mode="none"), embedding_dim=DIM)
    terms = crit(_outputs(), _batch())
    assert terms["total"].item() == terms["det"].item()
    assert len(list(crit.parameters())) == 0 and len(list(crit.buffers())) == 0


def test_kd_mode_uncertainty_total():
    crit = Criterion(LossConfig(id_mode="kd", uncertainty=True), embedding_dim=DIM)
    terms = crit(_outputs(), _batch(with_teacher=True))
    s_det, s_id = -1.85, -1.05
    expected = 0.5 * (terms["det"] * np.exp(-s_det) + terms["id"] * np.exp(-s_id) + s_det + s_id)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["total"].backward()
    assert crit.uncertainty.s_det.grad is not None
    plain = Criterion(LossConfig(id_mode="kd", uncertainty=False), embedding_dim=DIM)(_outputs(), _batch(True))
    assert plain["total"].item() == pytest.approx((plain["det"] + plain["id"]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="teacher embeddings"):
        crit(_outputs(), _batch())


def test_contrastive_mode_total_is_det_plus_lambda_lid():
    crit = Criterion(LossConfig(id_mode="contrastive", queue_size=32, id_weight=0.2), embedding_dim=DIM)
    crit(_outputs(0), _batch())  # fills the queue with persons 100, 101
    crit.contrastive.queue_keys[:2] = torch.tensor([7, 8])  # pretend they were other people
    terms = crit(_outputs(1), _batch())
    assert terms["id/contrastive"].item() > 0
    assert terms["id"].item() == pytest.approx(0.2 * terms["id/contrastive"].item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx((terms["det"] + terms["id"]).item(), rel=1e-6)
    assert crit.uncertainty is None
    fill = crit.contrastive.queue_fill.item()
    crit(_outputs(2), _batch(), update_queue=False)
    assert crit.contrastive.queue_fill.item() == fill


def test_state_dict_round_trip_restores_everything(tmp_path):
    cfg = LossConfig(id_mode="kd", eta=0.5, num_id_classes=5, uncertainty=True)
    crit = Criterion(cfg, embedding_dim=DIM)
    with torch.no_grad():
        crit.uncertainty.s_det.fill_(0.3)
        crit.uncertainty.s_id.fill_(-0.7)
    torch.save(crit.state_dict(), tmp_path / "crit.pt")
    fresh = Criterion(cfg, embedding_dim=DIM)
    assert fresh.uncertainty.s_det.item() == pytest.approx(-1.85)
    fresh.load_state_dict(torch.load(tmp_path / "crit.pt", weights_only=True))
    assert fresh.uncertainty.s_det.item() == pytest.approx(0.3) and fresh.uncertainty.s_id.item() == pytest.approx(-0.7)
    assert torch.equal(fresh.kd.classifier.weight, crit.kd.classifier.weight)

    ccfg = LossConfig(id_mode="contrastive", queue_size=16)
    c = Criterion(ccfg, embedding_dim=DIM)
    c(_outputs(), _batch())
    torch.save(c.state_dict(), tmp_path / "c.pt")
    c2 = Criterion(ccfg, embedding_dim=DIM)
    c2.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    for name in ("queue", "queue_keys", "queue_ptr", "queue_fill"):
        assert torch.equal(getattr(c2.contrastive, name), getattr(c.contrastive, name)), name
    assert c2.contrastive.queue_fill.item() == 2


def test_from_config_uses_model_embedding_dim():
    cfg = Config()
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, queue_size=8))
    crit = Criterion.from_config(cfg)
    assert crit.contrastive.queue.shape == (8, cfg.model.embedding_dim)


def _two_view_batch():
    """One sample, two views (view 0 first): the same two people, moved in view 1."""
    view0 = np.array([[8, 8, 40, 60], [50, 4, 90, 56]], np.float32)
    view1 = view0 + np.array([4, 2, 4, 2], np.float32)
    ids = np.array([100, 101])
    return collate_targets([encode_targets(b, ids, None, (H, W), max_objects=4) for b in (view0, view1)])


def test_contrastive_detection_views_first_scores_view0_alone():
    from kdtrack.losses.detection import DetectionLoss

    targets = _two_view_batch()
    cfg = LossConfig(id_mode="contrastive", queue_size=32, detection_views="first")
    det_only = DetectionLoss(cfg.focal_alpha, cfg.focal_beta, cfg.heatmap_weight, cfg.size_weight,
                             cfg.offset_weight, cfg.size_loss_scale)
    outputs = _outputs(3)
    view0 = det_only({k: v[:1] for k, v in outputs.items()}, {k: v[:1] for k, v in targets.items()})
    both = det_only(outputs, targets)
    terms = Criterion(cfg, embedding_dim=DIM)(outputs, targets)
    assert terms["det"].item() == pytest.approx(view0["det"].item(), rel=1e-6)
    assert abs(both["det"].item() - view0["det"].item()) > 1e-3  # view 1 really changes the detection terms
    assert Criterion(dataclasses.replace(cfg, detection_views="all"), embedding_dim=DIM)(
        outputs, targets)["det"].item() == pytest.approx(both["det"].item(), rel=1e-6)
    terms["total"].backward()
    assert outputs["heatmap"].grad[1].abs().sum().item() == 0.0  # no detection gradient from view 1
    assert outputs["heatmap"].grad[0].abs().sum().item() > 0.0
    assert outputs["embedding"].grad[1].abs().sum().item() > 0.0  # the identity loss still uses both views


def _two_view_batch_with_teacher():
    """``_two_view_batch`` with a teacher feature per person (the same in both views, as the store gives)."""
    view0 = np.array([[8, 8, 40, 60], [50, 4, 90, 56]], np.float32)
    view1 = view0 + np.array([4, 2, 4, 2], np.float32)
    ids, teacher = np.array([100, 101]), np.stack([np.linspace(-1, 1, DIM), np.linspace(1, -2, DIM)]).astype(np.float32)
    return collate_targets([encode_targets(b, ids, None, (H, W), max_objects=4, teacher_embeddings=teacher)
                            for b in (view0, view1)])


@pytest.mark.parametrize("readout", ["cell", "centre_halves"])
def test_hybrid_total_is_kendall_over_detection_kd_and_contrastive(readout):
    """The hybrid's terms are the KD criterion's (read at the centre cell whatever the readout) and the
    contrastive criterion's (read by the readout) on the same outputs; the total weights the three as
    1/2 sum_t (L_t e^{-s_t} + s_t), from s_det -1.85, s_kd -1.05, s_contrastive -0.24."""
    targets, outputs = _two_view_batch_with_teacher(), _outputs(4)
    common = dict(queue_size=32, id_weight=0.2, uncertainty=True)
    hybrid = Criterion(LossConfig(id_mode="hybrid", **common), embedding_dim=DIM, id_readout=readout)
    kd = Criterion(LossConfig(id_mode="kd", **common), embedding_dim=DIM)
    contrastive = Criterion(LossConfig(id_mode="contrastive", **common), embedding_dim=DIM, id_readout=readout)
    terms, kd_terms, c_terms = hybrid(outputs, targets), kd(outputs, targets), contrastive(outputs, targets)
    assert terms["det"].item() == pytest.approx(kd_terms["det"].item(), rel=1e-6)
    assert terms["id/kd"].item() == pytest.approx(kd_terms["id"].item(), rel=1e-6) and terms["id/kd"].item() > 0
    assert terms["id/contrastive"].item() == pytest.approx(c_terms["id/contrastive"].item(), rel=1e-6)
    assert terms["id/contrastive"].item() > 0
    assert terms["id"].item() == pytest.approx((terms["id/kd"] + 0.2 * terms["id/contrastive"]).item(), rel=1e-6)
    det, l_kd, l_c = terms["det"].item(), terms["id/kd"].item(), terms["id/contrastive"].item()
    expected = 0.5 * (det * np.exp(1.85) + l_kd * np.exp(1.05) + l_c * np.exp(0.24) - 1.85 - 1.05 - 0.24)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["s_contrastive"].item() == pytest.approx(-0.24)
    terms["total"].backward()
    assert all(p.grad is not None for p in hybrid.uncertainty.parameters())
    assert hybrid.contrastive.queue_fill.item() == 2  # the two people entered the queue once


def test_hybrid_without_uncertainty_adds_kd_and_lambda_contrastive():
    targets, outputs = _two_view_batch_with_teacher(), _outputs(5)
    terms = Criterion(LossConfig(id_mode="hybrid", queue_size=32, id_weight=0.5, uncertainty=False),
                      embedding_dim=DIM)(outputs, targets)
    expected = terms["det"] + terms["id/kd"] + 0.5 * terms["id/contrastive"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "s_contrastive" not in terms


def test_hybrid_refuses_hard_labels_and_a_missing_teacher():
    with pytest.raises(ValueError, match="soft targets only"):
        Criterion(LossConfig(id_mode="hybrid", eta=0.5, num_id_classes=4), embedding_dim=DIM)
    with pytest.raises(ValueError, match="'hybrid' needs teacher embeddings"):
        Criterion(LossConfig(id_mode="hybrid", queue_size=8), embedding_dim=DIM)(_outputs(), _two_view_batch())


def test_only_the_hybrid_has_a_third_log_variance(tmp_path):
    """Two-term checkpoints (KD, supervised) keep their keys; the hybrid's s_contrastive round-trips."""
    assert set(Criterion(LossConfig(id_mode="kd"), embedding_dim=DIM).state_dict()) == {
        "uncertainty.s_det", "uncertainty.s_id"}
    cfg = LossConfig(id_mode="hybrid", queue_size=8)
    crit = Criterion(cfg, embedding_dim=DIM)
    with torch.no_grad():
        crit.uncertainty.s_contrastive.fill_(0.4)
    torch.save(crit.state_dict(), tmp_path / "h.pt")
    fresh = Criterion(cfg, embedding_dim=DIM)
    fresh.load_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    assert fresh.uncertainty.s_contrastive.item() == pytest.approx(0.4)
    assert {"contrastive.queue", "uncertainty.s_contrastive"} <= set(fresh.state_dict())
