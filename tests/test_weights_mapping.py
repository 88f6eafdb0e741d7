"""Weights that users bring: torchvision ImageNet ResNets into the teacher and the ResNet-UNet student,
CenterNet/FairMOT DLA-34 checkpoints into the DLA-34 student, by key mapping; the load report; and the
error when nothing matches (``pretrained_strict=false`` used to load nothing without a word)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torchvision.models import resnet18, resnet50

from kdtrack.config import ModelConfig, TeacherConfig
from kdtrack.models import CheckpointMismatchError, build_student, build_teacher
from kdtrack.models.reid import ReIDNet, load_teacher_weights
from kdtrack.models.student import load_student_weights
from kdtrack.models.weights import centernet_dla_converter, detect_format, load_pretrained

R50_TEACHER = TeacherConfig(backbone="resnet50", last_stride=2, pooling="avg")
UNET = ModelConfig(backbone="resnet50_unet", deformable=False, neck_channels=32, head_conv=16, embedding_dim=8)
DLA = ModelConfig(backbone="dla34", deformable=True, head_conv=256, embedding_dim=64, normalize_embedding=False)


def _randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor perturbed (constant inits such as BatchNorm's 1 / 0 and zero offsets become
    distinct values; scales kept so a deep forward stays finite), so equality after loading means something."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if key.endswith("running_var"):
            value = torch.rand(value.shape, generator=g) + 0.5
        elif value.is_floating_point():
            value = value + (0.01 if value.dim() > 1 else 0.1) * torch.randn(value.shape, generator=g)
        out[key] = value
    return out


def _torchvision_r50(tmp_path, seed: int = 0):
    state = _randomised(resnet50(weights=None).state_dict(), seed)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)
    return state, path


# ----------------------------------------------------------------------------- torchvision -> teacher


def test_torchvision_resnet50_lands_in_the_teacher(tmp_path, capsys):
    state, path = _torchvision_r50(tmp_path)
    assert detect_format(state) == "torchvision"
    model = ReIDNet(dataclasses.replace(R50_TEACHER, pretrained=str(path)))
    report = load_teacher_weights(model, model.cfg)
    body = model.body  # Sequential(conv1, bn1, relu, maxpool, layer1..layer4)
    assert torch.equal(body[0].weight, state["conv1.weight"])
    assert torch.equal(body[1].running_var, state["bn1.running_var"])
    assert torch.equal(body[4][0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(body[5][0].downsample[0].weight, state["layer2.0.downsample.0.weight"])
    assert torch.equal(body[7][2].bn3.bias, state["layer4.2.bn3.bias"])
    # the ImageNet classifier has no place; pooling and BNNeck are the teacher's own
    assert report.unexpected == ("fc.bias", "fc.weight")
    assert set(report.missing) == {"bnneck.weight", "bnneck.bias", "bnneck.running_mean", "bnneck.running_var"}
    assert not report.mismatched
    weights = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(report.loaded) == len(weights) == 265
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"weights {path} (torchvision) -> ReIDNet: 265 loaded, 4 missing, 2 unexpected, 0 shape-mismatched")
    # the same network: the teacher's body computes torchvision's feature map
    reference = resnet50(weights=None)
    reference.load_state_dict(state)
    reference.eval(), model.eval()
    x = torch.rand(1, 3, 64, 32)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        torch.testing.assert_close(model.body(x), expected)
    # build_teacher does the same from the config
    built = build_teacher(dataclasses.replace(R50_TEACHER, pretrained=str(path)))
    assert torch.equal(built.body[6][3].conv2.weight, state["layer3.3.conv2.weight"])


def test_torchvision_resnet50_into_ibn_teacher_splits_bn1(tmp_path):
    state, path = _torchvision_r50(tmp_path)
    cfg = TeacherConfig(backbone="resnet50_ibn", pretrained=str(path))
    model = ReIDNet(cfg)
    report = load_teacher_weights(model, cfg)
    ibn = model.body[4][0].bn1  # layer1.0: 64 channels, IBN-a: 32 instance-normed, 32 batch-normed
    assert ibn.half == 32
    torch.testing.assert_close(ibn.IN.weight, state["layer1.0.bn1.weight"][:32], rtol=0, atol=0)
    torch.testing.assert_close(ibn.IN.bias, state["layer1.0.bn1.bias"][:32], rtol=0, atol=0)
    torch.testing.assert_close(ibn.BN.weight, state["layer1.0.bn1.weight"][32:], rtol=0, atol=0)
    torch.testing.assert_close(ibn.BN.running_mean, state["layer1.0.bn1.running_mean"][32:], rtol=0, atol=0)
    torch.testing.assert_close(model.body[6][5].bn1.BN.running_var, state["layer3.5.bn1.running_var"][128:],
                               rtol=0, atol=0)
    assert torch.equal(model.body[7][0].bn1.weight, state["layer4.0.bn1.weight"])  # layer4 has no IBN
    assert not report.mismatched and report.unexpected == ("fc.bias", "fc.weight")
    assert set(report.missing) == {"pool.p", "bnneck.weight", "bnneck.bias", "bnneck.running_mean",
                                   "bnneck.running_var"}  # the GeM exponent and the BNNeck: the teacher's own


def test_ibn_net_release_keys_land_by_name(tmp_path):
    """IBN-Net's resnet50_ibn_a weights use torchvision names plus ``bn1.IN.*`` / ``bn1.BN.*``."""
    own = ReIDNet(TeacherConfig(backbone="resnet50_ibn")).state_dict()
    names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    release = _randomised({re.sub(r"^body\.(\d)", lambda m: names[m[1]], k): v
                           for k, v in own.items() if k.startswith("body.")})
    assert "layer1.0.bn1.IN.weight" in release and "layer3.5.bn1.BN.running_mean" in release
    path = tmp_path / "resnet50_ibn_a.pth"
    torch.save(release, path)
    model = build_teacher(TeacherConfig(backbone="resnet50_ibn", pretrained=str(path)))
    assert torch.equal(model.body[4][2].bn1.IN.weight, release["layer1.2.bn1.IN.weight"])
    assert torch.equal(model.body[6][0].bn1.BN.running_mean, release["layer3.0.bn1.BN.running_mean"])


