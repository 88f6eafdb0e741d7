"""CenterNet target encoding: radius rule, gaussian splat, slots, ignore map, centre regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdtrack.data.targets import (
    collate_targets,
    draw_gaussian,
    encode_targets,
    gaussian_2d,
    gaussian_radius,
    person_keys,
)


def test_gaussian_radius_hand_values():
    # (h, w) = (10, 10), overlap 0.7:
    # r1: b=20, c=100*0.3/1.7=17.647, sqrt(400-70.588)=18.150 -> (20+18.150)/2 = 19.075
    # r2: a=4, b=40, c=30, sqrt(1600-480)=33.466 -> (40+33.466)/2 = 36.733
    # r3: a=2.8, b=-28, c=-30, sqrt(784+336)=33.466 -> (-28+33.466)/2 = 2.733  <- min
    assert gaussian_radius((10, 10), 0.7) == pytest.approx(2.7332, abs=1e-4)
    # (h, w) = (20, 8): r3: a=2.8, b=-2*0.7*28=-39.2, c=-0.3*160=-48,
    # sqrt(1536.64 + 4*2.8*48=537.6)=sqrt(2074.24)=45.544 -> (-39.2+45.544)/2 = 3.172
    # r1: b=28, c=160*0.3/1.7=28.235, sqrt(784-112.94)=25.905 -> 26.95 ; r2 larger
    assert gaussian_radius((20, 8), 0.7) == pytest.approx(3.1720, abs=1e-3)


def test_gaussian_kernel_and_max_merge():
    g = gaussian_2d(1)  # sigma = 3/6 = 0.5: neighbour exp(-1/(2*0.25)) = e^-2 = 0.1353, corner e^-4 = 0.0183
    assert g[1, 1] == 1.0
    assert g[0, 1] == pytest.approx(math.exp(-2), rel=1e-6)
    assert g[0, 0] == pytest.approx(math.exp(-4), rel=1e-6)
    hm = np.zeros((5, 5), np.float32)
    hm[0, 0] = 0.5
    draw_gaussian(hm, (0, 0), 1)  # clipped at the corner, max-merged with 0.5
    assert hm[0, 0] == 1.0 and hm[0, 1] == pytest.approx(math.exp(-2))
    draw_gaussian(hm, (1, 0), 1)  # second splat: cell (0,0) stays 1 (max), cell (1,0) becomes 1
    assert hm[0, 0] == 1.0 and hm[0, 1] == 1.0 and hm[0, 2] == pytest.approx(math.exp(-2))
    draw_gaussian(hm, (4, 4), 0)
    assert hm[4, 4] == 1.0


def test_encode_one_box_by_hand():
    # Input 64x64, stride 4 -> 16x16 map. Box (10, 20, 30, 60) -> output (2.5, 5, 7.5, 15):
    # centre (5, 10) -> cell (5, 10), offset (0, 0); index = 10*16 + 5 = 165.
    # l,t,r,b from centre (20, 40) input px: 10, 20, 10, 20.
    t = encode_targets(np.array([[10, 20, 30, 60]]), np.array([7]), None, (64, 64), max_objects=4)
    assert t["heatmap"].shape == (1, 16, 16)
    assert t["index"][0] == 165 and t["mask"].tolist() == [True, False, False, False]
    assert torch.allclose(t["offset"][0], torch.tensor([0.0, 0.0]))
    assert torch.allclose(t["size"][0], torch.tensor([10.0, 20.0, 10.0, 20.0]))
    assert t["ids"].tolist() == [7, -1, -1, -1] and t["box_index"].tolist() == [0, -1, -1, -1]
    assert t["heatmap"][0, 10, 5] == 1.0 and int((t["heatmap"] == 1).sum()) == 1
    # w, h mode: (w, h) = (20, 40) input px.
    t2 = encode_targets(np.array([[10, 20, 30, 60]]), None, None, (64, 64), size_channels=2, max_objects=4)
    assert torch.allclose(t2["size"][0], torch.tensor([20.0, 40.0]))
    # Sub-cell offset: box (10, 20, 31, 62) -> output centre (5.125, 10.25) -> offset (0.125, 0.25).
    t3 = encode_targets(np.array([[10, 20, 31, 62]]), None, None, (64, 64), max_objects=2)
    assert torch.allclose(t3["offset"][0], torch.tensor([0.125, 0.25]))
    # size from the real centre (20.5, 41) input px: l=10.5, t=21, r=10.5, b=21
    assert torch.allclose(t3["size"][0], torch.tensor([10.5, 21.0, 10.5, 21.0]))


def test_amodal_box_is_clipped_for_centre_but_not_for_ltrb():
    # Box (-8, 0, 24, 32) on 64x64: clipped output (0, 0, 6, 8), centre (3, 4) -> input centre (12, 16)
    # l = 12 - (-8) = 20 (amodal), t = 16, r = 12, b = 16.
    t = encode_targets(np.array([[-8, 0, 24, 32]]), None, None, (64, 64), max_objects=1)
    assert t["index"][0] == 4 * 16 + 3
    assert torch.allclose(t["size"][0], torch.tensor([20.0, 16.0, 12.0, 16.0]))


def test_degenerate_outside_and_dropped_are_counted():
    boxes = np.array(
        [
            [10, 10, 10, 30],  # zero width
            [100, 10, 120, 30],  # entirely right of a 64-wide image
            [4, 4, 20, 20],
            [30, 30, 50, 50],
            [40, 4, 60, 20],
        ],
        np.float32,
    )
    t = encode_targets(boxes, np.arange(5), None, (64, 64), max_objects=2)
    assert int(t["num_skipped"]) == 2 and int(t["num_dropped"]) == 1
    assert t["box_index"].tolist() == [2, 3] and t["ids"].tolist() == [2, 3]
    # The dropped object (box 4) still has its Gaussian peak: centre (50, 12)/4 -> cell (12, 3).
    assert t["heatmap"][0, 3, 12] == 1.0
    assert int((t["heatmap"] == 1).sum()) == 3


def test_empty_image():
    t = encode_targets(np.zeros((0, 4)), np.zeros((0,), np.int64), np.zeros((0, 4)), (32, 64), max_objects=3)
    assert t["heatmap"].sum() == 0 and not t["mask"].any() and not t["region_mask"].any()
    assert t["heatmap"].shape == (1, 8, 16)


def test_ignore_map_masks_region_but_not_gaussians():
    # Ignore box (0, 0, 32, 32) covers output cells [0, 8) x [0, 8); a person at (8, 8, 24, 24)
    # (output (2, 2, 6, 6)) lies inside: its Gaussian cells are not ignored.
    t = encode_targets(
        np.array([[8, 8, 24, 24]]), None, np.array([[0, 0, 32, 32]]), (64, 64), max_objects=2
    )
    ign, hm = t["ignore"][0], t["heatmap"][0]
    assert ign[0, 0] == 1 and ign[7, 7] == 1 and ign[8, 8] == 0 and ign[0, 8] == 0
    assert ((hm > 0) & (ign > 0)).sum() == 0
    assert ign[4, 4] == 0  # the person's centre


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="img7.jpg: box 1 is not finite"):
        encode_targets(np.array([[0, 0, 4, 4], [0, np.nan, 4, 4]]), None, None, (32, 32), source="img7.jpg")
    with pytest.raises(ValueError, match="multiple of down_ratio"):
        encode_targets(np.zeros((0, 4)), None, None, (30, 32))
    with pytest.raises(ValueError, match="2 boxes but 1 ids"):
        encode_targets(np.ones((2, 4)), np.array([1]), None, (32, 32))


def test_centre_region_window_inside_box_and_conflicts():
    # Large box (16, 16, 48, 48) on 64x64 -> output (4, 4, 12, 12), centre (8, 8): full 3x3 window.
    t = encode_targets(np.array([[16, 16, 48, 48]]), None, None, (64, 64), max_objects=2, centre_region_radius=1)
    cells = sorted(t["region_index"][0][t["region_mask"][0]].tolist())
    assert cells == sorted((8 + dy) * 16 + 8 + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert t["region_index"][0, 0] == t["index"][0]  # centre cell first
    # Thin box (32, 16, 34, 48) -> output x in [8, 8.5], cell centres 7.5/8.5/9.5: only x = 8 column
    # inside (8.5 <= 8.5): cells (8, 7), (8, 8), (8, 9).
    t = encode_targets(np.array([[32, 16, 34, 48]]), None, None, (64, 64), max_objects=1)
    cells = sorted(t["region_index"][0][t["region_mask"][0]].tolist())
    assert cells == [7 * 16 + 8, 8 * 16 + 8, 9 * 16 + 8]
    # Two people whose windows overlap: centres (5.5, 8) and (7.5, 8) in output units -> cells 5 and 7.
    # Column 6 is claimed by both; cell centre x = 6.5 is 1.0 from both centres -> tie -> earlier slot.
    boxes = np.array([[14, 16, 30, 48], [22, 16, 38, 48]], np.float32)
    t = encode_targets(boxes, np.array([0, 1]), None, (64, 64), max_objects=2)
    a = set(t["region_index"][0][t["region_mask"][0]].tolist())
    b = set(t["region_index"][1][t["region_mask"][1]].tolist())
    assert not (a & b)
    assert {7 * 16 + 6, 8 * 16 + 6, 9 * 16 + 6} <= a
    assert len(a) == 9 and len(b) == 6


def test_teacher_embeddings_follow_the_slots():
    boxes = np.array([[0, 0, 0, 0], [4, 4, 20, 20], [30, 30, 50, 50]], np.float32)
    teacher = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = encode_targets(boxes, None, None, (64, 64), max_objects=3, teacher_embeddings=teacher)
    assert t["teacher"].tolist() == [[2, 3], [4, 5], [0, 0]]


def test_collate_and_trim():
    a = encode_targets(np.array([[4, 4, 20, 20]]), None, None, (32, 32), max_objects=5)
    b = encode_targets(np.array([[4, 4, 20, 20], [20, 4, 30, 30]]), None, None, (32, 32), max_objects=5)
    full = collate_targets([a, b])
    assert full["index"].shape == (2, 5) and full["heatmap"].shape == (2, 1, 8, 8)
    trimmed = collate_targets([a, b], trim=True)
    assert trimmed["index"].shape == (2, 2) and trimmed["region_index"].shape == (2, 2, 9)
    assert trimmed["mask"].sum() == 3
    with pytest.raises(ValueError, match="collate_targets: empty"):
        collate_targets([])


def test_person_keys_unique_across_images():
    k0, k1 = person_keys(0, 3), person_keys(1, 3)
    assert k0.tolist() == [0, 1, 2] and k1.tolist() == [65536, 65537, 65538]
    assert len(set(k0) | set(k1)) == 6
    with pytest.raises(ValueError):
        person_keys(0, 70000)
