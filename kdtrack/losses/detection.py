"""Detection loss (METHOD.md section 2): heatmap focal loss + L1 on size and offset.

``L_det = w_c L_c + w_s L_s + w_o L_o``. All terms are normalised by the
number of objects C in the batch (heatmap: the number of cells with target 1,
as CenterNet; regression: the number of object slots), so an image without
boxes gives finite values (0 for the regression terms).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.decode import gather_at


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on ``(B, 1, h, w)`` heatmap logits.

    Positives (target == 1): ``-(1 - p)^alpha log p``; negatives:
    ``-(1 - y)^beta p^alpha log(1 - p)``, dropped where ``ignore`` is 1. The
    sum is divided by max(#positives, 1). Log-probabilities come from
    ``logsigmoid`` (stable, no clamping).
    """
    logits = logits.float()
    target = target.float()
    pos = target.eq(1).float()
    neg = 1.0 - pos
    if ignore is not None:
        neg = neg * (1.0 - ignore.float())
    p = torch.sigmoid(logits)
    pos_term = (1 - p).pow(alpha) * F.logsigmoid(logits) * pos
    neg_term = (1 - target).pow(beta) * p.pow(alpha) * F.logsigmoid(-logits) * neg
    num_pos = pos.sum()
    return -(pos_term.sum() + neg_term.sum()) / num_pos.clamp(min=1.0)


def reg_l1_loss(
    pred_map: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """L1 at object centres: ``pred_map (B,S,h,w)``, ``index``/``mask (B,K)``, ``target (B,K,S)``.

    Sum over objects of the per-object mean absolute error over the S channels,
    divided by the number of objects C (= FairMOT's sum / (C * S)).
    """
    pred = gather_at(pred_map.float(), index)  # (B, K, S)
    m = mask.to(pred.dtype)[..., None]
    err = (pred - target.float()).abs() * m
    num = m.sum()
    return err.sum() / (num * pred.shape[-1]).clamp(min=1.0)


class DetectionLoss(nn.Module):
    """``L_det`` and its three terms; no learnable state."""

    def __init__(
        self,
        focal_alpha: float = 2.0,
        focal_beta: float = 4.0,
        heatmap_weight: float = 1.0,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
        size_loss_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.focal_alpha, self.focal_beta = focal_alpha, focal_beta
        self.heatmap_weight, self.size_weight, self.offset_weight = heatmap_weight, size_weight, offset_weight
        self.size_loss_scale = size_loss_scale

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``outputs``: heatmap (B,1,h,w) logits, size (B,S,h,w), offset (B,2,h,w); targets: ``collate_targets``."""
        hm = focal_loss(
            outputs["heatmap"], targets["heatmap"], targets.get("ignore"), self.focal_alpha, self.focal_beta
        )
        s = self.size_loss_scale
        size = reg_l1_loss(outputs["size"] * s, targets["index"], targets["mask"], targets["size"] * s)
        off = reg_l1_loss(outputs["offset"], targets["index"], targets["mask"], targets["offset"])
        det = self.heatmap_weight * hm + self.size_weight * size + self.offset_weight * off
        return {"det/heatmap": hm, "det/size": size, "det/offset": off, "det": det}
