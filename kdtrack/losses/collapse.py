"""Collapse monitor for the id-free identity embedding, computed from the batch at hand.

A collapsed embedding gives every person the same vector; the contrastive
loss then climbs towards ``log(|Q| + 1)`` while detection keeps improving,
so the loss curve alone hides it for thousands of iterations. Two numbers
show it at once, from the two-view batch the step already has:

- ``cos_between``: mean (and std) cosine between the mean embeddings of
  *different* persons of view 0 (random init ~0.94 on the tiny student; a
  collapsed embedding 1.000);
- ``xview_top1``: for each person of view 0, is its nearest view-1 person
  itself? (chance = 1 / persons per batch).

``CollapseWatch`` turns a run of high ``cos_between`` reports into one
warning that names the likely causes.
"""

from __future__ import annotations

import math

import torch

from kdtrack.losses.contrastive import gather_points, person_means

COLLAPSE_CAUSES = (
    "likely causes: a stale negative queue without in-batch negatives (loss.batch_negatives=false), "
    "no centring before the L2 norm (model.embedding_norm=none), an lr too high for the identity head, "
    "or video frames / repeated people among the 'independent' still images (false negatives)"
)


def _person_means(embedding: torch.Tensor, region_index: torch.Tensor, region_mask: torch.Tensor,
                  ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    points, keys = gather_points(embedding, region_index, region_mask, ids)
    if len(points) == 0:
        return points.new_zeros((0, embedding.shape[1])), keys
    return person_means(points, keys)


@torch.no_grad()
def collapse_stats(embedding: torch.Tensor, region_index: torch.Tensor, region_mask: torch.Tensor,
                   ids: torch.Tensor, views: int = 2) -> dict[str, float]:
    """``{"cos_between", "cos_between_std", "xview_top1"}`` of a ``kdtrack.data.dataset.collate`` batch.

    ``embedding (V*B, k, h, w)`` with all view-0 images first; NaN where a
    number is undefined (fewer than two persons, one view).
    """
    emb = embedding.detach().float()
    n = emb.shape[0] // max(views, 1)
    per_view = [_person_means(emb[v * n:(v + 1) * n], region_index[v * n:(v + 1) * n],
                              region_mask[v * n:(v + 1) * n], ids[v * n:(v + 1) * n]) for v in range(views)]
    return _stats_of_person_means(per_view, views)


@torch.no_grad()
def collapse_stats_of_vectors(vectors: torch.Tensor, keys: torch.Tensor, view_of_row: torch.Tensor,
                              views: int = 2) -> dict[str, float]:
    """:func:`collapse_stats` over identity vectors already read (``model.id_readout`` over each box): rows
    ``vectors (n, D)`` of persons ``keys (n,)`` in views ``view_of_row (n,)``."""
    vectors = vectors.detach().float()
    per_view = []
    for v in range(views):
        rows = view_of_row == v
        per_view.append(person_means(vectors[rows], keys[rows]) if bool(rows.any())
                        else (vectors.new_zeros((0, vectors.shape[1])), keys[rows]))
    return _stats_of_person_means(per_view, views)


def _stats_of_person_means(per_view: list[tuple[torch.Tensor, torch.Tensor]], views: int) -> dict[str, float]:
    out = {"cos_between": math.nan, "cos_between_std": math.nan, "xview_top1": math.nan}
    means0, keys0 = per_view[0]
    if len(keys0) >= 2:
        sim = means0 @ means0.T
        off = ~torch.eye(len(keys0), dtype=torch.bool, device=sim.device)
        out["cos_between"] = float(sim[off].mean())
        out["cos_between_std"] = float(sim[off].std()) if int(off.sum()) > 1 else 0.0
    if views >= 2 and len(keys0) and len(per_view[1][1]):
        means1, keys1 = per_view[1]
        shared = torch.isin(keys0, keys1)
        if shared.any():
            nearest = keys1[(means0[shared] @ means1.T).argmax(1)]
            out["xview_top1"] = float((nearest == keys0[shared]).float().mean())
    return out


class CollapseWatch:
    """Warns once ``cos_between`` has exceeded ``threshold`` for ``patience`` consecutive reports."""

    def __init__(self, threshold: float = 0.99, patience: int = 3) -> None:
        self.threshold, self.patience = float(threshold), int(patience)
        self.streak = 0
        self.warned = False

    def update(self, iteration: int, cos_between: float) -> str | None:
        """The warning text the first time the streak reaches ``patience``, else None."""
        if not math.isfinite(cos_between) or self.threshold <= 0:
            return None
        self.streak = self.streak + 1 if cos_between > self.threshold else 0
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            return (f"WARNING: identity embedding collapse at iteration {iteration}: the cosine between different "
                    f"persons has stayed above {self.threshold} for {self.streak} reports (now {cos_between:.4f}); "
                    f"every person gets nearly the same vector. {COLLAPSE_CAUSES}.")
        return None
