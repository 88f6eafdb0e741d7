"""Iterative deep aggregation up-sampling over DLA-34 (CenterNet/FairMOT's DLASeg neck).

``IDAUp`` walks a list of maps from fine to coarse: each coarser map is
projected (3x3 conv, deformable by default), up-sampled to the previous map's
stride by a bilinear-initialised depthwise transposed conv, added to it and
merged by another 3x3 conv. ``DLAUp`` applies IDAUp repeatedly so every level
from stride 4 to 32 receives information from all coarser levels; a final
IDAUp merges those into one 64-channel map at stride 4.
"""

from __future__ import annotations

import torch
from torch import nn

from kdtrack.models.dla import DLA
from kdtrack.models.layers import ConvBlock, bilinear_upsample


class IDAUp(nn.Module):
    """Merge ``layers[start:end]`` in place; on return ``layers[end-1]`` holds the merged map
    at the stride of ``layers[start]`` with ``out_channels`` channels."""

    def __init__(self, out_channels: int, in_channels: list[int], up_factors: list[int], deformable: bool) -> None:
        super().__init__()
        for i in range(1, len(in_channels)):
            factor = int(up_factors[i])
            setattr(self, f"proj_{i}", ConvBlock(in_channels[i], out_channels, deformable))
            setattr(self, f"up_{i}", bilinear_upsample(out_channels, factor))
            setattr(self, f"node_{i}", ConvBlock(out_channels, out_channels, deformable))

    def forward(self, layers: list[torch.Tensor], start: int, end: int) -> None:
        for i in range(start + 1, end):
            k = i - start
            up = getattr(self, f"up_{k}")(getattr(self, f"proj_{k}")(layers[i]))
            layers[i] = getattr(self, f"node_{k}")(up + layers[i - 1])


class DLAUp(nn.Module):
    """(list of maps at strides 4..32) -> list of aggregated maps at the same strides."""

    def __init__(self, channels: list[int], scales: list[int], deformable: bool) -> None:
        super().__init__()
        in_channels = list(channels)
        scales = list(scales)
        self.channels = list(channels)
        for i in range(len(channels) - 1):
            j = -i - 2
            setattr(self, f"ida_{i}", IDAUp(channels[j], in_channels[j:],
                                            [s // scales[j] for s in scales[j:]], deformable))
            scales[j + 1:] = [scales[j]] * len(scales[j + 1:])
            in_channels[j + 1:] = [channels[j]] * len(in_channels[j + 1:])

    def forward(self, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        layers = list(layers)
        out = [layers[-1]]
        for i in range(len(layers) - 1):
            getattr(self, f"ida_{i}")(layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        return out


class DLA34Body(nn.Module):
    """DLA-34 + DLAUp + IDAUp: (B, 3, H, W) -> (B, 64, H/4, W/4)."""

    first_level = 2  # log2(down_ratio 4)
    last_level = 5

    def __init__(self, deformable: bool = True) -> None:
        super().__init__()
        self.base = DLA()
        channels = list(self.base.channels[self.first_level:])  # 64, 128, 256, 512
        scales = [2 ** i for i in range(len(channels))]
        self.dla_up = DLAUp(channels, scales, deformable)
        self.out_channels = channels[0]
        n = self.last_level - self.first_level
        self.ida_up = IDAUp(self.out_channels, channels[:n], [2 ** i for i in range(n)], deformable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = self.base(images)
        x = self.dla_up(levels[self.first_level:])
        y = [x[i] for i in range(self.last_level - self.first_level)]
        self.ida_up(y, 0, len(y))
        return y[-1]
