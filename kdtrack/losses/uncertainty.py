"""Kendall et al. uncertainty weighting of the training losses (FairMOT/KD recipe; the hybrid's three terms).

``L = 1/2 sum_t (L_t e^{-s_t} + s_t)`` over the terms ``t``: detection and identity
(``L = 1/2 (L_det e^{-s_det} + L_id e^{-s_id} + s_det + s_id)``), and for the hybrid
recipe a third, its contrastive term (``s_contrastive``). The ``s_t`` are
``nn.Parameter``s of this module, so a criterion that owns it saves and restores
them with its ``state_dict`` (FairMOT does not checkpoint them, and a resumed run's
loss jumps). Give them to the optimizer.
"""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    def __init__(self, s_det_init: float = -1.85, s_id_init: float = -1.05,
                 s_contrastive_init: float | None = None) -> None:
        super().__init__()
        self.s_det = nn.Parameter(torch.tensor(float(s_det_init)))
        self.s_id = nn.Parameter(torch.tensor(float(s_id_init)))
        # only when built with a third term: the two-term checkpoints keep their state_dict keys
        self.s_contrastive = (nn.Parameter(torch.tensor(float(s_contrastive_init)))
                              if s_contrastive_init is not None else None)

    def forward(self, loss_det: torch.Tensor, loss_id: torch.Tensor,
                loss_contrastive: torch.Tensor | None = None) -> torch.Tensor:
        if (loss_contrastive is None) != (self.s_contrastive is None):
            raise ValueError("UncertaintyWeighting: a contrastive term needs s_contrastive_init, and the other way "
                             "round")
        total = loss_det * torch.exp(-self.s_det) + loss_id * torch.exp(-self.s_id) + self.s_det + self.s_id
        if loss_contrastive is not None:
            total = total + loss_contrastive * torch.exp(-self.s_contrastive) + self.s_contrastive
        return 0.5 * total
