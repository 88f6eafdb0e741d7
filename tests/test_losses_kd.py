"""KD soft/hard identity loss and the Kendall uncertainty weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdtrack.losses.kd import KDLoss
from kdtrack.losses.uncertainty import UncertaintyWeighting


def _setup():
    # 1 image, 2x2 map, k = 2; objects at cells 0 and 3 (third slot empty).
    emb = torch.zeros(1, 2, 2, 2)
    emb[0, :, 0, 0] = torch.tensor([0.5, -2.0])
    emb[0, :, 1, 1] = torch.tensor([0.0, 1.5])
    index = torch.tensor([[0, 3, 0]])
    mask = torch.tensor([[True, True, False]])
    teacher = torch.zeros(1, 3, 2)
    teacher[0, 2] = 100.0  # empty slot: must not count
    return emb.requires_grad_(True), index, mask, teacher


def test_soft_loss_hand_and_torch_reference():
    emb, index, mask, teacher = _setup()
    # d = [0.5, -2.0, 0.0, 1.5]: 0.5*0.25 = 0.125, 2-0.5 = 1.5, 0, 1.5-0.5 = 1.0 -> mean 2.625/4 = 0.65625
    terms = KDLoss(2, reduction="mean")(emb, index, mask, teacher)
    assert terms["id/soft"].item() == pytest.approx(0.65625)
    ref = F.smooth_l1_loss(torch.tensor([[0.5, -2.0], [0.0, 1.5]]), torch.zeros(2, 2), beta=1.0)
    assert terms["id"].item() == pytest.approx(ref.item())
    terms["id"].backward()
    # d/d(emb) of mean smooth-L1: clip(d, -1, 1) / 4 -> [0.125, -0.25] at cell 0
    assert torch.allclose(emb.grad[0, :, 0, 0], torch.tensor([0.125, -0.25]))


def test_eta_mix_with_hard_labels():
    torch.manual_seed(0)
    emb, index, mask, teacher = _setup()
    kd = KDLoss(2, eta=0.5, num_id_classes=3, reduction="mean")
    ids = torch.tensor([[2, -1, 0]])  # second object unlabeled, third slot empty
    terms = kd(emb, index, mask, teacher, ids)
    logits = torch.tensor([[0.5, -2.0]]) @ kd.classifier.weight.detach().T
    hard = F.cross_entropy(logits, torch.tensor([2]))
    assert terms["id/hard"].item() == pytest.approx(hard.item(), rel=1e-6)
    assert terms["id"].item() == pytest.approx(0.5 * 0.65625 + 0.5 * hard.item(), rel=1e-6)
    assert kd.classifier.bias is None
    terms["id"].backward()
    assert kd.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="num_id_classes"):
        KDLoss(2, eta=0.5, num_id_classes=0)
    with pytest.raises(ValueError, match=">= loss.num_id_classes"):
        kd(emb, index, mask, teacher, torch.tensor([[5, 0, 0]]))
    assert KDLoss(2, eta=1.0).classifier is None


def test_kd_no_objects_and_dim_mismatch():
    emb = torch.randn(1, 2, 2, 2, requires_grad=True)
    terms = KDLoss(2)(emb, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3, 2))
    assert terms["id"].item() == 0.0
    terms["id"].backward()
    with pytest.raises(ValueError, match="teacher.feature_dim"):
        KDLoss(2)(emb, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, 5))


def test_uncertainty_weighting_hand_value():
    # 0.5 * (2 e^{1.85} + 3 e^{1.05} - 1.85 - 1.05) = 0.5 * (12.71966 + 8.57301 - 2.9) = 9.196335
    u = UncertaintyWeighting(-1.85, -1.05)
    out = u(torch.tensor(2.0), torch.tensor(3.0))
    expected = 0.5 * (2 * math.exp(1.85) + 3 * math.exp(1.05) - 2.9)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    out.backward()
    # d/ds_det = 0.5 * (1 - L_det e^{-s_det}) = 0.5 * (1 - 12.71966) = -5.85983
    assert u.s_det.grad.item() == pytest.approx(0.5 * (1 - 2 * math.exp(1.85)), rel=1e-6)
    assert {n for n, _ in u.named_parameters()} == {"s_det", "s_id"}
