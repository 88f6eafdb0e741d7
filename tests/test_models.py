"""Student network: shapes for every backbone, head init, normalisation, gradients, weight loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.ops import deform_conv2d

from kdtrack.config import ModelConfig
from kdtrack.models import CheckpointMismatchError, build_student, load_weights
from kdtrack.models.dla import DLA
from kdtrack.models.layers import ModulatedDeformConv, bilinear_upsample, deform_conv2d_sampled

torch.set_num_threads(2)

SMALL = dict(head_conv=32, embedding_dim=16)  # small heads keep the big backbones fast here


@pytest.mark.parametrize("backbone,deformable", [
    ("tiny", False), ("tiny", True), ("dla34", False), ("dla34", True),
    ("resnet50_unet", False), ("resnet50_unet", True), ("resnet18_unet", True), ("resnet34_unet", False),
])
def test_student_output_shapes(backbone, deformable):
    torch.manual_seed(0)
    model = build_student(ModelConfig(backbone=backbone, deformable=deformable, **SMALL)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    # stride 4: 64x96 -> 16x24
    assert set(out) == {"heatmap", "size", "offset", "embedding"}
    assert out["heatmap"].shape == (1, 1, 16, 24)
    assert out["size"].shape == (1, 4, 16, 24)
    assert out["offset"].shape == (1, 2, 16, 24)
    assert out["embedding"].shape == (1, 16, 16, 24)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("backbone,merge,deformable", [
    ("resnet18_unet", "concat", False), ("resnet18_unet", "concat", True),
    ("resnet18_unet", "add", False), ("resnet18_unet", "add", True), ("resnet50_unet", "add", True),
])
def test_unet_merge_modes(backbone, merge, deformable):
    torch.manual_seed(0)
    neck = 32
    cfg = ModelConfig(backbone=backbone, deformable=deformable, unet_merge=merge, neck_channels=neck, **SMALL)
    model = build_student(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out["heatmap"].shape == (2, 1, 16, 24) and out["embedding"].shape == (2, 16, 16, 24)
    assert all(torch.isfinite(v).all() for v in out.values())
    body = model.body
    assert body.out_channels == neck
    other = build_student(dataclasses.replace(cfg, unet_merge="add" if merge == "concat" else "concat")).body
    concat, add = (body, other) if merge == "concat" else (other, body)
    # PointID's concat: one plain 3x3 conv-BN-ReLU per finer level maps 2*neck channels back to neck
    assert add.merges is None and not any("merges" in k for k in add.state_dict())
    assert len(concat.merges) == 3
    for block in concat.merges:
        conv = block[0]
        assert isinstance(conv, torch.nn.Conv2d) and (conv.in_channels, conv.out_channels) == (2 * neck, neck)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(concat) - count(add) == 3 * (2 * neck * neck * 9 + 2 * neck)  # conv (no bias) + BN
    assert {k for k in add.state_dict()} == {k for k in concat.state_dict() if "merges" not in k}
    # the graph is the documented one: up = bilinear x2, then merges(cat[up, skip]) or up + skip
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        c2 = body.layer1(body.stem(x))
        feats = [c2, body.layer2(c2)]
        feats += [body.layer3(feats[1])]
        feats += [body.layer4(feats[2])]
        y = body.skips[3](feats[3])
        for level in (2, 1, 0):
            skip = body.skips[level](feats[level])
            up = torch.nn.functional.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = body.merges[level](torch.cat([up, skip], 1)) if merge == "concat" else up + skip
        torch.testing.assert_close(body(x), y)


def test_unet_merge_is_validated_and_defaults_to_concat():
    assert ModelConfig().unet_merge == "concat"
    from kdtrack.models.resnet_unet import ResNetUNetBody

    with pytest.raises(ValueError, match="unet_merge"):
        ResNetUNetBody("resnet18", 16, False, "sum")


def test_size_channels_two_and_raw_embedding():
    cfg = ModelConfig(size_channels=2, normalize_embedding=False, **SMALL)
    out = build_student(cfg)(torch.rand(1, 3, 64, 64))
    assert out["size"].shape == (1, 2, 16, 16)
    norms = out["embedding"].norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)  # raw: tiny values at init


def test_embedding_is_unit_norm_when_normalised():
    out = build_student(ModelConfig(**SMALL))(torch.rand(2, 3, 64, 96))
    norms = out["embedding"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_heatmap_bias_init():
    model = build_student(ModelConfig(**SMALL))
    final = model.heads["heatmap"][-1]
    torch.testing.assert_close(final.bias, torch.full_like(final.bias, -2.19))
    for name in ("size", "offset", "embedding"):
        assert model.heads[name][-1].bias.abs().max() == 0
        # FairMOT's fill_fc_weights: N(0, 0.001^2) on the non-heatmap heads
        assert model.heads[name][-1].weight.std().item() < 0.002
    # the heatmap's final conv keeps PyTorch's default (kaiming-uniform) weights,
    # bound 1/sqrt(fan_in): far larger than 0.001, so the body gets heatmap gradient
    fan_in = final.weight.shape[1]
    assert final.weight.abs().max().item() <= 1 / fan_in ** 0.5 + 1e-6
    assert final.weight.std().item() > 0.1 / fan_in ** 0.5
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.rand(1, 3, 64, 64))["heatmap"])
    # sigmoid(-2.19) = 1 / (1 + e^2.19) = 1 / (1 + 8.935) = 0.1007: the prior the scores start around
    assert abs(prob.mean().item() - 0.1007) < 0.05


def test_gradients_reach_every_head_and_the_body():
    torch.manual_seed(0)
    model = build_student(ModelConfig(**SMALL))
    out = model(torch.rand(2, 3, 64, 64))
    loss = sum((v * torch.randn_like(v)).sum() for v in out.values())
    loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("offset_mask.weight") or name.endswith("offset_mask.bias"):
            continue  # zero-initialised offsets: checked below through their own gradient
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    offsets = [p for n, p in model.named_parameters() if "offset_mask" in n]
    assert offsets and all(p.grad is not None for p in offsets)


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError, match="known: dla34, resnet18_unet, resnet34_unet, resnet50_unet, tiny"):
        build_student(ModelConfig(backbone="vgg16"))


def test_input_size_must_be_multiple_of_32():
    model = build_student(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))


def test_sampled_deform_conv_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    offset = (torch.randn(2, 18, 9, 11, dtype=torch.float64) * 2).requires_grad_()  # reaches past the borders
    mask = torch.rand(2, 9, 9, 11, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64)
    ours = deform_conv2d_sampled(x, offset, mask, weight, bias)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours.square().sum(), (x, offset, mask, weight))
    g_ref = torch.autograd.grad(ref.square().sum(), (x, offset, mask, weight))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_deform_block_starts_as_half_weighted_plain_conv():
    torch.manual_seed(0)
    block = ModulatedDeformConv(3, 4)
    x = torch.rand(1, 3, 8, 8)
    plain = torch.nn.functional.conv2d(x, block.conv.weight, None, padding=1)
    # zero offsets, mask sigmoid(0) = 0.5 on every tap
    torch.testing.assert_close(block(x), 0.5 * plain + block.conv.bias.view(1, -1, 1, 1))


def test_bilinear_upsample_keeps_constant_interior():
    up = bilinear_upsample(2, 2)
    out = up(torch.ones(1, 2, 4, 4))
    assert out.shape == (1, 2, 8, 8)
    # tent weights (0.25, 0.75, 0.75, 0.25): every interior output sums 0.75 + 0.25 = 1 per axis
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones(1, 2, 6, 6))


def test_dla34_levels():
    levels = DLA()(torch.rand(1, 3, 64, 64))
    assert [t.shape[1] for t in levels] == [16, 32, 64, 128, 256, 512]
    assert [t.shape[-1] for t in levels] == [64, 32, 16, 8, 4, 2]


def test_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    source = build_student(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    raw, wrapped = tmp_path / "raw.pt", tmp_path / "wrapped.pt"
    torch.save(source.state_dict(), raw)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, wrapped)
    for path in (raw, wrapped):
        loaded = build_student(dataclasses.replace(cfg, pretrained=str(path))).eval()
        with torch.no_grad():
            for key, value in source(x).items():
                torch.testing.assert_close(loaded(x)[key], value)


def test_pretrained_mismatch_messages(tmp_path):
    cfg = ModelConfig(**SMALL)
    state = build_student(cfg).state_dict()
    missing = dict(state)
    del missing["heads.offset.2.weight"]
    missing["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(missing, path)
    with pytest.raises(CheckpointMismatchError, match=r"partial\.pt.*1 missing key\(s\): heads\.offset\.2\.weight"
                                                      r".*1 unexpected key\(s\): extra\.weight"):
        build_student(dataclasses.replace(cfg, pretrained=str(path)))
    # non-strict loads the overlap and reports what it skipped
    model = build_student(cfg)
    assert load_weights(model, path, strict=False) == (["heads.offset.2.weight"], ["extra.weight"])
    torch.testing.assert_close(model.heads["size"][0].weight, state["heads.size.0.weight"])

    bigger = build_student(dataclasses.replace(cfg, embedding_dim=32)).state_dict()
    torch.save(bigger, tmp_path / "bigger.pt")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch.*heads\.embedding\.2\.weight"):
        build_student(dataclasses.replace(cfg, pretrained=str(tmp_path / "bigger.pt")))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_student(dataclasses.replace(cfg, pretrained=str(tmp_path / "nope.pt")))
