"""ResNet + UNet-style decoder, the IDF (PointID) student body.

The encoder is a torchvision ResNet built with ``weights=None`` (nothing is
ever downloaded). Each skip connection C2..C5 (strides 4..32) goes through one
3x3 conv (deformable by default) to ``neck_channels`` (256 in PointID); the
decoder starts from the C5 skip and, at each finer level, bilinearly
up-samples x2 and merges that level's skip, ending at stride 4.

Merge (``ModelConfig.unet_merge``):

- ``"concat"`` (PointID, CVPR 2022, Fig. 2 text: the up-sampled map is
  concatenated with the skip layer's output): ``cat([up, skip])`` has
  ``2 * neck_channels`` channels; one plain 3x3 conv -> BatchNorm -> ReLU
  (``merges[level]``) brings it back to ``neck_channels``, so every level
  and the heads keep the same width. The merge conv is plain, not
  deformable: PointID puts the deformable conv on the skip, which already
  has one.
- ``"add"``: ``up + skip``, no merge conv (the module layout, and so the
  checkpoint keys, of the decoder before ``unet_merge`` existed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

from kdtrack.models.layers import ConvBlock

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


class ResNetUNetBody(nn.Module):
    """(B, 3, H, W) -> (B, neck_channels, H/4, W/4)."""

    def __init__(self, depth: str = "resnet50", neck_channels: int = 256, deformable: bool = True,
                 merge: str = "concat") -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"unknown ResNet '{depth}' (known: {', '.join(sorted(_RESNETS))})")
        if merge not in ("concat", "add"):
            raise ValueError(f"unet_merge must be 'concat' or 'add', got {merge!r}")
        net = _RESNETS[depth](weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth == "resnet50" else 1
        skip_in = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.skips = nn.ModuleList(ConvBlock(c, neck_channels, deformable) for c in skip_in)
        self.merge = merge
        # merges[level] for levels 0..2 (C2..C4); the C5 skip starts the decoder and merges nothing.
        self.merges = nn.ModuleList(
            ConvBlock(2 * neck_channels, neck_channels, deformable=False) for _ in range(3)
        ) if merge == "concat" else None
        self.out_channels = neck_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c2 = self.layer1(self.stem(images))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        feats = [c2, c3, c4, c5]
        x = self.skips[3](c5)
        for level in (2, 1, 0):
            skip = self.skips[level](feats[level])
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.merges[level](torch.cat([up, skip], dim=1)) if self.merges is not None else up + skip
        return x
