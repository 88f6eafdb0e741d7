"""CenterNet/FairMOT output heads: 3x3 conv -> ReLU -> 1x1 conv, one per output.

Initialisation (our choice, following CenterNet's ``fill_fc_weights`` idea):
the 3x3 conv keeps PyTorch's default init; the final 1x1 conv of every head
gets weights ~ N(0, 0.001^2) and bias 0, except the heatmap whose bias is
``heatmap_bias`` (-2.19 = logit of a 0.1 prior), so the initial outputs are
almost exactly 0 (size/offset/embedding) and 0.1 (heatmap probability).
"""

from __future__ import annotations

import torch
from torch import nn

FINAL_WEIGHT_STD = 0.001  # std of the final 1x1 conv weights of every head


class Head(nn.Sequential):
    """(B, in_channels, h, w) -> (B, out_channels, h, w)."""

    def __init__(self, in_channels: int, head_conv: int, out_channels: int, final_bias: float = 0.0) -> None:
        if head_conv < 1:
            raise ValueError(f"head_conv must be >= 1, got {head_conv}")
        final = nn.Conv2d(head_conv, out_channels, 1)
        nn.init.normal_(final.weight, std=FINAL_WEIGHT_STD)
        nn.init.constant_(final.bias, final_bias)
        super().__init__(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True), final)
