"""Collapse monitor: between-person cosine and cross-view top-1 on hand-made two-view batches; the warning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdtrack.losses.collapse import CollapseWatch, collapse_stats
from kdtrack.data.targets import collate_targets, encode_targets

BOXES = np.array([[8, 8, 40, 60], [50, 4, 90, 56], [20, 30, 60, 62]], np.float32)  # three people, 64x96 input


def _two_view_batch():
    keys = np.array([100, 101, 102])
    mirrored = BOXES.copy()
    mirrored[:, [0, 2]] = 96 - BOXES[:, [2, 0]]
    return collate_targets([encode_targets(b, keys, None, (64, 96), max_objects=4) for b in (BOXES, mirrored)])


def _paint(batch, vectors_view0, vectors_view1, dim):
    """An embedding map whose centre-region cells of person j hold vectors_view[j] (others random)."""
    emb = torch.randn(2, dim, 16, 24)
    for b, vectors in enumerate((vectors_view0, vectors_view1)):
        for slot in range(3):
            cells = batch["region_index"][b, slot][batch["region_mask"][b, slot]]
            emb[b].view(dim, -1)[:, cells] = vectors[slot][:, None]
    return F.normalize(emb, dim=1)


def test_collapsed_embedding_reads_cosine_one():
    batch = _two_view_batch()
    same = F.normalize(torch.ones(3, 4), dim=1)
    stats = collapse_stats(_paint(batch, same, same, 4), batch["region_index"], batch["region_mask"], batch["ids"])
    assert stats["cos_between"] == pytest.approx(1.0, abs=1e-6)
    assert stats["cos_between_std"] == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_people_read_cosine_zero_and_top1_one():
    batch = _two_view_batch()
    eye = torch.eye(4)[:3]
    stats = collapse_stats(_paint(batch, eye, eye, 4), batch["region_index"], batch["region_mask"], batch["ids"])
    assert stats["cos_between"] == pytest.approx(0.0, abs=1e-6)
    assert stats["xview_top1"] == 1.0
    # View 1 with persons 0 and 1 swapped: only person 2 finds itself -> top-1 = 1/3.
    swapped = eye[[1, 0, 2]]
    stats = collapse_stats(_paint(batch, eye, swapped, 4), batch["region_index"], batch["region_mask"], batch["ids"])
    assert stats["xview_top1"] == pytest.approx(1 / 3)


def test_single_person_gives_nan_not_an_error():
    batch = collate_targets([encode_targets(BOXES[:1], np.array([7]), None, (64, 96), max_objects=2)] * 2)
    stats = collapse_stats(F.normalize(torch.randn(2, 4, 16, 24), dim=1), batch["region_index"],
                           batch["region_mask"], batch["ids"])
    assert math.isnan(stats["cos_between"]) and stats["xview_top1"] == 1.0


def test_watch_warns_once_after_patience_and_resets_on_recovery():
    watch = CollapseWatch(threshold=0.99, patience=3)
    assert watch.update(10, 0.995) is None and watch.update(20, 0.999) is None
    assert watch.update(30, 0.5) is None  # recovery resets the streak
    assert watch.update(40, 0.995) is None and watch.update(50, 0.996) is None
    warning = watch.update(60, 0.997)
    assert warning is not None and "iteration 60" in warning and "batch_negatives" in warning
    assert watch.update(70, 0.999) is None  # only once
    assert CollapseWatch(0.0, 1).update(1, 1.0) is None  # threshold 0 turns it off
    assert CollapseWatch(0.99, 1).update(1, float("nan")) is None
