"""IDF's dense contrastive identity loss with a FIFO queue of negatives (METHOD.md section 4).

For a centre-region point ``v`` of person ``i`` (all vectors L2-normalised):

    l(v) = mean_{p in P_i \\ {v}} -log( e^{v.p/tau} / (e^{v.p/tau} + sum_{n in N_i} e^{v.n/tau}) )

- ``P_i``: every centre-region point of person ``i`` anywhere in the batch
  (the batch holds both augmented views; a person is identified by its
  globally unique key in ``targets["ids"]``), minus the anchor ``v`` itself,
  as IDF does. A person with a single point in the whole batch has no
  positive: its point is no anchor (it contributes nothing).
- ``N_i``: the queue entries whose key differs from ``i`` and, with
  ``batch_negatives`` (the default), the other people of the current batch:
  one mean embedding per person (both views, renormalised) WITH gradient, as
  the paper's Fig. 3 pushes a person away from the other people of its image.
  Without them nothing keeps the current people apart: the network lowers the
  loss by moving every current person to one point away from the (stale)
  queue, and the embedding collapses (measured: between-person cosine 1.000;
  see docs/results/idf-stage1.md, "Why the id-free embedding collapsed"). ``batch_negatives=False``
  is the paper's text (queue only). With no negative at all the loss is
  exactly 0 (and so is its gradient).
- ``l_id`` = mean of ``l(v)`` over all anchors of all people; people with id
  < 0 (unknown / DBSCAN outliers) are left out.

After the loss, one embedding per person (mean of its points, renormalised,
no gradient) is gathered from all workers with ``gather_fn`` and pushed into
the queue; with a momentum key encoder (``kdtrack.models.momentum``, MoCo)
those embeddings come from the key encoder's map of the same batch, so the
queue holds a slowly moving, consistent copy of the embedding. Queue, keys, pointer and fill count are buffers, so they are
checkpointed with the module's ``state_dict``.

Host syncs (each waits for a CUDA device to drain): the queue's unused slots are masked on the device, never
read. What remains are shapes that depend on the data: the identified points (``gather_points``' boolean
mask), the people (``torch.unique``), the largest person's point count (the padded blocks' width, the one
explicit ``int`` read) and, under DDP, each rank's person count before the queue's all-gather
(``kdtrack.losses.distributed.all_gather_cat``). Removing them needs a fixed-shape loss (every B x K x R slot,
pairwise key masks, a fixed-size all-gather): quadratic memory in the slots and another summation order.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

EMPTY_KEY = -1  # key of an unused queue slot (and of a person without identity)
MASKED_LOGIT = -1.0e4  # logit of an excluded negative: e^{-1e4} == 0 in float32, yet finite gradients
ANCHOR_CHUNK = 1024  # anchors per block of the (anchors x queue) similarity, recomputed in backward


def identity(tensor: torch.Tensor) -> torch.Tensor:
    """Default ``gather_fn`` (single process); pass ``kdtrack.losses.distributed.all_gather_cat`` under DDP."""
    return tensor


def _negative_logsumexp(
    anchors: torch.Tensor, anchor_keys: torch.Tensor, bank: torch.Tensor, bank_keys: torch.Tensor, tau: float
) -> torch.Tensor:
    """``log sum_{n in N_i} e^{v.n/tau}`` for ``anchors (m,k)``; excluded entries (the anchor's own person,
    an unused queue slot) get ``MASKED_LOGIT``, whose ``e^x`` is 0: with nothing left the result is about
    ``MASKED_LOGIT``, which adds exactly nothing to a positive's ``logaddexp``."""
    logits = anchors @ bank.t() / tau
    excluded = (anchor_keys[:, None] == bank_keys[None, :]) | (bank_keys == EMPTY_KEY)[None, :]
    logits = logits.masked_fill(excluded, MASKED_LOGIT)
    return torch.logsumexp(logits, dim=1)


