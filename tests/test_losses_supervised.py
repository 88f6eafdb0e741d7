"""The supervised identity loss (FairMOT's re-ID branch, METHOD.md section 4b) against hand-computed values."""

from __future__ import annotations

import dataclasses
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
    assert terms["id"].item() == 0.0
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
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["id"].item() > 0 and "s_id" in terms
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
    with pytest.raises(ValueError, match="train.classifier_lr_mult must be > 0"):  # refused as the config loads
        load_config("sup_cpu", ["loss.num_id_classes=6", "train.classifier_lr_mult=0"])
    bad = dataclasses.replace(cfg.train, classifier_lr_mult=0.0)  # built past the loader: the optimiser refuses it
    with pytest.raises(ValueError, match="train.classifier_lr_mult must be > 0"):
        build_optimizer(criterion.parameters(), bad, criterion.classifier_parameters())
    assert Criterion.from_config(load_config("idf_cpu")).classifier_parameters() == []
    kd = Criterion.from_config(load_config("kd_cpu", ["loss.eta=0.5", "loss.num_id_classes=5"]))
    assert [tuple(p.shape) for p in kd.classifier_parameters()] == [(5, 128)]  # KD's hard-label classifier


def _supcon_by_hand(anchors: np.ndarray, labels: list[int], bank: np.ndarray, bank_labels: list[int],
                    tau: float) -> float:
    """``l(v)`` of kdtrack.losses.supervised written out: candidates = the other anchors + filled bank slots."""
    keys, key_labels = np.concatenate([anchors, bank]), list(labels) + list(bank_labels)
    losses = []
    for i, (v, y) in enumerate(zip(anchors, labels)):
        cand = [j for j in range(len(keys)) if j != i and key_labels[j] >= 0]
        pos = [j for j in cand if key_labels[j] == y]
        if not pos:
            continue
        log_den = np.log(sum(np.exp(v @ keys[j] / tau) for j in cand))
        losses.append(-np.mean([v @ keys[j] / tau - log_den for j in pos]))
    return float(np.mean(losses)) if losses else 0.0


def test_supervised_contrastive_matches_a_hand_computation():
    from kdtrack.losses.supervised import supervised_contrastive

    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    anchors, bank = unit(rng.normal(size=(4, 3))), unit(rng.normal(size=(5, 3)))
    labels, bank_labels = [0, 1, 0, 2], [1, -1, 2, 3, 0]  # anchor 3's only positive is in the bank; slot 1 empty
    got = supervised_contrastive(torch.tensor(anchors), torch.tensor(labels), torch.tensor(bank),
                                 torch.tensor(bank_labels), 0.5)
    assert got.item() == pytest.approx(_supcon_by_hand(anchors, labels, bank, bank_labels, 0.5), rel=1e-6)
    # no positive anywhere: 0, no anchor
    none = supervised_contrastive(torch.tensor(anchors[:2]), torch.tensor([5, 6]), torch.tensor(bank),
                                  torch.tensor(bank_labels), 0.5)
    assert none.item() == 0.0


def test_the_memory_is_a_fifo_and_feeds_the_next_batch():
    torch.manual_seed(0)
    loss_fn = SupervisedIdLoss(embedding_dim=2, num_classes=4, memory_size=3, metric_weight=0.5, temperature=0.2)
    assert {"memory", "memory_ids", "memory_ptr"} <= set(loss_fn.state_dict())  # checkpointed
    assert "memory" not in SupervisedIdLoss(embedding_dim=2, num_classes=4).state_dict()  # plain: keys as before
    first = _one_image([[1.0, 0.0], [0.0, 2.0]], [0, 5], [1, 2])
    terms = loss_fn(*first)
    assert terms["id/metric"].item() == 0.0  # nobody twice, empty memory
    assert terms["id"].item() == pytest.approx(terms["id/ce"].item())
    assert loss_fn.memory_ids.tolist() == [1, 2, -1] and int(loss_fn.memory_ptr) == 2
    second = _one_image([[3.0, 4.0], [1.0, 1.0]], [1, 2], [2, 3])
    terms = loss_fn(*second)  # person 2 meets its remembered vector (0, 1)
    anchors = np.array([[0.6, 0.8], [2 ** -0.5, 2 ** -0.5]])
    expected = _supcon_by_hand(anchors, [2, 3], np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), [1, 2, -1], 0.2)
    assert terms["id/metric"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["id"].item() == pytest.approx(terms["id/ce"].item() + 0.5 * expected, rel=1e-5)
    assert loss_fn.memory_ids.tolist() == [3, 2, 2] and int(loss_fn.memory_ptr) == 1  # wrapped: oldest out
    assert loss_fn.memory[0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5])
    loss_fn.eval()
    loss_fn(*second)
    assert loss_fn.memory_ids.tolist() == [3, 2, 2]  # evaluation leaves the memory alone
    with pytest.raises(ValueError, match="loss.supervised_memory must be >= 0"):
        SupervisedIdLoss(embedding_dim=2, num_classes=4, memory_size=-1)
    with pytest.raises(ValueError, match="supervised_temperature must be > 0"):
        SupervisedIdLoss(embedding_dim=2, num_classes=4, memory_size=8, temperature=0.0)
