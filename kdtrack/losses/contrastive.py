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
- ``key_positives`` (MoCo's, not the paper's): ``p`` and the in-batch means
  are the momentum key encoder's vectors of the same rows, without gradient;
  the anchors ``v`` stay the student's. Every similarity is then student to
  key encoder, as the queue's already are.

After the loss, one embedding per person (mean of its points, renormalised,
no gradient) is gathered from all workers with ``gather_fn`` and pushed into
the queue; with a momentum key encoder (``kdtrack.models.momentum``, MoCo)
those embeddings come from the key encoder's map of the same batch, so the
queue holds a slowly moving, consistent copy of the embedding. Queue, keys, pointer and fill count are buffers, so they are
checkpointed with the module's ``state_dict``.

Host syncs (each waits for a CUDA device to drain): none is an explicit read. The queue's unused slots are
masked on the device, never read; the positives are blocks of anchors against every point with a person mask,
not padded per-person blocks whose width would be read from the data. What remains are the sizes that
depend on the data: the identified points (``gather_points``' boolean mask), the people (``torch.unique``)
and, under DDP, each rank's person count before the queue's all-gather
(``kdtrack.losses.distributed.all_gather_cat``). Removing those needs a fixed-shape loss over every
B x K x R slot and a fixed-size all-gather.
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
    anchors: torch.Tensor, anchor_keys: torch.Tensor, bank: torch.Tensor, bank_keys: torch.Tensor, tau: float,
    also_excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log sum_{n in N_i} e^{v.n/tau}`` for ``anchors (m,k)``; excluded entries (the anchor's own person,
    an unused queue slot, the keys in ``also_excluded (m, j)``: the anchor's neighbour positives) get
    ``MASKED_LOGIT``, whose ``e^x`` is 0: with nothing left the result is about ``MASKED_LOGIT``, which adds
    exactly nothing to a positive's ``logaddexp``."""
    logits = anchors @ bank.t() / tau
    excluded = (anchor_keys[:, None] == bank_keys[None, :]) | (bank_keys == EMPTY_KEY)[None, :]
    if also_excluded is not None:
        excluded = excluded | (also_excluded[:, :, None] == bank_keys[None, None, :]).any(1)
    logits = logits.masked_fill(excluded, MASKED_LOGIT)
    return torch.logsumexp(logits, dim=1)


def _positive_sum(anchors: torch.Tensor, anchor_people: torch.Tensor, anchor_index: torch.Tensor,
                  points: torch.Tensor, people: torch.Tensor, log_neg: torch.Tensor, tau: float) -> torch.Tensor:
    """``sum_{p in P_i \\ {v}} -log(e^{v.p/tau} / (e^{v.p/tau} + e^{log_neg}))`` for each of ``anchors (m,k)``
    (rows ``anchor_index`` of ``points (M,k)``; person indices ``anchor_people``, ``people``)."""
    logits = anchors @ points.t() / tau
    pair = (anchor_people[:, None] == people[None, :]) & (anchor_index[:, None] != torch.arange(
        len(points), device=points.device)[None, :])
    per_pair = torch.logaddexp(logits, log_neg[:, None]) - logits
    return torch.where(pair, per_pair, torch.zeros_like(per_pair)).sum(1)


def _person_means(v: torch.Tensor, inv: torch.Tensor, people: int) -> torch.Tensor:
    """``(people, k)``: each person's L2-normalised mean of ``v`` (with gradient), people numbered by ``inv``."""
    return F.normalize(v.new_zeros((people, v.shape[1])).index_add(0, inv, v), dim=1)


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
    return _person_means(v, inv, len(uniq)), uniq


class DenseContrastiveLoss(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        queue_size: int = 32768,
        temperature: float = 0.07,
        gather_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        anchor_chunk: int = ANCHOR_CHUNK,
        batch_negatives: bool = True,
        nn_positives: int = 0,
        key_positives: bool = False,
    ) -> None:
        super().__init__()
        if nn_positives < 0:
            raise ValueError(f"loss.nn_positives must be >= 0, got {nn_positives}")
        if queue_size <= 0:
            raise ValueError(f"loss.queue_size must be positive, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather_fn = gather_fn if gather_fn is not None else identity
        self.anchor_chunk = int(anchor_chunk)
        self.batch_negatives = bool(batch_negatives)
        self.nn_positives = int(nn_positives)
        self.key_positives = bool(key_positives)
        self.register_buffer("queue", torch.zeros(queue_size, embedding_dim))
        self.register_buffer("queue_keys", torch.full((queue_size,), EMPTY_KEY, dtype=torch.int64))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.int64))

    def loss_from_points(self, points: torch.Tensor, keys: torch.Tensor,
                         key_points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``l_id`` for ``points (M,k)`` with person ``keys (M,)`` against the current queue (no update).

        ``key_points (M,k)`` (the key encoder's vectors of the same rows): MoCo's positives and in-batch negatives,
        without gradient, in place of the student's own; the anchors stay the student's ``points``."""
        tau = self.temperature
        v = F.normalize(points.float(), dim=1)
        kv = None if key_points is None else F.normalize(key_points.detach().float(), dim=1)
        if kv is not None and kv.shape != v.shape:
            raise ValueError(f"key_points {tuple(kv.shape)} must match points {tuple(v.shape)}")
        zero = points.sum() * 0.0
        stats = {"id/points": torch.tensor(float(len(v))), "id/queue_fill": self.queue_fill.float()}
        if len(v) == 0:
            return {"id": zero, "id/persons": torch.tensor(0.0), "id/anchors": torch.tensor(0.0), **stats}

        # People: torch.unique's output sizes wait for a CUDA device (as gather_points' mask does); no
        # shape below is read from the data, so nothing else does.
        uniq, inv, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        U = len(uniq)
        bank, bank_keys = self.queue.to(v.dtype, copy=True), self.queue_keys.clone()  # copies: safe to recompute
        # Neighbour positives (NNCLR): each person's nearest queue entries, by its mean vector, are positives
        # of its every point and leave its negatives: cross-image positives without identity labels.
        nn_vectors = point_nn_keys = means = None
        if self.nn_positives:
            means = _person_means(v, inv, U)
            person_nn_vectors, person_nn_keys = self._queue_neighbours(means.detach(), uniq, bank, bank_keys)
            nn_vectors, point_nn_keys = person_nn_vectors[inv], person_nn_keys[inv]
        # Negatives: log-sum-exp over the queue (other people only; unused slots masked, so no host read of
        # whether any slot is used and no data-dependent slice of the queue), chunked over anchors ...
        chunks = []
        for s in range(0, len(v), self.anchor_chunk):
            a, ak = v[s : s + self.anchor_chunk], keys[s : s + self.anchor_chunk]
            ax = None if point_nn_keys is None else point_nn_keys[s : s + self.anchor_chunk]
            if torch.is_grad_enabled() and a.requires_grad:
                chunks.append(checkpoint(_negative_logsumexp, a, ak, bank, bank_keys, tau, ax, use_reentrant=False))
            else:
                chunks.append(_negative_logsumexp(a, ak, bank, bank_keys, tau, ax))
        log_neg = torch.cat(chunks)
        # ... and over the other people of this batch (one mean each: the student's, with gradient, or with
        # key_points the key encoder's, without).
        if self.batch_negatives and U > 1:
            if kv is not None:
                means = _person_means(kv, inv, U)
            else:
                means = _person_means(v, inv, U) if means is None else means
            log_neg = torch.logaddexp(log_neg, _negative_logsumexp(v, keys, means, uniq, tau))

        # Positives: all other points of the same person (no negative: -log(e^s / e^s) = 0 exactly), as
        # blocks of anchors against every point with a person mask: no padded per-person block, whose width
        # (the largest person's point count) would be a shape read from the device.
        index = torch.arange(len(v), device=v.device)
        parts = []
        for s in range(0, len(v), self.anchor_chunk):
            rows = slice(s, s + self.anchor_chunk)
            args = (v[rows], inv[rows], index[rows], v if kv is None else kv, inv, log_neg[rows], tau)
            parts.append(checkpoint(_positive_sum, *args, use_reentrant=False)
                         if torch.is_grad_enabled() and v.requires_grad else _positive_sum(*args))
        pos_sum = torch.cat(parts)
        n_pos = counts[inv] - 1
        n_terms = n_pos
        if nn_vectors is not None:  # (M, j) anchor x neighbour; a neighbour from an empty slot counts nothing
            nn_logits = torch.einsum("mk,mjk->mj", v, nn_vectors) / tau
            nn_pair = point_nn_keys != EMPTY_KEY
            per_nn = torch.logaddexp(nn_logits, log_neg[:, None]) - nn_logits
            pos_sum = pos_sum + (per_nn * nn_pair).sum(-1)
            n_terms = n_pos + nn_pair.sum(-1)
        per_anchor = pos_sum / n_terms.clamp(min=1)
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
    def _queue_neighbours(self, means: torch.Tensor, uniq: torch.Tensor, bank: torch.Tensor,
                          bank_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each person's ``nn_positives`` nearest queue entries by cosine to its mean vector (``means (U,k)``),
        other people only: ``(U, j, k)`` vectors and ``(U, j)`` keys, ``EMPTY_KEY`` where fewer are filled."""
        sims = means @ bank.t()
        excluded = (uniq[:, None] == bank_keys[None, :]) | (bank_keys == EMPTY_KEY)[None, :]
        sims = sims.masked_fill(excluded, float("-inf"))
        j = min(self.nn_positives, bank.shape[0])
        top, idx = sims.topk(j, dim=1)
        keys = torch.where(torch.isfinite(top), bank_keys[idx], torch.full_like(idx, EMPTY_KEY))
        return bank[idx], keys

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
        key_points = (None if key_embedding is None or not (update_queue or self.key_positives)
                      else gather_points(key_embedding, region_index, region_mask, ids)[0])
        return self.forward_points(points, keys, update_queue, key_points)

    def forward_points(self, points: torch.Tensor, keys: torch.Tensor, update_queue: bool = True,
                       key_points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward` over identity vectors already read, ``points (M, k)`` with person ``keys (M,)``
        (centre-region cells, or one pooled vector per person and view: ``model.id_readout``); ``key_points``,
        the key encoder's vectors of the same rows, fill the queue when given."""
        if self.key_positives and key_points is None:
            raise ValueError("loss.key_positives needs the key encoder's vectors (loss.key_momentum > 0)")
        terms = self.loss_from_points(points, keys, key_points if self.key_positives else None)
        if update_queue:
            emb, person = self.person_embeddings(points if key_points is None else key_points, keys)
            self.enqueue(self.gather_fn(emb.contiguous()), self.gather_fn(person.contiguous()))
        return terms
