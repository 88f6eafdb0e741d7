"""Convolution blocks shared by the student backbones and necks.

The deformable block is DCNv2 style: a plain 3x3 conv predicts 2*k*k offsets
plus k*k modulation logits; ``torchvision.ops.DeformConv2d`` applies them.
Offsets and mask logits start at exactly zero, so at initialisation the block
samples the regular 3x3 grid and every tap is weighted by sigmoid(0) = 0.5
(as in the DCNv2 reference code).

On CPU, torchvision's deform_conv2d backward is slow (about 2.4 s for a
64-channel 3x3 layer on a batch of 8 at 80x48 on 2 cores), so stride-1 layers
on CPU use ``deform_conv2d_sampled``: the same operator written as one
``grid_sample`` (bilinear, zero outside, like torchvision) followed by a 1x1
matmul, about 5x faster there. Both read the same ``DeformConv2d``
parameters, so checkpoints move freely between CPU and GPU; a test checks the
two agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d


def deform_kernel(device_type: str) -> str:
    """The deformable conv's kernel on a device: ``grid_sample`` (stride-1 layers) on CPU, else torchvision's
    ``deform_conv2d``. Results differ in the last bits between them (an evaluation reports which ran)."""
    return "grid_sample" if device_type == "cpu" else "deform_conv2d"


def deform_conv2d_sampled(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """Modulated deformable conv, stride 1, padding k//2, dilation 1, one offset group.

    x (B, C, H, W); offset (B, 2*k*k, H, W) as (dy, dx) per tap, taps in row-major
    order (torchvision's layout); mask (B, k*k, H, W); weight (O, C, k, k) -> (B, O, H, W).
    """
    b, c, h, w = x.shape
    out_channels, _, k, _ = weight.shape
    taps = k * k
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    tap_dy, tap_dx = torch.meshgrid(r, r, indexing="ij")  # (k, k)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    off = offset.view(b, taps, 2, h, w)
    py = ys + tap_dy.reshape(1, taps, 1, 1) + off[:, :, 0]  # (B, taps, H, W) sample rows, pixels
    px = xs + tap_dx.reshape(1, taps, 1, 1) + off[:, :, 1]
    # grid_sample with align_corners=False: pixel centre i sits at (2i + 1) / size - 1
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).view(b, taps * h, w, 2)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(b, c, taps, h, w) * mask.unsqueeze(1)
    return F.conv2d(cols.reshape(b, c * taps, h, w), weight.reshape(out_channels, c * taps, 1, 1), bias)


class ModulatedDeformConv(nn.Module):
    """DCNv2: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        padding = kernel_size // 2
        taps = kernel_size * kernel_size
        self.offset_mask = nn.Conv2d(in_channels, 3 * taps, kernel_size, stride, padding, bias=True)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self._taps = taps
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_mask = self.offset_mask(x)
        offset = offset_mask[:, : 2 * self._taps]
        mask = torch.sigmoid(offset_mask[:, 2 * self._taps:])
        if deform_kernel(x.device.type) == "grid_sample" and self._stride == 1:
            return deform_conv2d_sampled(x, offset, mask, self.conv.weight, self.conv.bias)
        return self.conv(x, offset, mask)


class ConvBlock(nn.Sequential):
    """3x3 conv (deformable or plain) -> BatchNorm -> ReLU; keeps the spatial size at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, deformable: bool, kernel_size: int = 3,
                 stride: int = 1) -> None:
        if deformable:
            conv: nn.Module = ModulatedDeformConv(in_channels, out_channels, kernel_size, stride, bias=False)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def bilinear_upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Depthwise transposed conv initialised to bilinear interpolation (CenterNet's IDA up-sampler).

    (B, C, H, W) -> (B, C, H*factor, W*factor). The weights stay learnable.
    """
    if factor < 2:
        raise ValueError(f"bilinear_upsample: factor must be >= 2, got {factor}")
    up = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor,
                            padding=factor // 2, groups=channels, bias=False)
    size = 2 * factor
    centre = factor - 0.5
    # separable tent filter: w(i) = 1 - |i - centre| / factor
    ramp = torch.tensor([1 - math.fabs(i - centre) / factor for i in range(size)])
    kernel = torch.outer(ramp, ramp)
    with torch.no_grad():
        up.weight.copy_(kernel.expand_as(up.weight))
    return up
