"""Focal + L1 detection loss against hand-computed values; finite with zero boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdtrack.losses.detection import DetectionLoss, focal_loss, reg_l1_loss
from kdtrack.data.targets import collate_targets, encode_targets

LOG2 = math.log(2.0)


def test_focal_loss_hand_value():
    # logits 0 -> p = 0.5 everywhere; targets [1, 0.5, 0]:
    # positive:            (1-0.5)^2 * log 2                  = 0.25 * 0.693147   = 0.173287
    # negative gt 0.5:     (1-0.5)^4 * 0.5^2 * log 2          = 0.0625*0.25*0.693 = 0.010830
    # negative gt 0:       1 * 0.25 * log 2                   = 0.173287
    # sum / num_pos (1)  = 0.357404
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    expected = 0.25 * LOG2 + 0.0625 * 0.25 * LOG2 + 0.25 * LOG2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Ignoring the last cell removes its 0.173287.
    ignore = torch.tensor([[[[0.0, 0.0, 1.0]]]])
    assert focal_loss(logits, target, ignore).item() == pytest.approx(expected - 0.25 * LOG2, rel=1e-6)
    # Two positives halve the normalised sum of the same per-cell terms: (2*0.173287 + 0.173287) / 2
    target2 = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    assert focal_loss(logits, target2).item() == pytest.approx(3 * 0.25 * LOG2 / 2, rel=1e-6)


def test_focal_loss_no_positives_and_extreme_logits():
    # No positives: the negative sum is divided by 1 (CenterNet). logit -2: p = 0.119203,
    # term = p^2 * log(1 + e^-2) = 0.0142094 * 0.126928 = 0.00180357 per cell, 4 cells.
    logits = torch.full((1, 1, 2, 2), -2.0)
    p = 1 / (1 + math.exp(2.0))
    expected = 4 * p**2 * math.log(1 + math.exp(-2.0))
    assert focal_loss(logits, torch.zeros(1, 1, 2, 2)).item() == pytest.approx(expected, rel=1e-5)
    big = torch.tensor([[[[100.0, -100.0]]]], requires_grad=True)
    loss = focal_loss(big, torch.tensor([[[[1.0, 0.0]]]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


def test_reg_l1_hand_value():
    # 2x2 map, S = 2. Object at index 3 (cell (1,1)) with target (1, 2); prediction there (2, 0):
    # |2-1| + |0-2| = 3, mean over S = 1.5; one object -> 1.5. Empty slot ignored.
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, :, 1, 1] = torch.tensor([2.0, 0.0])
    index = torch.tensor([[3, 0]])
    mask = torch.tensor([[True, False]])
    target = torch.tensor([[[1.0, 2.0], [50.0, 50.0]]])
    assert reg_l1_loss(pred, index, mask, target).item() == pytest.approx(1.5)
    assert reg_l1_loss(pred, index, torch.zeros_like(mask), target).item() == 0.0


def _batch(boxes_list, hw=(64, 96)):
    return collate_targets([encode_targets(b, None, None, hw, max_objects=6) for b in boxes_list])


def test_detection_loss_weights_zero_boxes_and_gradients():
    torch.manual_seed(0)
    h, w = 16, 24
    outputs = {
        "heatmap": torch.randn(2, 1, h, w, requires_grad=True),
        "size": torch.randn(2, 4, h, w, requires_grad=True),
        "offset": torch.randn(2, 2, h, w, requires_grad=True),
    }
    batch = _batch([np.array([[8, 8, 40, 60], [50, 4, 80, 50]]), np.zeros((0, 4))])
    loss = DetectionLoss(size_weight=0.1, size_loss_scale=0.25)
    terms = loss(outputs, batch)
    expected = terms["det/heatmap"] + 0.1 * terms["det/size"] + terms["det/offset"]
    assert terms["det"].item() == pytest.approx(expected.item(), rel=1e-6)
    # size_loss_scale 0.25 = the L1 of the size in output pixels (input px / 4).
    plain = reg_l1_loss(outputs["size"] / 4, batch["index"], batch["mask"], batch["size"] / 4)
    assert terms["det/size"].item() == pytest.approx(plain.item(), rel=1e-6)
    terms["det"].backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in outputs.values())
    assert outputs["size"].grad.abs().sum() > 0

    empty = _batch([np.zeros((0, 4)), np.zeros((0, 4))])
    outs = {k: v.detach().clone().requires_grad_(True) for k, v in outputs.items()}
    t = loss(outs, empty)
    assert all(torch.isfinite(v) for v in t.values())
    assert t["det/size"].item() == 0.0 and t["det/offset"].item() == 0.0
    t["det"].backward()
    assert torch.isfinite(outs["heatmap"].grad).all()
