"""Kendall et al. uncertainty weighting of the detection and identity losses (FairMOT/KD recipe).

``L = 1/2 (L_det e^{-s_det} + L_id e^{-s_id} + s_det + s_id)``. ``s_det`` and
``s_id`` are ``nn.Parameter``s of this module, so a criterion that owns it
saves and restores them with its ``state_dict`` (FairMOT does not checkpoint
them, and a resumed run's loss jumps). Give them to the optimizer.
"""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    def __init__(self, s_det_init: float = -1.85, s_id_init: float = -1.05) -> None:
        super().__init__()
        self.s_det = nn.Parameter(torch.tensor(float(s_det_init)))
        self.s_id = nn.Parameter(torch.tensor(float(s_id_init)))

    def forward(self, loss_det: torch.Tensor, loss_id: torch.Tensor) -> torch.Tensor:
        return 0.5 * (
            loss_det * torch.exp(-self.s_det) + loss_id * torch.exp(-self.s_id) + self.s_det + self.s_id
        )