def gather_points(
    embedding: torch.Tensor, region_index: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-region points of identified people: ``(M, k)`` embeddings and ``(M,)`` keys.

    ``embedding (B,k,h,w)``, ``region_index``/``region_mask (B,K,R)``, ``ids (B,K)``.
    """
    b, k = embedding.shape[:2]
    flat = embedding.reshape(b, k, -1)
    K, R = region_index.shape[1:]
    idx = region_index.reshape(b, 1, K * R).expand(b, k, K * R)
    pts = flat.gather(2, idx).permute(0, 2, 1).reshape(b, K, R, k)
    keys = ids[:, :, None].expand(b, K, R)
    sel = region_mask.bool() & (keys >= 0)
    return pts[sel], keys[sel]


def person_means(points: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, k)`` L2-normalised mean of each person's L2-normalised points and the sorted keys ``(U,)``."""
    v = F.normalize(points.float(), dim=1)
    uniq, inv = torch.unique(keys, return_inverse=True)
    sums = v.new_zeros((len(uniq), v.shape[1])).index_add(0, inv, v)
    return F.normalize(sums, dim=1), uniq


class DenseContrastiveLoss(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        queue_size: int = 32768,
        temperature: float = 0.07,
        gather_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        anchor_chunk: int = ANCHOR_CHUNK,
        batch_negatives: bool = True,
    ) -> None:
        super().__init__()
        if queue_size <= 0:
            raise ValueError(f"loss.queue_size must be positive, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather_fn = gather_fn if gather_fn is not None else identity
        self.anchor_chunk = int(anchor_chunk)
        self.batch_negatives = bool(batch_negatives)
        self.register_buffer("queue", torch.zeros(queue_size, embedding_dim))
        self.register_buffer("queue_keys", torch.full((queue_size,), EMPTY_KEY, dtype=torch.int64))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.int64))

    def loss_from_points(self, points: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """``l_id`` for ``points (M,k)`` with person ``keys (M,)`` against the current queue (no update)."""
        tau = self.temperature
        v = F.normalize(points.float(), dim=1)
        zero = points.sum() * 0.0
        stats = {"id/points": torch.tensor(float(len(v))), "id/queue_fill": self.queue_fill.float()}
        if len(v) == 0:
            return {"id": zero, "id/persons": torch.tensor(0.0), "id/anchors": torch.tensor(0.0), **stats}

        # Group points by person: (U, P) padded blocks.
        uniq, inv, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        order = torch.argsort(inv, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos_in_group = torch.arange(len(v), device=v.device) - starts[inv[order]]
        # P, the largest person's point count, is a data-dependent shape: the one host read left here (it
        # follows torch.unique's and gather_points' mask, which already wait for the device on CUDA)
        U, P = len(uniq), int(counts.max())
        block = v.new_zeros((U, P, v.shape[1]))
        block[inv[order], pos_in_group] = v[order]
        valid = torch.zeros((U, P), dtype=torch.bool, device=v.device)
        valid[inv[order], pos_in_group] = True

        # Negatives: log-sum-exp over the queue (other people only; unused slots masked, so no host read of
        # whether any slot is used and no data-dependent slice of the queue), chunked over anchors ...
        anchors, anchor_keys = v[order], keys[order]
        bank, bank_keys = self.queue.to(v.dtype, copy=True), self.queue_keys.clone()  # copies: safe to recompute
        chunks = []
        for s in range(0, len(anchors), self.anchor_chunk):
            a, ak = anchors[s : s + self.anchor_chunk], anchor_keys[s : s + self.anchor_chunk]
            if torch.is_grad_enabled() and a.requires_grad:
                chunks.append(checkpoint(_negative_logsumexp, a, ak, bank, bank_keys, tau, use_reentrant=False))
            else:
                chunks.append(_negative_logsumexp(a, ak, bank, bank_keys, tau))
        log_neg_parts = [torch.cat(chunks)]
        # ... and over the other people of this batch (one mean each, with gradient).
        if self.batch_negatives and U > 1:
            means = F.normalize(v.new_zeros((U, v.shape[1])).index_add(0, inv, v), dim=1)
            log_neg_parts.append(_negative_logsumexp(anchors, anchor_keys, means, uniq, tau))
        log_neg_sorted = log_neg_parts[0]
        for part in log_neg_parts[1:]:
            log_neg_sorted = torch.logaddexp(log_neg_sorted, part)
        log_neg = v.new_full((U, P), MASKED_LOGIT)
        log_neg[inv[order], pos_in_group] = log_neg_sorted

        # Positives: all other points of the same person (no negative: -log(e^s / e^s) = 0 exactly).
        pos_logits = torch.bmm(block, block.transpose(1, 2)) / tau  # (U, P, P) anchor x positive
        eye = torch.eye(P, dtype=torch.bool, device=v.device)
        pair = valid[:, :, None] & valid[:, None, :] & ~eye
        per_pair = torch.logaddexp(pos_logits, log_neg[:, :, None]) - pos_logits
        n_pos = pair.sum(-1)  # (U, P)
        per_anchor = (per_pair * pair).sum(-1) / n_pos.clamp(min=1)
        is_anchor = n_pos > 0
        num_anchors = is_anchor.sum()
        loss = (per_anchor * is_anchor).sum() / num_anchors.clamp(min=1) + zero
        return {
            "id": loss,
            "id/persons": torch.tensor(float(U)),
            "id/anchors": num_anchors.float(),
            **stats,
        }

    @torch.no_grad()
    def person_embeddings(self, points: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One L2-normalised mean embedding per person: ``(U, k)`` and keys ``(U,)``."""
        if len(points) == 0:
            return points.new_zeros((0, self.queue.shape[1])), keys.new_zeros((0,))
        return person_means(points.detach(), keys)

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, keys: torch.Tensor) -> None:
        """Push ``(n, k)`` embeddings with keys FIFO; when n > Q only the last Q are kept."""
        q = self.queue.shape[0]
        n = len(embeddings)
        if n == 0:
            return
        if n >= q:
            self.queue.copy_(embeddings[-q:].to(self.queue))
            self.queue_keys.copy_(keys[-q:].to(self.queue_keys))
            self.queue_ptr.zero_()
            self.queue_fill.fill_(q)
            return
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % q
        self.queue[idx] = embeddings.to(self.queue)
        self.queue_keys[idx] = keys.to(self.queue_keys)
        self.queue_ptr.copy_((self.queue_ptr + n) % q)
        self.queue_fill.copy_(torch.clamp(self.queue_fill + n, max=q))

    def forward(
        self,
        embedding: torch.Tensor,
        region_index: torch.Tensor,
        region_mask: torch.Tensor,
        ids: torch.Tensor,
        update_queue: bool = True,
        key_embedding: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``l_id`` of a batch (both views inside), then the queue update from all workers.

        ``key_embedding`` (the momentum key encoder's map of the same batch) fills the
        queue when given; else the student's own (detached) embeddings do.
        """
        points, keys = gather_points(embedding, region_index, region_mask, ids)
        key_points = (None if key_embedding is None or not update_queue
                      else gather_points(key_embedding, region_index, region_mask, ids)[0])
        return self.forward_points(points, keys, update_queue, key_points)

    def forward_points(self, points: torch.Tensor, keys: torch.Tensor, update_queue: bool = True,
                       key_points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward` over identity vectors already read, ``points (M, k)`` with person ``keys (M,)``
        (centre-region cells, or one pooled vector per person and view: ``model.id_readout``); ``key_points``,
        the key encoder's vectors of the same rows, fill the queue when given."""
        terms = self.loss_from_points(points, keys)
        if update_queue:
            emb, person = self.person_embeddings(points if key_points is None else key_points, keys)
            self.enqueue(self.gather_fn(emb.contiguous()), self.gather_fn(person.contiguous()))
        return terms