def test_teacher_checkpoint_must_be_a_trained_teacher(tmp_path):
    _, path = _torchvision_r50(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"resnet50-imagenet\.pth: a torchvision checkpoint.*"
                                                      r"takes kdtrack / fastreid checkpoints; .*teacher\.pretrained"):
        build_teacher(dataclasses.replace(R50_TEACHER, checkpoint=str(path)))


# ----------------------------------------------------------------------------- torchvision -> ResNet-UNet


def test_torchvision_resnet50_lands_in_the_unet_encoder(tmp_path):
    state, path = _torchvision_r50(tmp_path, seed=1)
    model = build_student(dataclasses.replace(UNET, pretrained=str(path)))  # strict applies to kdtrack files only
    body = model.body
    assert torch.equal(body.stem[0].weight, state["conv1.weight"])
    assert torch.equal(body.stem[1].running_mean, state["bn1.running_mean"])
    assert torch.equal(body.layer1[0].downsample[1].weight, state["layer1.0.downsample.1.weight"])
    assert torch.equal(body.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])
    assert torch.equal(body.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    report = load_student_weights(build_student(UNET), str(path))
    assert len(report.loaded) == 265 and report.unexpected == ("fc.bias", "fc.weight") and not report.mismatched
    new_parts = ("body.skips", "body.merges", "heads.", "embedding_norm.")  # what ImageNet has no weights for
    assert report.missing and all(k.startswith(new_parts) for k in report.missing)


def test_torchvision_weights_do_not_fit_other_students(tmp_path):
    _, path = _torchvision_r50(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"a torchvision checkpoint .*does not fit Student; "
                                                      r"it takes kdtrack checkpoints"):
        build_student(ModelConfig(backbone="tiny", pretrained=str(path), pretrained_strict=False))


# ----------------------------------------------------------------------------- CenterNet / FairMOT DLA-34


def _to_centernet(key: str) -> str:
    """Our Student key -> CenterNet DLASeg's (the inverse of ``centernet_dla_converter``)."""
    heads = {"heatmap": "hm", "size": "wh", "offset": "reg", "embedding": "id"}
    if key.startswith("heads."):
        _, name, rest = key.split(".", 2)
        return f"{heads[name]}.{rest}"
    key = key.removeprefix("body.")
    key = re.sub(r"((?:proj|node)_\d+)\.0\.offset_mask\.", r"\1.conv.conv_offset_mask.", key)
    key = re.sub(r"((?:proj|node)_\d+)\.0\.conv\.", r"\1.conv.", key)
    return re.sub(r"((?:proj|node)_\d+)\.1\.", r"\1.actf.0.", key)


def _ctdet_checkpoint(tmp_path, source_state):
    """A ``ctdet_coco_dla_2x.pth``-style file computing the same body as ``source_state``: DataParallel's
    ``module.`` prefixes, a DCN bias per deformable conv (its BatchNorm mean shifted to match), the
    ImageNet ``base.fc``, COCO's 80-class ``hm`` and 2-channel ``wh``, no ``id`` head."""
    g = torch.Generator().manual_seed(7)
    ckpt = {_to_centernet(k): v.clone() for k, v in source_state.items() if not k.startswith("heads.embedding")}
    biases = {}
    for key in list(ckpt):
        m = re.match(r"^(.*(?:proj|node)_\d+)\.conv\.weight$", key)
        if m:
            bias = torch.randn(ckpt[key].shape[0], generator=g)
            ckpt[f"{m[1]}.conv.bias"] = bias
            ckpt[f"{m[1]}.actf.0.running_mean"] = ckpt[f"{m[1]}.actf.0.running_mean"] + bias
            biases[m[1]] = bias
    ckpt["base.fc.weight"], ckpt["base.fc.bias"] = torch.randn(1000, 512, 1, 1), torch.randn(1000)
    ckpt["hm.2.weight"], ckpt["hm.2.bias"] = torch.randn(80, 256, 1, 1), torch.randn(80)
    ckpt["wh.2.weight"], ckpt["wh.2.bias"] = torch.randn(2, 256, 1, 1), torch.randn(2)
    path = tmp_path / "ctdet_coco_dla_2x.pth"
    torch.save({"epoch": 230, "state_dict": {f"module.{k}": v for k, v in ckpt.items()}}, path)
    return ckpt, path, biases


def test_centernet_dla34_checkpoint_lands_in_the_student(tmp_path):
    torch.manual_seed(0)
    source = build_student(DLA)
    source.load_state_dict(_randomised(source.state_dict(), seed=3))
    ckpt, path, biases = _ctdet_checkpoint(tmp_path, source.state_dict())
    assert "module.dla_up.ida_0.proj_1.conv.conv_offset_mask.weight" in torch.load(path, weights_only=True)[
        "state_dict"]
    assert detect_format(ckpt) == "centernet" and len(biases) == 16  # (1+2+3) DLAUp + 2 IDAUp proj/node pairs

    fresh = build_student(DLA)
    head_init = fresh.heads["heatmap"][2].weight.detach().clone()
    report = load_pretrained(fresh, path, converters={"centernet": centernet_dla_converter()})
    s = fresh.state_dict()
    assert torch.equal(s["body.base.base_layer.0.weight"], ckpt["base.base_layer.0.weight"])
    assert torch.equal(s["body.base.level5.tree1.conv1.weight"], ckpt["base.level5.tree1.conv1.weight"])
    assert torch.equal(s["body.dla_up.ida_0.proj_1.0.conv.weight"], ckpt["dla_up.ida_0.proj_1.conv.weight"])
    assert torch.equal(s["body.ida_up.node_2.0.offset_mask.bias"], ckpt["ida_up.node_2.conv.conv_offset_mask.bias"])
    assert torch.equal(s["body.ida_up.up_2.weight"], ckpt["ida_up.up_2.weight"])
    assert torch.equal(s["body.dla_up.ida_2.node_3.1.weight"], ckpt["dla_up.ida_2.node_3.actf.0.weight"])
    # the DCN bias is folded into the BatchNorm mean: running_mean - bias
    torch.testing.assert_close(s["body.ida_up.proj_1.1.running_mean"],
                               ckpt["ida_up.proj_1.actf.0.running_mean"] - biases["ida_up.proj_1"])
    assert torch.equal(s["heads.offset.2.weight"], ckpt["reg.2.weight"])
    assert torch.equal(s["heads.heatmap.0.weight"], ckpt["hm.0.weight"])
    assert torch.equal(s["heads.heatmap.2.weight"], head_init)  # 80 COCO classes: reported, not loaded
    assert report.source_format == "centernet"
    assert report.unexpected == ("base.fc.bias", "base.fc.weight")
    assert sorted(m.split(" ")[0] for m in report.mismatched) == ["hm.2.bias", "hm.2.weight", "wh.2.bias",
                                                                   "wh.2.weight"]
    assert set(report.missing) == {f"heads.{h}.{i}.{p}" for h, i in
                                   [("embedding", 0), ("embedding", 2), ("heatmap", 2), ("size", 2)]
                                   for p in ("weight", "bias")}
    # every body tensor landed: the loaded body computes the source body (eval mode)
    fresh.eval(), source.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.body(x), source.body(x), rtol=1e-4, atol=1e-4)
    # build_student reads the same file through model.pretrained (strict or not: CenterNet loads its overlap)
    built = build_student(dataclasses.replace(DLA, pretrained=str(path)))
    assert torch.equal(built.body.dla_up.ida_1.node_2[0].conv.weight, ckpt["dla_up.ida_1.node_2.conv.weight"])


