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

Optionally (``loss.supervised_memory > 0``; not FairMOT's) a metric term with a
cross-batch memory (XBM, Wang et al., CVPR 2020) is added: a batch of 4 images
holds about 16 labelled people and rarely one person twice, so the memory keeps
the last M unit vectors with their labels (no gradient) and each labelled vector
``v`` of the batch is pulled towards its same-identity entries and pushed from
the others (supervised contrastive, Khosla et al. 2020):

    l(v) = -1/|P(v)| sum_{p in P(v)} log( e^{v.p/tau} / sum_{a in A(v)} e^{v.a/tau} )

``A(v)``: the batch's other labelled vectors (with gradient) and the filled
memory slots; ``P(v)``: those of ``v``'s identity. Vectors without a positive
are no anchor. ``L_id = CE + w * mean_v l(v)``. The memory is per process (no
gather under DDP) and a buffer, so it is checkpointed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.decode import gather_at
from kdtrack.losses.contrastive import MASKED_LOGIT  # an excluded candidate: e^{-1e4} == 0, finite gradients

MIN_CLASSES = 3  # ln(nID - 1) must be > 0


def fairmot_embedding_scale(num_classes: int) -> float:
    """``sqrt(2) * ln(nID - 1)``: FairMOT's ``emb_scale`` for ``nID`` training identities."""
    if num_classes < MIN_CLASSES:
        raise ValueError(f"the supervised identity loss needs >= {MIN_CLASSES} training identities "
                         f"(emb_scale = sqrt(2) ln(nID - 1)), got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


def supervised_contrastive(anchors: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor,
                           bank_labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over anchors with a positive of ``l(v)`` (module docstring). ``anchors (n, k)`` and ``bank (m, k)``
    unit vectors; the anchors themselves are candidates too (each but itself); bank slots with label < 0 are
    empty. 0 (with the graph) when no anchor has a positive."""
    keys = torch.cat([anchors, bank.to(anchors.dtype)])
    key_labels = torch.cat([labels, bank_labels])
    n = len(anchors)
    candidate = (key_labels[None, :] >= 0).expand(n, -1).clone()
    candidate[:, :n].fill_diagonal_(False)
    logits = (anchors @ keys.t() / tau).masked_fill(~candidate, MASKED_LOGIT)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = candidate & (labels[:, None] == key_labels[None, :])
    count = positive.sum(1)
    per_anchor = -(log_prob * positive).sum(1) / count.clamp(min=1)
    has = (count > 0).to(per_anchor.dtype)
    return (per_anchor * has).sum() / has.sum().clamp(min=1.0)


class SupervisedIdLoss(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int, memory_size: int = 0, metric_weight: float = 1.0,
                 temperature: float = 0.1) -> None:
        super().__init__()
        self.scale = fairmot_embedding_scale(int(num_classes))
        self.classifier = nn.Linear(int(embedding_dim), int(num_classes))
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        if memory_size < 0:
            raise ValueError(f"loss.supervised_memory must be >= 0 (0 = off), got {memory_size}")
        if memory_size and not (metric_weight > 0 and temperature > 0):
            raise ValueError(f"loss.supervised_metric_weight and loss.supervised_temperature must be > 0, got "
                             f"{metric_weight} and {temperature}")
        self.memory_size, self.metric_weight, self.temperature = int(memory_size), float(metric_weight), float(temperature)
        if self.memory_size:  # only then: checkpoints of the plain recipe keep their keys
            self.register_buffer("memory", torch.zeros(self.memory_size, int(embedding_dim)))
            self.register_buffer("memory_ids", torch.full((self.memory_size,), -1, dtype=torch.long))
            self.register_buffer("memory_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def remember(self, vectors: torch.Tensor, labels: torch.Tensor) -> None:
        """FIFO: the newest ``vectors`` (unit, no gradient) overwrite the oldest slots."""
        vectors, labels = vectors[-self.memory_size:], labels[-self.memory_size:]
        slots = (self.memory_ptr + torch.arange(len(labels), device=labels.device)) % self.memory_size
        self.memory[slots] = vectors.to(self.memory.dtype)
        self.memory_ids[slots] = labels
        self.memory_ptr.copy_((self.memory_ptr + len(labels)) % self.memory_size)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, embedding: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding (B, k, h, w)``; ``index``/``mask``/``ids (B, K)`` target slots (``ids`` class ids, -1 =
        unlabelled). Returns ``id`` (the cross-entropy) and ``id/accuracy`` (top-1 on the labelled objects)."""
        sel = mask.bool() & (ids >= 0)
        return self.classify(gather_at(embedding.float(), index)[sel], ids[sel], anchor=embedding)

    def classify(self, vectors: torch.Tensor, labels: torch.Tensor, anchor: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        """The loss over identity vectors already read, ``vectors (n, k)`` with class ids ``labels (n,)``, however
        they were read (the centre cell in :meth:`forward`); ``anchor`` (the map they came from) keeps the graph
        of an empty batch."""
        if not len(labels):  # nothing labelled in this batch: a zero that keeps the graph
            zero = (vectors if anchor is None else anchor).sum() * 0.0
            zero = zero + sum(p.sum() for p in self.classifier.parameters()) * 0.0
            return {"id": zero, "id/accuracy": zero.detach()}
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"supervised identity loss: id {int(labels.max())} >= loss.num_id_classes = "
                             f"{self.num_classes}")
        unit = F.normalize(vectors, dim=1)
        logits = self.classifier(self.scale * unit)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        if not self.memory_size:
            return {"id": loss, "id/accuracy": accuracy}
        metric = supervised_contrastive(unit, labels, self.memory, self.memory_ids, self.temperature)
        if self.training:
            self.remember(unit.detach(), labels)
        return {"id": loss + self.metric_weight * metric, "id/ce": loss.detach(), "id/metric": metric.detach(),
                "id/accuracy": accuracy}
