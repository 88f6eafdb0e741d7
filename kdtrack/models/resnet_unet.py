"""ResNet + UNet-style decoder, the IDF (PointID) student body.

The encoder is a torchvision ResNet built with ``weights=None`` (nothing is
ever downloaded). Each skip connection C2..C5 (strides 4..32) goes through one
3x3 conv (deformable by default) to ``neck_channels`` (256 in PointID); the
decoder starts from the C5 skip and, at each finer level, bilinearly
up-samples x2 and adds that level's skip, ending at stride 4.
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

    def __init__(self, depth: str = "resnet50", neck_channels: int = 256, deformable: bool = True) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"unknown ResNet '{depth}' (known: {', '.join(sorted(_RESNETS))})")
        net = _RESNETS[depth](weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth == "resnet50" else 1
        skip_in = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.skips = nn.ModuleList(ConvBlock(c, neck_channels, deformable) for c in skip_in)
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
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        return x