def test_centernet_into_a_plain_conv_neck(tmp_path):
    """``model.deformable=false``: the DCN kernels go to the plain convs, offsets are reported unexpected."""
    source = build_student(DLA)
    source.load_state_dict(_randomised(source.state_dict(), seed=4))
    ckpt, path, biases = _ctdet_checkpoint(tmp_path, source.state_dict())
    plain = build_student(dataclasses.replace(DLA, deformable=False))
    report = load_student_weights(plain, str(path))
    s = plain.state_dict()
    assert torch.equal(s["body.dla_up.ida_0.proj_1.0.weight"], ckpt["dla_up.ida_0.proj_1.conv.weight"])
    torch.testing.assert_close(s["body.ida_up.node_1.1.running_mean"],
                               ckpt["ida_up.node_1.actf.0.running_mean"] - biases["ida_up.node_1"])
    offsets = [k for k in report.unexpected if "conv_offset_mask" in k]
    assert len(offsets) == 2 * 16 and not any(k.endswith(".conv.bias") for k in report.unexpected)


# ----------------------------------------------------------------------------- nothing matches


def test_zero_matching_tensors_is_an_error_even_when_not_strict(tmp_path):
    cfg = ModelConfig(backbone="tiny", width=8, deformable=False, head_conv=8, embedding_dim=8,
                      pretrained_strict=False)
    other = tmp_path / "some_other_model.pt"
    torch.save({"model": {"encoder.conv.weight": torch.zeros(3), "decoder.fc.bias": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointMismatchError, match=r"some_other_model\.pt: no tensor of this kdtrack checkpoint "
                                                      r"fits Student \(checkpoint keys: encoder\.conv\.weight, "
                                                      r"decoder\.fc\.bias; model keys: body\."):
        build_student(dataclasses.replace(cfg, pretrained=str(other)))
    # same names, every shape different (a wider body): only the BatchNorm step counters fit, and they
    # are not weights
    wider = tmp_path / "wider.pt"
    torch.save({k: v for k, v in build_student(dataclasses.replace(cfg, width=16)).state_dict().items()
                if k.startswith("body.")}, wider)
    with pytest.raises(CheckpointMismatchError, match=r"wider\.pt: no tensor of this kdtrack checkpoint fits "
                                                      r"Student .*; shape mismatches: body\."):
        build_student(dataclasses.replace(cfg, pretrained=str(wider)))


def test_foreign_backbone_shapes_must_fit_when_strict(tmp_path):
    """ResNet-18 weights for a ResNet-50 encoder share many shapes by chance (77 tensors): strict refuses the
    file, non-strict loads that overlap and reports the 23 mismatches."""
    r18 = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), r18)
    with pytest.raises(CheckpointMismatchError, match=r"resnet18\.pth: shape mismatch for 23 key\(s\): "
                                                      r"layer1\.0\.conv1\.weight -> body\.layer1\.0\.conv1\.weight "
                                                      r"\(64, 64, 3, 3\) vs model \(64, 64, 1, 1\)"):
        build_student(dataclasses.replace(UNET, pretrained=str(r18)))
    report = load_student_weights(build_student(UNET), str(r18), strict=False)
    assert (len(report.loaded), len(report.mismatched)) == (77, 23)


