"""A momentum (EMA) key encoder for the contrastive queue, as MoCo builds it.

The queue of negatives must hold embeddings of (nearly) the current network.
Filled with detached embeddings of the fast-moving student itself, it goes
stale in a consistent direction, and the student can lower the loss by moving
every person away from its own past outputs instead of separating people: the
id-free embedding collapsed that way (between-person cosine 1.000, docs/results/
idf-stage1.md, "Why the id-free embedding collapsed"). MoCo's remedy: the queue is filled by
a slowly moving copy ``theta_k <- m theta_k + (1 - m) theta_q``.

The copy is trained by nothing but ``update``; it is part of the training
state (checkpointed, restored on resume) and lives on every DDP rank, where
it stays identical because the student's weights are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdtrack.checkpoint import unwrap


class MomentumEncoder(nn.Module):
    """EMA copy of a student; ``forward(images)`` returns its identity map ``(B, k, h, w)``."""

    def __init__(self, student: nn.Module, momentum: float) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"loss.key_momentum must be in (0, 1) to build a key encoder, got {momentum}")
        self.momentum = float(momentum)
        self.encoder = copy.deepcopy(unwrap(student))
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student``'s weights; buffers (BatchNorm statistics) are copied. Fused
        (``torch._foreach_*``: a few kernels for the ~1,000 tensors of a large student, not two each);
        the arithmetic is the per-tensor ``k.mul_(m).add_(p, alpha=1 - m)``."""
        source = unwrap(student)
        m = self.momentum
        keys = list(self.encoder.parameters())
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, [p.detach() for p in source.parameters()], alpha=1.0 - m)
        key_buffers, buffers = list(self.encoder.buffers()), list(source.buffers())
        if key_buffers:
            torch._foreach_copy_(key_buffers, buffers)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The identity map alone: the detection heads' outputs would be thrown away."""
        self.encoder.train(self.training)
        return self.encoder(images, heads=("embedding",))["embedding"]
