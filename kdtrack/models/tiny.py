"""A narrow ResNet-18-like body for CPU training in minutes at 320x192.

Encoder: two stride-2 3x3 stem convs (stride 4), then four stages of
``blocks`` torchvision BasicBlocks with widths w, 2w, 4w, 8w at strides
4, 8, 16, 32 (ResNet-18 layout when blocks = (2, 2, 2, 2)). Neck: a light
FPN: 1x1 laterals to 2w channels, bilinear x2 up-sampling + add from coarse
to fine, then one 3x3 conv (deformable or plain) at stride 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from kdtrack.models.layers import ConvBlock

TINY_BLOCKS = (1, 1, 1, 1)  # blocks per stage: one keeps batch-8 fwd+bwd at 320x192 well under 1 s on 2 cores


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    layers = [BasicBlock(in_channels, out_channels, stride, downsample)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TinyBody(nn.Module):
    """(B, 3, H, W) -> (B, 2*width, H/4, W/4)."""

    def __init__(self, width: int = 32, deformable: bool = True, blocks: tuple[int, ...] = TINY_BLOCKS) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"tiny backbone: width must be >= 1, got {width}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(ConvBlock(3, width, False, stride=2), ConvBlock(width, width, False, stride=2))
        self.stages = nn.ModuleList(
            _stage(widths[i - 1] if i else width, widths[i], blocks[i], 1 if i == 0 else 2) for i in range(4)
        )
        for m in self.modules():  # before the neck exists: its deformable offsets must stay zero
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        neck = 2 * width
        self.laterals = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in widths)
        self.smooth = ConvBlock(neck, neck, deformable)
        self.out_channels = neck

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top = self.laterals[3](feats[3])
        for level in (2, 1, 0):
            lateral = self.laterals[level](feats[level])
            top = F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral
        return self.smooth(top)
