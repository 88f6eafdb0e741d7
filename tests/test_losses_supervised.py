"""The supervised identity loss (FairMOT's re-ID branch, METHOD.md section 4b) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdtrack.config import load_config
from kdtrack.losses import Criterion
from kdtrack.losses.supervised import SupervisedIdLoss, fairmot_embedding_scale


def test_embedding_scale_is_fairmots_sqrt2_ln_nid_minus_1():
    assert fairmot_embedding_scale(101) == pytest.approx(math.sqrt(2) * math.log(100))  # 6.5129
    assert fairmot_embedding_scale(101) == pytest.approx(6.51269, abs=1e-5)
    assert fairmot_embedding_scale(3) == pytest.approx(math.sqrt(2) * math.log(2))
    with pytest.raises(ValueError, match=">= 3 training identities"):
        fairmot_embedding_scale(2)  # ln(1) = 0 would scale every feature to nothing


def _one_image(vectors: list[list[float]], cells: list[int], ids: list[int], width: int = 4):
    """A (1, k, 2, width) map with ``vectors`` at flat ``cells``, and the slots pointing there (one padded)."""
    k = len(vectors[0])
    emb = torch.zeros(1, k, 2, width)
    for v, cell in zip(vectors, cells):
        emb[0, :, cell // width, cell % width] = torch.tensor(v)
    index = torch.tensor([cells + [0]])
    mask = torch.tensor([[1] * len(cells) + [0]])
    return emb, index, mask, torch.tensor([ids + [-1]])


def test_cross_entropy_matches_a_hand_computation_and_ignores_unlabelled_people():
    loss_fn = SupervisedIdLoss(embedding_dim=2, num_classes=4)
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])
    bias = np.array([0.1, 0.0, -0.1, 0.2])
    with torch.no_grad():
        loss_fn.classifier.weight.copy_(torch.tensor(weight))
        loss_fn.classifier.bias.copy_(torch.tensor(bias))
    # person 0: (3, 4) -> unit (0.6, 0.8), class 1; person 1: (0, -2) -> (0, -1), class 3; person 2 unlabelled
    emb, index, mask, ids = _one_image([[3.0, 4.0], [0.0, -2.0], [5.0, 5.0]], [1, 6, 7], [1, 3, -1])
    terms = loss_fn(emb, index, mask, ids)

    scale = math.sqrt(2) * math.log(3)  # nID = 4
    expected, hits = [], []
    for unit, label in (((0.6, 0.8), 1), ((0.0, -1.0), 3)):
        logits = weight @ (scale * np.array(unit)) + bias
        expected.append(-(logits[label] - np.log(np.exp(logits).sum())))
        hits.append(int(np.argmax(logits)) == label)
    assert terms["id"].item() == pytest.approx(np.mean(expected), rel=1e-5)
    assert float(terms["id/accuracy"]) == pytest.approx(np.mean(hits))


def test_a_batch_without_labels_gives_a_zero_that_back_propagates():
    loss_fn = SupervisedIdLoss(embedding_dim=3, num_classes=5)
    emb, index, mask, ids = _one_image([[1.0, 2.0, 3.0]], [2], [-1])
    emb.requires_grad_(True)
    terms = loss_fn(emb, index, mask, ids)
    assert float(terms["id"]) == 0.0
    terms["id"].backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) == 0.0


def test_an_id_beyond_the_classifier_is_an_error_naming_the_setting():
    loss_fn = SupervisedIdLoss(embedding_dim=2, num_classes=3)
    emb, index, mask, ids = _one_image([[1.0, 0.0]], [0], [3])
    with pytest.raises(ValueError, match="loss.num_id_classes = 3"):
        loss_fn(emb, index, mask, ids)


def test_criterion_weights_detection_and_identity_as_kendall():
    cfg = load_config("sup_cpu", ["loss.num_id_classes=6"])
    criterion = Criterion.from_config(cfg)
    assert criterion.supervised is not None and criterion.supervised.num_classes == 6
    torch.manual_seed(0)
    h, w, k = 8, 8, cfg.model.embedding_dim
    outputs = {"heatmap": torch.randn(1, 1, h, w), "size": torch.rand(1, 4, h, w) * 10,
               "offset": torch.rand(1, 2, h, w), "embedding": torch.randn(1, k, h, w)}
    heatmap = torch.zeros(1, 1, h, w)
    heatmap[0, 0, 2, 3] = heatmap[0, 0, 5, 5] = 1.0
    targets = {"heatmap": heatmap, "index": torch.tensor([[19, 45]]), "mask": torch.ones(1, 2),
               "size": torch.full((1, 2, 4), 5.0), "offset": torch.full((1, 2, 2), 0.5),
               "ids": torch.tensor([[2, 5]]), "ignore": torch.zeros(1, 1, h, w)}
    terms = criterion(outputs, targets)
    expected = 0.5 * (terms["det"] * math.exp(1.85) + terms["id"] * math.exp(1.05) - 1.85 - 1.05)
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms["id"]) > 0 and "s_id" in terms
    assert set(dict(criterion.named_parameters())) >= {"supervised.classifier.weight", "uncertainty.s_id"}


def test_classifier_lr_mult_gives_the_classifier_its_own_group_scaled_by_the_schedule():
    from kdtrack.engine import build_optimizer, build_scheduler

    cfg = load_config("sup_cpu", ["loss.num_id_classes=6", "train.classifier_lr_mult=10", "train.lr=0.002"])
    criterion = Criterion.from_config(cfg)
    body = torch.nn.Linear(3, 3)
    classifier = criterion.classifier_parameters()
    assert {id(p) for p in classifier} == {id(p) for p in criterion.supervised.classifier.parameters()}
    optimizer = build_optimizer(list(body.parameters()) + list(criterion.parameters()), cfg.train, classifier)
    main, fast = optimizer.param_groups
    assert fast["lr"] == pytest.approx(0.02) and main["lr"] == pytest.approx(0.002)
    assert {id(p) for p in fast["params"]} == {id(p) for p in classifier}
    assert len(main["params"]) == 2 + 2  # the body's weight and bias, s_det and s_id
    scheduler = build_scheduler(optimizer, cfg.train, 10)  # lr / 10 at 80 %
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0002, 0.002])


def test_classifier_lr_mult_of_one_keeps_one_group_and_a_bad_value_is_refused():
    from kdtrack.engine import build_optimizer

    cfg = load_config("sup_cpu", ["loss.num_id_classes=6", "train.classifier_lr_mult=1"])
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(criterion.parameters(), cfg.train, criterion.classifier_parameters())
    assert len(optimizer.param_groups) == 1  # as before the option: its checkpoints' optimiser state still loads
    bad = load_config("sup_cpu", ["loss.num_id_classes=6", "train.classifier_lr_mult=0"])
    with pytest.raises(ValueError, match="train.classifier_lr_mult must be > 0"):
        build_optimizer(criterion.parameters(), bad.train, criterion.classifier_parameters())
    assert Criterion.from_config(load_config("idf_cpu")).classifier_parameters() == []
    kd = Criterion.from_config(load_config("kd_cpu", ["loss.eta=0.5", "loss.num_id_classes=5"]))
    assert [tuple(p.shape) for p in kd.classifier_parameters()] == [(5, 128)]  # KD's hard-label classifier
