"""KD fidelity: the KD loss scale (loss.kd_reduction) against hand values, and a kd run refusing a teacher
without trained weights / loading the trained ones (jobs.train)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.train import build_kd_teacher, check_recipe
from kdtrack.checkpoint import save_checkpoint
from kdtrack.config import ConfigError, LossConfig, load_config
from kdtrack.losses import Criterion
from kdtrack.losses.kd import KDLoss
from kdtrack.models import build_teacher, is_frozen, teacher_feature_dim


def _three_objects():
    """2 images, k = 3, 2x2 maps: A, B in image 0 (cells 0, 3), C in image 1 (cell 1); image 1's second
    slot is empty (its teacher row must not count).

    d = student - teacher, smooth-L1 (beta 1) per channel:
      A: d = (0.5, -2.0, 0.8)  -> 0.125 + 1.5 + 0.32 = 1.945
      B: d = (-0.4, 0.5, -0.2) -> 0.08 + 0.125 + 0.02 = 0.225
      C: d = (3.0, 1.5, 0.0)   -> 2.5 + 1.0 + 0.0    = 3.5
    sum over everything (KDMOT's size_average=False) = 5.67; n = 3 objects, k = 3 channels.
    """
    emb = torch.zeros(2, 3, 2, 2)
    emb[0, :, 0, 0] = torch.tensor([0.5, -2.0, 0.8])
    emb[0, :, 1, 1] = torch.tensor([0.0, 1.5, -0.2])
    emb[1, :, 0, 1] = torch.tensor([3.0, 0.0, 0.4])
    index = torch.tensor([[0, 3], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    teacher = torch.zeros(2, 2, 3)
    teacher[0, 1] = torch.tensor([0.4, 1.0, 0.0])
    teacher[1, 0] = torch.tensor([0.0, -1.5, 0.4])
    teacher[1, 1] = 50.0  # empty slot
    return emb.requires_grad_(True), index, mask, teacher


@pytest.mark.parametrize("reduction, expected, grad_a", [
    # per-object sum over channels, mean over the 3 objects: 5.67 / 3; d/d(emb) = clip(d, -1, 1) / n
    ("sum_per_object", 1.89, [0.5 / 3, -1.0 / 3, 0.8 / 3]),
    # mean over objects and channels: 5.67 / 9 = sum_per_object / k; d/d(emb) = clip(d, -1, 1) / (n k)
    ("mean", 0.63, [0.5 / 9, -1.0 / 9, 0.8 / 9]),
])
def test_kd_reduction_hand_values(reduction, expected, grad_a):
    emb, index, mask, teacher = _three_objects()
    terms = KDLoss(3, reduction=reduction)(emb, index, mask, teacher)
    assert terms["id/soft"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["id"].item() == pytest.approx(expected, rel=1e-6)
    terms["id"].backward()
    torch.testing.assert_close(emb.grad[0, :, 0, 0], torch.tensor(grad_a))
    assert emb.grad[0, :, 1, 0].abs().sum() == 0  # no object there


def test_sum_per_object_relates_to_kdmot_total_sum():
    """KDMOT: SmoothL1Loss(size_average=False) = the sum over objects and channels = n x sum_per_object."""
    emb, index, mask, teacher = _three_objects()
    student = torch.stack([emb[0, :, 0, 0], emb[0, :, 1, 1], emb[1, :, 0, 1]]).detach()
    target = torch.stack([teacher[0, 0], teacher[0, 1], teacher[1, 0]])
    kdmot = F.smooth_l1_loss(student, target, reduction="sum")
    assert kdmot.item() == pytest.approx(5.67, rel=1e-6)
    per_object = KDLoss(3, reduction="sum_per_object")(emb, index, mask, teacher)["id"]
    assert kdmot.item() == pytest.approx(3 * per_object.item(), rel=1e-6)


def test_kd_reduction_config_default_and_criterion():
    assert LossConfig().kd_reduction == "sum_per_object"
    assert load_config("kd_paper").loss.kd_reduction == "sum_per_object"
    assert Criterion(LossConfig(id_mode="kd"), embedding_dim=3).kd.reduction == "sum_per_object"
    assert Criterion(LossConfig(id_mode="kd", kd_reduction="mean"), embedding_dim=3).kd.reduction == "mean"
    with pytest.raises(ConfigError, match="loss.kd_reduction"):
        load_config("tiny", ["loss.kd_reduction=sum"])
    with pytest.raises(ValueError, match="kd_reduction"):
        KDLoss(3, reduction="sum")


# ----------------------------------------------------------------------------- a kd run needs a trained teacher


def _trained_teacher_checkpoint(tmp_path, teacher_cfg, seed: int = 0):
    """What ``train.recipe=teacher`` writes: a kdtrack checkpoint whose model holds a classifier too;
    every tensor perturbed so a fresh teacher cannot equal it by chance."""
    torch.manual_seed(seed)
    net = build_teacher(teacher_cfg, num_classes=6)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point() and t.dim() == 1:  # BatchNorm affine and statistics
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    cfg = load_config("teacher_cpu")
    return net, save_checkpoint(tmp_path / "T", model=net, config=cfg, optimizer=torch.optim.Adam(net.parameters()),
                                epoch=3, iteration=30)


def test_kd_refuses_a_teacher_without_trained_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint is empty and teacher\.embeddings is not set: "
                                          r"train one .*--config teacher_cpu.*"
                                          r"--set teacher\.checkpoint=T/checkpoint\.pt"):
        check_recipe(load_config("kd_cpu"))
    with pytest.raises(ConfigError, match=r"teacher\.embeddings: .*E/emb does not exist \(write it with python -m "
                                          r"jobs\.teacher_embeddings"):
        check_recipe(load_config("kd_cpu", [f"teacher.embeddings={tmp_path / 'E' / 'emb'}"]))
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint: .*nope\.pt is not a file"):
        check_recipe(load_config("kd_cpu", [f"teacher.checkpoint={tmp_path / 'nope.pt'}"]))
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        build_kd_teacher(load_config("kd_cpu"))  # the worker refuses too
    _, path = _trained_teacher_checkpoint(tmp_path, load_config("kd_cpu").teacher)
    check_recipe(load_config("kd_cpu", [f"teacher.checkpoint={path}"]))
    # kd_paper distils teacher_paper's R50-IBN: the same check
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint is empty"):
        check_recipe(load_config("kd_paper"))


def test_kd_loop_teacher_holds_the_checkpoint_weights(tmp_path, monkeypatch):
    cfg = load_config("kd_cpu")
    trained, path = _trained_teacher_checkpoint(tmp_path, cfg.teacher)
    calls = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        calls.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cfg = load_config("kd_cpu", [f"teacher.checkpoint={path}"])
    teacher = build_kd_teacher(cfg)  # what train_func builds for train.recipe=kd
    assert calls == [(str(path), True)]
    assert is_frozen(teacher) and teacher.classifier is None
    expected = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.")}
    got = teacher.state_dict()
    assert got.keys() == expected.keys()
    for key in ("body.0.weight", "body.7.0.conv2.weight", "pool.p", "bnneck.running_var"):
        assert torch.equal(got[key], expected[key]), key
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    untrained = build_teacher(dataclasses.replace(cfg.teacher, checkpoint=""))
    assert not torch.equal(untrained.state_dict()["body.0.weight"], got["body.0.weight"])
    x = torch.rand(3, 3, cfg.teacher.crop_height, cfg.teacher.crop_width)
    with torch.no_grad():
        torch.testing.assert_close(teacher.embed(x), trained.eval().embed(x))
    assert teacher.embed(x).shape == (3, teacher_feature_dim(cfg.teacher)) == (3, cfg.model.embedding_dim)


def test_hard_labels_get_one_class_per_person_across_sequences(tiny_world):
    """MOT17 track ids restart in every sequence: KD's hard labels offset them so two people never share a
    class, and loss.num_id_classes 0 takes the count from the data (a smaller one is refused)."""
    from jobs.train import ID_CLASSES_KEY, training_data, with_id_classes
    from kdtrack.data.dataset import dataset_wide_ids, load_records
    from kdtrack.structures import UNKNOWN_ID, ImageRecord

    box = np.array([[0, 0, 4, 8]] * 2, np.float32)
    records = [ImageRecord("a.jpg", 9, 9, box, ids=[1, 2], source="mot17", extra={"sequence": "MOT17-02"}),
               ImageRecord("b.jpg", 9, 9, box, ids=[2, 1], source="mot17", extra={"sequence": "MOT17-04"}),
               ImageRecord("c.jpg", 9, 9, box, ids=[2, UNKNOWN_ID], source="mot17", extra={"sequence": "MOT17-02"}),
               ImageRecord("d.jpg", 9, 9, box, source="crowdhuman")]
    remapped, classes = dataset_wide_ids(records)
    assert classes == 4
    assert [r.ids.tolist() for r in remapped] == [[0, 1], [2, 3], [1, UNKNOWN_ID], [UNKNOWN_ID, UNKNOWN_ID]]

    cfg = load_config("kd_cpu", [f"data.root={tiny_world}", "teacher.checkpoint=/t.pt", "loss.eta=0.5"])
    _, loop_data = training_data(cfg)
    truth = {(r.extra["sequence"], int(i)) for r in load_records(cfg) if r.source == "mot17" for i in r.ids if i >= 0}
    assert loop_data[ID_CLASSES_KEY] == len(truth) > max(i for _, i in truth)  # more people than any sequence's ids
    assert with_id_classes(cfg, loop_data).loss.num_id_classes == len(truth)
    with pytest.raises(ConfigError, match=f"loss.num_id_classes 3 < the {len(truth)} people"):
        with_id_classes(load_config("kd_cpu", ["loss.eta=0.5", "loss.num_id_classes=3"]), loop_data)
    assert with_id_classes(load_config("kd_cpu"), loop_data).loss.num_id_classes == 0  # eta 1: no classifier
