"""Re-ID teacher, its losses, the freeze guard and KD soft targets (crop alignment)."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.config import TeacherConfig
from kdtrack.models import (
    CheckpointMismatchError, build_teacher, crop_boxes, embed_crops, freeze_teacher, is_frozen,
    select_kept, teacher_embeddings, teacher_feature_dim,
)
from kdtrack.models.reid import IBN, GeM
from kdtrack.models.reid_losses import batch_hard_triplet_loss, label_smoothed_cross_entropy, reid_loss

torch.set_num_threads(2)
TINY = TeacherConfig(backbone="tiny", width=8, crop_height=64, crop_width=32)


# ----------------------------------------------------------------------------- network


def test_tiny_teacher_outputs_and_bnneck():
    model = build_teacher(TINY, num_classes=5)
    out = model(torch.rand(3, 3, 64, 32))
    assert out["features"].shape == out["bn_features"].shape == (3, 64)  # 8 * width
    assert out["logits"].shape == (3, 5)
    assert teacher_feature_dim(TINY) == model.feature_dim == 64
    assert not model.bnneck.bias.requires_grad and model.bnneck.weight.requires_grad
    assert model.classifier.bias is None
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 32))
        torch.testing.assert_close(model.embed(torch.rand(2, 3, 64, 32)).shape, out["bn_features"].shape)
    assert build_teacher(TINY).classifier is None


def test_embed_uses_configured_neck_feature():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 32)
    before = build_teacher(dataclasses.replace(TINY, neck_feat="before_bn")).eval()
    with torch.no_grad():
        torch.testing.assert_close(before.embed(x), before(x)["features"])
    after = build_teacher(TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(after.embed(x), after(x)["bn_features"])


def test_feature_reduction_when_dim_given():
    model = build_teacher(dataclasses.replace(TINY, feature_dim=24)).eval()
    with torch.no_grad():
        assert model.embed(torch.rand(1, 3, 64, 32)).shape == (1, 24)


def test_resnet50_ibn_last_stride_and_shapes():
    cfg = TeacherConfig(backbone="resnet50_ibn", last_stride=1)
    model = build_teacher(cfg, num_classes=3).eval()
    # IBN-a in the first norm of every bottleneck of layers 1-3, not layer 4 (body[4..7] = layer1..4)
    for stage in (4, 5, 6):
        assert all(isinstance(block.bn1, IBN) for block in model.body[stage])
    assert not any(isinstance(m, IBN) for m in model.body[7].modules())
    with torch.no_grad():
        fmap = model.body(torch.rand(1, 3, 128, 64))
        out = model(torch.rand(1, 3, 128, 64))
    assert fmap.shape == (1, 2048, 8, 4)  # last stride 1: total stride 16, 128/16 x 64/16
    assert out["bn_features"].shape == (1, 2048) and out["logits"].shape == (1, 3)
    plain = build_teacher(TeacherConfig(backbone="resnet50", last_stride=2, pooling="avg"))
    assert not any(isinstance(m, IBN) for m in plain.modules())
    with torch.no_grad():
        assert plain.body(torch.rand(1, 3, 128, 64)).shape == (1, 2048, 4, 2)  # total stride 32
    with pytest.raises(ValueError, match="known: resnet18, resnet50, resnet50_ibn, tiny"):
        build_teacher(TeacherConfig(backbone="vit"))


def test_ibn_normalises_half_the_channels_per_instance():
    ibn = IBN(4)
    x = torch.randn(3, 4, 5, 5) * 7 + 2
    y = ibn(x)
    # channels 0-1: instance norm -> every (sample, channel) map has mean 0
    torch.testing.assert_close(y[:, :2].mean(dim=(2, 3)), torch.zeros(3, 2), atol=1e-5, rtol=0)
    # channels 2-3: batch norm (train) -> mean 0 over the batch, not per sample
    torch.testing.assert_close(y[:, 2:].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


def test_gem_pooling_values():
    x = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    # p = 3: ((1 + 8) / 2) ** (1/3) = 4.5 ** (1/3) = 1.6510
    torch.testing.assert_close(GeM(3.0)(x), torch.tensor([[4.5 ** (1 / 3)]]))
    # p = 1 is average pooling
    torch.testing.assert_close(GeM(1.0)(x), torch.tensor([[1.5]]))
    assert isinstance(GeM().p, nn.Parameter)


def test_tiny_teacher_learns_a_few_ids():
    torch.manual_seed(0)
    model = build_teacher(TINY, num_classes=4)
    images = torch.rand(4, 3, 64, 32).repeat_interleave(2, 0) + 0.02 * torch.randn(8, 3, 64, 32)
    labels = torch.arange(4).repeat_interleave(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        out = reid_loss(model(images.clamp(0, 1)), labels, smoothing=0.1, margin=0.3)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------- freezing / checkpoints


def test_freeze_guard_survives_parent_train_and_copies():
    teacher = freeze_teacher(build_teacher(TINY))
    parent = nn.Sequential(nn.Linear(2, 2), teacher)
    parent.train()
    assert parent[0].training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    bn = teacher.body[1]
    before = bn.running_mean.clone()
    teacher(torch.rand(2, 3, 64, 32))
    torch.testing.assert_close(bn.running_mean, before)  # eval mode: running stats fixed
    for clone in (copy.deepcopy(teacher), pickle.loads(pickle.dumps(teacher))):
        assert is_frozen(clone) and clone.__dict__["train"].args[0] is clone
        clone.train()
        assert not clone.training
    assert not is_frozen(build_teacher(TINY))


def test_teacher_checkpoint_drops_classifier_for_kd(tmp_path):
    torch.manual_seed(0)
    trained = build_teacher(TINY, num_classes=6).eval()
    path = tmp_path / "teacher.pt"
    torch.save({"model": trained.state_dict(), "epoch": 1}, path)
    kd_teacher = build_teacher(dataclasses.replace(TINY, checkpoint=str(path))).eval()
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(kd_teacher.embed(x), trained.embed(x))
    # training resumes need the classifier: a checkpoint without it is an error naming the key
    no_classifier = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.")}
    torch.save(no_classifier, path)
    with pytest.raises(CheckpointMismatchError, match=r"teacher\.pt.*missing key\(s\): classifier\.weight"):
        build_teacher(dataclasses.replace(TINY, checkpoint=str(path)), num_classes=6)


# ----------------------------------------------------------------------------- losses


def test_label_smoothed_ce_matches_torch_and_hand_value():
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 5), torch.randint(0, 5, (7,))
    for eps in (0.0, 0.1, 0.3):
        torch.testing.assert_close(label_smoothed_cross_entropy(logits, labels, eps),
                                   F.cross_entropy(logits, labels, label_smoothing=eps))
    # logits (ln 3, 0) -> p = (0.75, 0.25); eps 0.2, K 2 -> q = (0.9, 0.1)
    # loss = -(0.9 ln 0.75 + 0.1 ln 0.25) = 0.9 * 0.287682 + 0.1 * 1.386294 = 0.397543
    value = label_smoothed_cross_entropy(torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0]), 0.2)
    assert abs(value.item() - 0.397543) < 1e-5
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        label_smoothed_cross_entropy(torch.zeros(1, 2), torch.tensor([2]), 0.1)


def _naive_triplet(features, labels, margin):
    terms = []
    for a in range(len(labels)):
        pos = [torch.dist(features[a], features[p]) for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [torch.dist(features[a], features[n]) for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            terms.append(torch.relu(max(pos) - min(neg) + margin))
    return torch.stack(terms).mean()


def test_batch_hard_triplet_hand_case():
    # 1-D points: id 0 at 0 and 1, id 1 at 3 and 5, id 2 alone at 10 (no positive: left out).
    # anchor 0: relu(1 - 3 + .3) = 0; anchor 1: relu(1 - 2 + .3) = 0;
    # anchor 3: relu(2 - 2 + .3) = 0.3; anchor 5: relu(2 - 4 + .3) = 0 -> mean 0.3 / 4 = 0.075
    feats = torch.tensor([[0.0], [1.0], [3.0], [5.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert abs(batch_hard_triplet_loss(feats, labels, 0.3).item() - 0.075) < 1e-5
    one_id = batch_hard_triplet_loss(feats[:2].requires_grad_(), labels[:2], 0.3)
    assert one_id.item() == 0 and one_id.requires_grad


def test_batch_hard_triplet_matches_double_loop():
    torch.manual_seed(1)
    feats = torch.randn(9, 6)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    torch.testing.assert_close(batch_hard_triplet_loss(feats, labels, 0.3), _naive_triplet(feats, labels, 0.3))
    torch.testing.assert_close(batch_hard_triplet_loss(feats * 0.1, labels, 5.0),
                               _naive_triplet(feats * 0.1, labels, 5.0))


# ----------------------------------------------------------------------------- soft targets


class _MeanTeacher(nn.Module):
    """Fake teacher: the embedding of a crop is its mean value (so painted boxes reveal their index)."""

    feature_dim = 1

    def forward(self, crops):
        return crops.mean(dim=(1, 2, 3)).unsqueeze(1)


def _painted(boxes_per_image, height=40, width=60):
    """Images where box j of image i is filled with value (j + 1) / 10, background 0."""
    images = torch.zeros(len(boxes_per_image), 3, height, width)
    for i, boxes in enumerate(boxes_per_image):
        for j, (x1, y1, x2, y2) in enumerate(boxes):
            images[i, :, y1:y2, x1:x2] = (j + 1) / 10
    return images


def test_roi_align_crop_equals_hand_slice():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 30, 40)
    boxes = [np.array([[5, 4, 13, 20]], dtype=np.float32), torch.tensor([[0.0, 0.0, 40.0, 30.0]])]
    crops = crop_boxes(images, boxes, out_size=(16, 8))
    assert crops.shape == (2, 3, 16, 8)
    # box 8 wide x 16 tall cut at its own size: each output bin samples one pixel centre
    torch.testing.assert_close(crops[0], images[0, :, 4:20, 5:13], atol=1e-5, rtol=0)
    # 2x up-sampling of the same box: bilinear, each output stays within its neighbours' range
    up = crop_boxes(images[:1], boxes[:1], out_size=(32, 16))
    ref = F.interpolate(images[:1, :, 4:20, 5:13], size=(32, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[0, :, 1:-1, 1:-1], ref[0, :, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_zero_box_images_through_teacher_targets():
    boxes = [np.zeros((0, 4), np.float32), np.array([[2, 2, 12, 22], [20, 5, 30, 35]], np.float32), []]
    images = _painted([[], [(2, 2, 12, 22), (20, 5, 30, 35)], []])
    teacher = freeze_teacher(build_teacher(TINY))
    embs = teacher_embeddings(teacher, images, boxes, out_size=(64, 32), batch_size=1)
    assert [tuple(e.shape) for e in embs] == [(0, 64), (2, 64), (0, 64)]
    assert all(torch.isfinite(e).all() for e in embs)
    none = teacher_embeddings(teacher, images[:1], [np.zeros((0, 4))], out_size=(64, 32))
    assert none[0].shape == (0, 64)
    assert crop_boxes(images, [[], [], []], out_size=(8, 4)).shape == (0, 3, 8, 4)


def test_keep_indices_stay_aligned_after_dropping_boxes():
    boxes = [[(2, 2, 12, 22), (20, 5, 30, 35), (40, 1, 58, 39)], [(5, 5, 15, 15)]]
    images = _painted(boxes)
    embs = teacher_embeddings(_MeanTeacher(), images, [np.array(b, np.float32) for b in boxes], out_size=(8, 4))
    # box j reads back (j + 1) / 10 (up to bilinear bleed of the background at the box border)
    torch.testing.assert_close(embs[0][:, 0], torch.tensor([0.1, 0.2, 0.3]), atol=0.01, rtol=0)
    # augmentation dropped box 1 of image 0 and reordered; image 1 lost its only box
    kept = teacher_embeddings(_MeanTeacher(), images, [np.array(b, np.float32) for b in boxes], out_size=(8, 4),
                              keep=[np.array([2, 0]), np.array([], dtype=np.int64)])
    torch.testing.assert_close(kept[0][:, 0], torch.tensor([0.3, 0.1]), atol=0.01, rtol=0)
    assert kept[1].shape == (0, 1)
    torch.testing.assert_close(select_kept(embs, [torch.tensor([2, 0]), []])[0], kept[0])
    with pytest.raises(ValueError, match=r"keep\[0\]: indices must be in \[0, 3\)"):
        select_kept(embs, [[3], []])


def test_teacher_embeddings_chunking_and_no_grad():
    torch.manual_seed(0)
    teacher = build_teacher(TINY)  # not frozen: the call must still use eval mode and no grad
    teacher.train()
    images = torch.rand(2, 3, 50, 70)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 45.0], [30.5, 2.25, 50.0, 48.0]]), torch.tensor([[10.0, 5.0, 35.0, 49.0]])]
    a = teacher_embeddings(teacher, images, boxes, out_size=(64, 32), batch_size=1)
    b = teacher_embeddings(teacher, images, boxes, out_size=(64, 32), batch_size=64)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
        assert not x.requires_grad
    assert teacher.training  # mode restored
    teacher.eval()
    crops = crop_boxes(images, boxes, out_size=(64, 32))
    torch.testing.assert_close(embed_crops(teacher, crops), torch.cat(b), atol=1e-5, rtol=1e-4)
    mixed = [images[0, :, 0:45, 0:20], images[1, :, 5:49, 10:35]]
    assert embed_crops(teacher, mixed, size=(64, 32)).shape == (2, 64)
    assert embed_crops(teacher, torch.zeros(0, 3, 64, 32)).shape == (0, 64)
    with pytest.raises(ValueError, match="need size"):
        embed_crops(teacher, mixed)


def test_bad_boxes_name_the_image():
    with pytest.raises(ValueError, match=r"boxes_list\[1\]: expected \(N, 4\)"):
        crop_boxes(torch.zeros(2, 3, 8, 8), [np.zeros((1, 4)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"boxes_list\[0\]: boxes contain NaN"):
        crop_boxes(torch.zeros(1, 3, 8, 8), [np.array([[0, 0, np.nan, 4]])])
    with pytest.raises(ValueError, match="float RGB"):
        crop_boxes(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [[]])
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        crop_boxes(torch.zeros(1, 3, 8, 8), [[], []])
