"""Where the identity vector is read (``model.id_readout``): the two bands of the box's central region against
hand values, the same reading in the loss and at inference, and the runs that must refuse it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdtrack.config import ConfigError, check_training, load_config
from kdtrack.data.letterbox import LetterboxTransform
from kdtrack.data.targets import encode_targets
from kdtrack.inference import Detector, embeddings_at_boxes
from kdtrack.losses import Criterion
from kdtrack.models import build_student
from kdtrack.readout import central_bands, central_boxes, read_at_boxes, readout_dim


def _two_band_map(upper: list[float], lower: list[float], size: int = 20) -> torch.Tensor:
    """A (1, k, size, size) map holding ``upper`` in rows 0..size/2-1 and ``lower`` below."""
    emb = torch.zeros(1, len(upper), size, size)
    emb[0, :, : size // 2] = torch.tensor(upper)[:, None, None]
    emb[0, :, size // 2:] = torch.tensor(lower)[:, None, None]
    return emb


def test_centre_halves_reads_each_band_where_it_is_by_hand():
    # box (0, 0, 10, 20) at stride 1: its central 40 % x 80 % is x 3..7, y 2..18; the upper band y 2..10 samples
    # rows 3.5 and 7.5 (roi_align, aligned, 2 samples per bin side), all in the upper half; the lower 11.5, 15.5
    emb = _two_band_map([3.0, 4.0], [0.0, -2.0])
    got = central_bands(emb, torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([0]), down_ratio=1)
    np.testing.assert_allclose(got.numpy(), [[0.6, 0.8, 0.0, -1.0]], atol=1e-6)  # each band unit, then concatenated
    one = read_at_boxes(emb, torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([0]), "centre", down_ratio=1)
    # one band of y 2..18: its 2 samples, rows 5.5 and 13.5, one in each half; the mean (1.5, 1), normalised
    np.testing.assert_allclose(one.numpy(), [np.array([1.5, 1.0]) / math.hypot(1.5, 1.0)], atol=1e-6)
    # a ramp along x averages over the region's columns: samples at x 3.5 and 5.5 of f(x) = x, i.e. 4.5, and the
    # second channel's constant 1 leaves (4.5, 1) / |(4.5, 1)| in both bands
    ramp = torch.stack([torch.arange(20.0)[None].expand(20, 20), torch.ones(20, 20)])[None]
    got = central_bands(ramp, torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([0]), down_ratio=1)
    unit = np.array([4.5, 1.0]) / math.hypot(4.5, 1.0)
    np.testing.assert_allclose(got.numpy(), [np.concatenate([unit, unit])], atol=1e-5)
    # the stride: the same box in input pixels at down_ratio 4 on a map 4x smaller reads the same cells' values
    small = _two_band_map([1.0, 0.0], [0.0, 1.0], size=5)
    got = central_bands(small, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([0]), down_ratio=4)
    assert got.shape == (1, 4) and got[0, 0] > 0.9 and got[0, 3] > 0.9


def test_readout_names_dimensions_and_the_cell_reading():
    assert readout_dim(64, "cell") == 64 and readout_dim(64, "centre") == 64 and readout_dim(64, "centre_halves") == 128
    with pytest.raises(ValueError, match="model.id_readout must be cell [|] centre [|] centre_halves"):
        readout_dim(64, "whole_box")
    emb = torch.randn(2, 3, 6, 8)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 20.0], [-8.0, 0.0, 2.0, 4.0]])  # centres (8, 12) and (-3, 2) in pixels
    got = read_at_boxes(emb, boxes, torch.tensor([1, 0]), "cell", down_ratio=4)
    torch.testing.assert_close(got, torch.stack([emb[1, :, 3, 2], emb[0, :, 0, 0]]))  # floor, clamped to the map
    np.testing.assert_allclose(central_boxes(np.array([[0, 0, 10, 20]])), [[3, 2, 7, 18]])
    torch.testing.assert_close(central_boxes(torch.tensor([[0.0, 0.0, 10.0, 20.0]])), torch.tensor([[3.0, 2, 7, 18]]))


def _halves_config(**more: str):
    return load_config("sup_cpu", ["model.id_readout=centre_halves", "loss.num_id_classes=5",
                                   "loss.supervised_memory=0", "loss.uncertainty=false",
                                   *[f"{k}={v}" for k, v in more.items()]])


def test_the_supervised_loss_reads_the_target_boxes_as_inference_does():
    cfg = _halves_config()
    h, w = cfg.model.input_height, cfg.model.input_width
    boxes = np.array([[10.3, 20.7, 50.1, 120.9], [200.0, 30.0, 240.0, 180.0]], np.float32)
    targets = encode_targets(boxes, np.array([3, 1]), None, (h, w), max_objects=8)
    batch = {k: v[None] for k, v in targets.items() if isinstance(v, torch.Tensor) and v.ndim}
    torch.manual_seed(0)
    emb = torch.randn(1, cfg.model.embedding_dim, h // 4, w // 4, requires_grad=True)
    outputs = {"heatmap": torch.zeros(1, 1, h // 4, w // 4), "size": torch.zeros(1, 4, h // 4, w // 4),
               "offset": torch.zeros(1, 2, h // 4, w // 4), "embedding": emb}
    criterion = Criterion.from_config(cfg)
    assert criterion.supervised.classifier.in_features == 2 * cfg.model.embedding_dim
    terms = criterion(outputs, batch)
    # by hand: the true boxes read as at inference (an identity letterbox), L2-normalised, scaled, classified
    read = embeddings_at_boxes(emb[0].detach(), LetterboxTransform(1.0, 0.0, 0.0, w, h), boxes, 4, "centre_halves")
    scale = math.sqrt(2) * math.log(5 - 1)
    logits = criterion.supervised.classifier(scale * torch.as_tensor(read))
    torch.testing.assert_close(terms["id"], F.cross_entropy(logits, torch.tensor([3, 1])), rtol=1e-4, atol=1e-5)
    terms["total"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_a_detector_reads_its_checkpoints_way_for_detections_and_given_boxes():
    cfg = _halves_config(**{"decode.score_threshold": "0.0", "decode.top_k": "5"})
    torch.manual_seed(1)
    model = build_student(cfg.model).eval()
    with torch.no_grad():
        model.heads.size[-1].bias.fill_(16.0)  # l, t, r, b of 16 pixels: the untrained head's ~0 boxes are dropped
    detector = Detector(model, cfg, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 255, (150, 260, 3), np.uint8)
    dets, outputs, tf = detector(image)
    assert dets.embeddings.shape == (len(dets), 2 * cfg.model.embedding_dim) and len(dets)
    again = embeddings_at_boxes(outputs["embedding"][0], tf, dets.boxes_xyxy, 4, "centre_halves")
    np.testing.assert_allclose(dets.embeddings, again, atol=1e-4)  # decoded boxes, read back through the letterbox
    np.testing.assert_allclose(np.linalg.norm(dets.embeddings, axis=1), 1.0, atol=1e-5)


def test_kd_refuses_the_pooled_readout_and_the_other_recipes_take_it():
    with pytest.raises(ConfigError, match=r"model.id_readout' must be one of \['cell', 'centre', 'centre_halves'\]"):
        load_config("sup_cpu", ["model.id_readout=box"])
    with pytest.raises(ConfigError, match="model.id_readout.*'kd' distils the teacher's feature into the centre"):
        check_training(load_config("kd_cpu", ["model.id_readout=centre_halves"]))
    for preset in ("idf_cpu", "sup_cpu"):
        check_training(load_config(preset, ["model.id_readout=centre_halves"]))
    for later_stage in ("idf_video_cpu", "idf_classify_cpu", "idf_det_cpu"):  # each starts from stage 1's network
        check_training(load_config(later_stage, ["model.id_readout=centre_halves", "train.init_from=S1/checkpoint.pt"]))


def _two_people_in_two_views(cfg):
    """Two people (keys 7, 9) in two views of one image (the second shifted by 8 px), a random identity map with
    gradient, and the ``(4, D)`` vectors inference reads at their boxes (rows: view 0's two, then view 1's)."""
    h, w = cfg.model.input_height, cfg.model.input_width
    boxes = np.array([[10.0, 20.0, 50.0, 120.0], [200.0, 30.0, 240.0, 180.0]], np.float32)
    views = [encode_targets(boxes + shift, np.array([7, 9]), None, (h, w), max_objects=4) for shift in (0.0, 8.0)]
    batch = {k: torch.stack([v[k] for v in views]) for k in views[0] if isinstance(views[0][k], torch.Tensor)}
    torch.manual_seed(0)
    emb = torch.randn(2, cfg.model.embedding_dim, h // 4, w // 4, requires_grad=True)
    outputs = {"heatmap": torch.zeros(2, 1, h // 4, w // 4), "size": torch.zeros(2, 4, h // 4, w // 4),
               "offset": torch.zeros(2, 2, h // 4, w // 4), "embedding": emb}
    tf = LetterboxTransform(1.0, 0.0, 0.0, w, h)
    read = torch.as_tensor(np.concatenate([embeddings_at_boxes(emb[i].detach(), tf, boxes + shift, 4, cfg.model.id_readout)
                                           for i, shift in enumerate((0.0, 8.0))]))
    return batch, outputs, emb, read


def test_the_contrastive_loss_reads_one_pooled_vector_per_person_and_view():
    # the student's own positives: the key encoder's (loss.key_positives) are checked in tests/test_engine.py
    cfg = load_config("idf_cpu", ["model.id_readout=centre_halves", "loss.queue_size=16", "loss.key_positives=false"])
    batch, outputs, emb, read = _two_people_in_two_views(cfg)
    criterion = Criterion.from_config(cfg)
    assert criterion.contrastive.queue.shape == (16, 2 * cfg.model.embedding_dim)
    terms = criterion(outputs, batch, monitor=False)
    # by hand: each person read in both views as at inference, two rows per person, the loss over those rows
    fresh = Criterion.from_config(cfg).contrastive
    want = fresh.loss_from_points(torch.as_tensor(read), torch.tensor([7, 9, 7, 9]))
    torch.testing.assert_close(terms["id/contrastive"], want["id"], rtol=1e-4, atol=1e-5)
    assert int(criterion.contrastive.queue_fill) == 2 and float(terms["id/anchors"]) == 4  # one mean per person
    terms["total"].backward()
    assert emb.grad.abs().sum() > 0
    # the collapse monitor reads the same vectors: view 0's two people, and each one's nearest in view 1
    monitored = Criterion.from_config(cfg)(outputs, batch)
    unit = F.normalize(torch.as_tensor(read), dim=1)
    assert float(monitored["monitor/cos_between"]) == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    nearest = [int((unit[i] @ unit[2:].T).argmax()) for i in (0, 1)]
    assert float(monitored["monitor/xview_top1"]) == pytest.approx(np.mean([nearest[0] == 0, nearest[1] == 1]))


def test_a_projection_head_sits_between_the_read_vectors_and_the_loss():
    """loss.projection_dim (SimCLR / MoCo v2's head): the loss is the contrastive loss of the head's normalised
    outputs of the vectors read as at inference; the queue holds head outputs; the head learns with the rest;
    the monitor (and retrieval) read the vectors before it; the key encoder's vectors go through a momentum copy
    of the head; a centre-cell run refuses it."""
    cfg = load_config("idf_cpu", ["loss.queue_size=16", "loss.projection_dim=32", "loss.key_positives=false"])
    batch, outputs, emb, read = _two_people_in_two_views(cfg)
    criterion = Criterion.from_config(cfg)
    head = criterion.projection
    assert [tuple(m.weight.shape) for m in head if hasattr(m, "weight")] == [(32, 128), (128, 32)]
    terms = criterion(outputs, batch)
    with torch.no_grad():  # by hand: Linear, ReLU, Linear, then unit length
        projected = F.normalize(torch.relu(read @ head[0].weight.T + head[0].bias) @ head[2].weight.T + head[2].bias,
                                dim=1)
    keys = torch.tensor([7, 9, 7, 9])
    want = Criterion.from_config(load_config("idf_cpu", ["loss.queue_size=16"])).contrastive.loss_from_points(projected, keys)
    torch.testing.assert_close(terms["id/contrastive"], want["id"], rtol=1e-4, atol=1e-5)
    queued = criterion.contrastive.queue[:2]  # each person's mean of its head outputs, renormalised
    torch.testing.assert_close(queued, F.normalize(torch.stack([projected[[0, 2]].mean(0), projected[[1, 3]].mean(0)]), dim=1),
                               rtol=1e-4, atol=1e-5)
    unit = F.normalize(read, dim=1)  # the monitor reads the vectors before the head
    assert float(terms["monitor/cos_between"]) == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    terms["total"].backward()
    assert head[0].weight.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
    # with a key encoder (idf_cpu's momentum 0.99) the keys go through a momentum copy of the head, one EMA step
    # per training step
    key_head = criterion.key_projection.encoder
    assert not any(p.requires_grad for p in key_head.parameters())
    before = key_head[0].weight.clone()
    with torch.no_grad():
        head[0].weight.add_(1.0)
    criterion(outputs, batch, key_embedding=emb.detach(), monitor=False)
    torch.testing.assert_close(key_head[0].weight, 0.99 * before + 0.01 * head[0].weight)
    with pytest.raises(ValueError, match="projection head sits between"):
        Criterion.from_config(load_config("idf_cpu", ["loss.projection_dim=32", "model.id_readout=cell"]))


def test_a_run_that_keeps_the_identity_head_must_read_it_as_it_was_trained(tmp_path):
    from jobs.train import check_recipe
    from kdtrack.checkpoint import save_checkpoint

    trained = load_config("idf_classify_cpu", ["model.id_readout=cell"])  # a stage 2 read at the centre cell
    ckpt = save_checkpoint(tmp_path / "stage2.pt", model=build_student(trained.model), config=trained)
    stage3 = ["train.val_protocols=[]", f"train.init_from={ckpt}"]
    assert load_config("idf_det_cpu").model.id_readout == "centre_halves"
    with pytest.raises(ConfigError, match="trained with model.id_readout=cell.*set model.id_readout="
                                          "cell [(]now centre_halves[)]"):
        check_recipe(load_config("idf_det_cpu", stage3))
    check_recipe(load_config("idf_det_cpu", [*stage3, "model.id_readout=cell"]))
