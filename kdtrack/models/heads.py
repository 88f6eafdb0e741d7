"""CenterNet/FairMOT output heads: 3x3 conv -> ReLU -> 1x1 conv, one per output.

Initialisation as FairMOT's heads: the 3x3 conv keeps PyTorch's default
init; the final 1x1 conv of the size/offset/identity heads gets weights
~ N(0, 0.001^2) and bias 0 (``fill_fc_weights``), so they start near 0; the
heatmap's final conv keeps PyTorch's default weights and gets the bias
``heatmap_bias`` (-2.19 = logit of a 0.1 prior). Shrinking the heatmap
weights too (an earlier choice) starved the body of heatmap gradient: on the
tiny world it reached a peak score of 0.18 after 150 iterations, against
0.30 with this init.
"""

from __future__ import annotations

from torch import nn

FINAL_WEIGHT_STD = 0.001  # std of the final 1x1 conv weights of every head


class Head(nn.Sequential):
    """(B, in_channels, h, w) -> (B, out_channels, h, w)."""

    def __init__(self, in_channels: int, head_conv: int, out_channels: int, final_bias: float = 0.0,
                 small_init: bool = True) -> None:
        if head_conv < 1:
            raise ValueError(f"head_conv must be >= 1, got {head_conv}")
        final = nn.Conv2d(head_conv, out_channels, 1)
        if small_init:
            nn.init.normal_(final.weight, std=FINAL_WEIGHT_STD)
        nn.init.constant_(final.bias, final_bias)
        super().__init__(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True), final)
