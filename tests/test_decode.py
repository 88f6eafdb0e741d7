"""Decode inverts the target encoding; letterbox maps boxes both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtrack.boxes import box_iou_xyxy
from kdtrack.config import DecodeConfig
from kdtrack.decode import decode_batch, decode_detections, peak_nms
from kdtrack.data.letterbox import boxes_from_letterbox, boxes_to_letterbox, letterbox, letterbox_transform
from kdtrack.data.targets import collate_targets, encode_targets

PEAK_CLAMP = 1e-4  # heatmap probability clamp when turning targets into logits


def perfect_outputs(batch: dict, size_channels: int, emb_dim: int = 0) -> dict:
    """A 'prediction' that equals the targets: logit(heatmap), size/offset written at the centres."""
    hm = batch["heatmap"].clamp(PEAK_CLAMP, 1 - PEAK_CLAMP)
    b, _, h, w = hm.shape
    size = torch.zeros(b, size_channels, h * w)
    offset = torch.zeros(b, 2, h * w)
    emb = torch.zeros(b, emb_dim, h * w)
    for i in range(b):
        m = batch["mask"][i]
        idx = batch["index"][i][m]
        size[i][:, idx] = batch["size"][i][m].T
        offset[i][:, idx] = batch["offset"][i][m].T
        if emb_dim:
            emb[i][:, idx] = torch.eye(emb_dim)[: len(idx)].T * 3.0
    out = {
        "heatmap": torch.logit(hm),
        "size": size.reshape(b, size_channels, h, w),
        "offset": offset.reshape(b, 2, h, w),
    }
    if emb_dim:
        out["embedding"] = emb.reshape(b, emb_dim, h, w)
    return out


@pytest.mark.parametrize("size_channels", [4, 2])
def test_encode_then_decode_recovers_boxes(size_channels):
    rng = np.random.default_rng(0)
    boxes = np.array(
        [[13.3, 21.7, 55.1, 140.9], [101.2, 30.5, 150.8, 170.0], [200.4, 60.0, 231.9, 120.6]], np.float32
    )
    boxes2 = boxes[:2] + rng.uniform(-3, 3, size=(2, 4)).astype(np.float32)
    t = [encode_targets(b, None, None, (192, 256), size_channels=size_channels, max_objects=8) for b in (boxes, boxes2)]
    batch = collate_targets(t)
    dets = decode_detections(perfect_outputs(batch, size_channels), DecodeConfig(top_k=20), score_threshold=0.5)
    for gt, det in zip((boxes, boxes2), dets):
        assert len(det) == len(gt)
        iou = box_iou_xyxy(gt, det.boxes_xyxy)
        assert (iou.max(1) > 0.99).all(), iou
        assert np.allclose(det.scores, 1 - PEAK_CLAMP, atol=1e-5)


def test_decode_embeddings_normalised_and_read_at_peaks():
    boxes = np.array([[16, 16, 48, 80], [96, 16, 140, 90]], np.float32)
    batch = collate_targets([encode_targets(boxes, None, None, (128, 160), max_objects=4)])
    out = perfect_outputs(batch, 4, emb_dim=3)
    dec = decode_batch(out, top_k=2)
    emb = dec["embeddings"][0]
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert sorted(emb.argmax(1).tolist()) == [0, 1]  # object j carries basis vector j
    raw = decode_batch(out, top_k=2, normalize_embeddings=False)["embeddings"][0]
    assert torch.allclose(raw.norm(dim=1), torch.full((2,), 3.0))


def test_peak_nms_and_threshold():
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, 1, 1] = 0.9
    heat[0, 0, 1, 2] = 0.8  # neighbour of a higher peak: suppressed
    heat[0, 0, 3, 3] = 0.3  # own peak, below threshold
    kept = peak_nms(heat)
    assert kept[0, 0, 1, 2] == 0 and kept[0, 0, 1, 1] == 0.9 and kept[0, 0, 3, 3] == 0.3
    out = {"heatmap": torch.logit(heat.clamp(1e-4, 1 - 1e-4)), "size": torch.ones(1, 4, 4, 4),
           "offset": torch.zeros(1, 2, 4, 4)}
    dets = decode_detections(out, DecodeConfig(top_k=5, score_threshold=0.4), down_ratio=4)
    assert len(dets[0]) == 1
    # peak cell (1, 1) -> centre (4, 4) input px, l=t=r=b=1 -> box (3, 3, 5, 5)
    assert np.allclose(dets[0].boxes_xyxy, [[3, 3, 5, 5]])
    assert dets[0].embeddings.shape == (1, 0)


def test_letterbox_hand_values_and_round_trip():
    # 640x480 -> 1088x608: scale = min(608/480, 1088/640) = 1.26667; new 811x608;
    # pad_x = round((1088-811)/2 - 0.1) = round(138.4) = 138, pad_y = 0.
    tf = letterbox_transform(640, 480, 1088, 608)
    assert tf.scale == pytest.approx(608 / 480) and tf.pad_x == 138 and tf.pad_y == 0
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    canvas, tf2 = letterbox(img, 1088, 608)
    assert canvas.shape == (3, 608, 1088) and canvas.dtype == np.float32
    assert tf2 == tf
    assert np.allclose(canvas[:, :, :138], 0.5) and np.allclose(canvas[:, :, 138 + 811 :], 0.5)
    assert 0.0 <= canvas.min() and canvas.max() <= 1.0
    boxes = np.array([[10, 20, 100, 300], [500, 100, 640, 480]], np.float32)
    lb = boxes_to_letterbox(boxes, tf)
    assert np.allclose(lb[0], [10 * tf.scale + 138, 20 * tf.scale, 100 * tf.scale + 138, 300 * tf.scale])
    assert np.allclose(boxes_from_letterbox(lb, tf), boxes, atol=1e-4)
    # Clipping on the way back: a box reaching into the padding is cut at the image border.
    assert boxes_from_letterbox(np.array([[0, 0, 1088, 608]]), tf).tolist() == [[0, 0, 640, 480]]


def test_letterbox_channels_keep_rgb_order():
    img = np.zeros((60, 100, 3), np.uint8)
    img[..., 0] = 255  # pure red
    canvas, _ = letterbox(img, 128, 96)
    tf = letterbox_transform(100, 60, 128, 96)
    y = int(tf.pad_y) + 5
    assert canvas[0, y, 64] == pytest.approx(1.0) and canvas[1, y, 64] == 0 and canvas[2, y, 64] == 0
    with pytest.raises(ValueError, match="expected an"):
        letterbox(np.zeros((10, 10), np.uint8))


def test_decode_through_letterbox_recovers_original_boxes():
    tf = letterbox_transform(400, 300, 320, 192)
    orig = np.array([[50, 40, 120, 260], [200, 10, 330, 290]], np.float32)
    batch = collate_targets([encode_targets(tf.boxes_to_letterbox(orig), None, None, (192, 320), max_objects=4)])
    dets = decode_detections(perfect_outputs(batch, 4), DecodeConfig(), transforms=[tf])
    iou = box_iou_xyxy(orig, dets[0].boxes_xyxy)
    assert (iou.max(1) > 0.99).all()
    with pytest.raises(ValueError, match="1 images but 2"):
        decode_detections(perfect_outputs(batch, 4), DecodeConfig(), transforms=[tf, tf])


def test_decode_drops_boxes_with_negative_extent():
    """A size head predicting negative l+r or t+b must not yield a detection (the tracker rejects them)."""
    h, w = 8, 8
    heat = torch.full((1, 1, h, w), -10.0)
    heat[0, 0, 2, 2] = 5.0  # peak 1: valid box
    heat[0, 0, 5, 5] = 5.0  # peak 2: negative width
    size = torch.zeros(1, 4, h, w)
    size[0, :, 2, 2] = torch.tensor([4.0, 4.0, 4.0, 4.0])
    size[0, :, 5, 5] = torch.tensor([-3.0, 2.0, -3.0, 2.0])  # l + r < 0
    outputs = {"heatmap": heat, "size": size, "offset": torch.zeros(1, 2, h, w),
               "embedding": torch.ones(1, 3, h, w)}
    (dets,) = decode_detections(outputs, DecodeConfig(score_threshold=0.5))
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes_xyxy[0], [4.0, 4.0, 12.0, 12.0])  # centre (2*4, 2*4) +- 4
    assert dets.embeddings.shape == (1, 3)
