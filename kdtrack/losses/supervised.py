"""Supervised identity loss: FairMOT's re-ID branch (METHOD.md section 4b), the reference of every label-free recipe.

At each labelled object centre the student's identity vector ``e`` is read
(the same cell the KD and tracking code read), L2-normalised and scaled by
``s = sqrt(2) * ln(nID - 1)`` (FairMOT's ``emb_scale``: with nID classes a
unit-norm feature needs that scale for the softmax to reach a confident
posterior), then classified by a linear layer over the training identities:

    L_id = mean over objects with id >= 0 of CE(W (s e / |e|) + b, id)

Objects with id -1 (unlabelled people, detection-only datasets) are ignored,
as FairMOT's ``ignore_index=-1``. The classifier starts from N(0, 0.01) weights
(METHOD.md 4b) and a zero bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.decode import gather_at

MIN_CLASSES = 3  # ln(nID - 1) must be > 0


def fairmot_embedding_scale(num_classes: int) -> float:
    """``sqrt(2) * ln(nID - 1)``: FairMOT's ``emb_scale`` for ``nID`` training identities."""
    if num_classes < MIN_CLASSES:
        raise ValueError(f"the supervised identity loss needs >= {MIN_CLASSES} training identities "
                         f"(emb_scale = sqrt(2) ln(nID - 1)), got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


class SupervisedIdLoss(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.scale = fairmot_embedding_scale(int(num_classes))
        self.classifier = nn.Linear(int(embedding_dim), int(num_classes))
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, embedding: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding (B, k, h, w)``; ``index``/``mask``/``ids (B, K)`` target slots (``ids`` class ids, -1 =
        unlabelled). Returns ``id`` (the cross-entropy) and ``id/accuracy`` (top-1 on the labelled objects)."""
        sel = mask.bool() & (ids >= 0)
        vectors = gather_at(embedding.float(), index)[sel]  # (n, k)
        labels = ids[sel]
        if not len(labels):  # nothing labelled in this batch: a zero that keeps the graph
            zero = embedding.sum() * 0.0 + sum(p.sum() for p in self.classifier.parameters()) * 0.0
            return {"id": zero, "id/accuracy": zero.detach()}
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"supervised identity loss: id {int(labels.max())} >= loss.num_id_classes = "
                             f"{self.num_classes}")
        logits = self.classifier(self.scale * F.normalize(vectors, dim=1))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return {"id": loss, "id/accuracy": accuracy}
