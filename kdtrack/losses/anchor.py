"""The detection anchor (``loss.detection_anchor_weight``): a fine-tune that trains the identity keeps the
detector of the network it started from (METHOD.md, "In kdtrack"; kdtrack's, not PointID's).

IDF stage 2 trains the shared body for identity with the detection heads frozen, and the heads it leaves
read a body that has moved: the longer stage 2 runs, the less stage 3 can recover (docs/results/
identity-learning.md). Learning without forgetting (Li & Hoiem, 2016) keeps an old task by matching the old
network's outputs on the new task's images: here a frozen copy of the starting network gives the heatmap,
size and offset the student must keep on every training image, with no box labels needed (the composites of
stage 2's background swap included).

With ``t`` the anchor's heatmap logits, ``s`` the student's, ``q = sigmoid(t)`` and ``N = max(sum q, 1)``
(over the batch; about the number of people, each peak and its Gaussian):

    L_c = sum_cells KL(Bernoulli(q) || Bernoulli(sigmoid(s))) / N
    L_s = sum_cells q * mean_channels |size_s - size_t| * size_loss_scale / N    (offset: L_o, no scale)
    L_anchor = w_c L_c + w_s L_s + w_o L_o       (FairMOT's detection weights 1, 0.1, 1)

The KL is the soft-target cross-entropy less the anchor's own entropy: 0 when the outputs agree, and the
same gradient as the cross-entropy. Size and offset count where the anchor sees a person.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

ANCHOR_HEADS = ("heatmap", "size", "offset")
ANCHOR_WEIGHTS = (1.0, 0.1, 1.0)  # w_c, w_s, w_o: FairMOT's detection weights


def bernoulli_kl_with_logits(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bernoulli(sigmoid(target_logits)) || Bernoulli(sigmoid(logits)))``, from log-sigmoids
    (stable for large logits)."""
    q = torch.sigmoid(target_logits)
    return (q * (F.logsigmoid(target_logits) - F.logsigmoid(logits))
            + (1 - q) * (F.logsigmoid(-target_logits) - F.logsigmoid(-logits)))


def detection_anchor_loss(outputs: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor],
                          size_loss_scale: float = 1.0,
                          weights: tuple[float, float, float] = ANCHOR_WEIGHTS) -> dict[str, torch.Tensor]:
    """``{"anchor/heatmap", "anchor/size", "anchor/offset", "anchor"}``: the student's detection outputs
    (heatmap logits ``(B,1,h,w)``, size ``(B,S,h,w)``, offset ``(B,2,h,w)``) against the frozen anchor's on the
    same images (module docstring)."""
    t, s = anchor["heatmap"].float().detach(), outputs["heatmap"].float()
    if t.shape != s.shape:
        raise ValueError(f"detection anchor: heatmap {tuple(t.shape)} against the student's {tuple(s.shape)}")
    q = torch.sigmoid(t)
    n = q.sum().clamp(min=1.0)
    hm = bernoulli_kl_with_logits(t, s).sum() / n

    def regression(name: str, scale: float) -> torch.Tensor:
        err = (outputs[name].float() - anchor[name].float().detach()).abs().mean(dim=1, keepdim=True) * scale
        return (q * err).sum() / n

    size, off = regression("size", size_loss_scale), regression("offset", 1.0)
    w_c, w_s, w_o = weights
    return {"anchor/heatmap": hm, "anchor/size": size, "anchor/offset": off,
            "anchor": w_c * hm + w_s * size + w_o * off}