def test_fastreid_teacher_checkpoint_loads_by_key_mapping(tmp_path):
    """A FastReID model_final.pth (backbone.* ResNet names, heads.pool_layer.p of shape (1,), BNNeck under
    heads.bottleneck.0, classifier heads.weight, pixel_mean/std buffers) becomes a KD teacher, exactly."""
    import dataclasses

    from kdtrack.config import load_config
    from kdtrack.models import build_teacher
    from kdtrack.models.weights import CheckpointMismatchError, detect_format

    torch.manual_seed(0)
    cfg = load_config("teacher_cpu").teacher
    source = build_teacher(cfg, num_classes=7).eval()
    with torch.no_grad():
        source.pool.p.fill_(3.5)
        source.bnneck.running_mean.normal_()
    assert source.reduction is not None  # teacher_cpu: 128-d out of a wider body: FastReID's EMBEDDING_DIM neck
    names = {"body.0.": "backbone.conv1.", "body.1.": "backbone.bn1.", "body.4.": "backbone.layer1.",
             "body.5.": "backbone.layer2.", "body.6.": "backbone.layer3.", "body.7.": "backbone.layer4.",
             "bnneck.": "heads.bottleneck.1.", "classifier.weight": "heads.weight"}
    state = {}
    for key, value in source.state_dict().items():
        if key == "pool.p":
            state["heads.pool_layer.p"] = value.reshape(1)
            continue
        if key == "reduction.weight":  # FastReID: a 1x1 conv
            state["heads.bottleneck.0.weight"] = value[:, :, None, None]
            continue
        prefix = next(p for p in names if key.startswith(p))
        state[names[prefix] + key[len(prefix):]] = value
    state["pixel_mean"], state["pixel_std"] = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.4, 57.1, 57.4])
    assert detect_format(state) == "fastreid"
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    teacher = build_teacher(dataclasses.replace(cfg, checkpoint=str(path))).eval()  # KD: classifier dropped
    crops = torch.rand(2, 3, cfg.crop_height, cfg.crop_width)
    torch.testing.assert_close(teacher.embed(crops), source.embed(crops))
    assert float(teacher.pool.p.detach()) == 3.5

    del state["backbone.layer4.0.conv1.weight"]  # another architecture: a trained teacher must be whole
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError, match="leaves 1 teacher tensors untrained.*body.7.0.conv1.weight"):
        build_teacher(dataclasses.replace(cfg, checkpoint=str(path)))
