"""All-gather for variable-length tensors, used to fill the contrastive queue from every worker.

A no-op (returns its input) when ``torch.distributed`` is not initialised or
has one process. Every rank must call it at the same point, also with an
empty ``(0, ...)`` tensor. Gradients do not flow through it (queue updates
are detached).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (``(n_r, ...)`` on rank r) over all ranks along dim 0, in rank order."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    tensor = tensor.contiguous()
    count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()  # one read-back for all ranks, not one per rank
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded)
    return torch.cat([b[:n] for b, n in zip(buffers, sizes)], dim=0)


SUMMED_TERMS = ("perf/images_per_s",)  # throughput: the job's is the sum over workers


def mean_over_ranks(terms: dict[str, float], summed: tuple[str, ...] = SUMMED_TERMS) -> dict[str, float]:
    """Logged loss terms averaged over all ranks (a key missing on some rank is averaged over the ranks
    that have it; ``summed`` keys are added up). Every rank must call it at the same point. Rank 0's own
    terms alone describe 1/world of the batch; the mean is what the whole job optimised."""
    if not is_distributed():
        return dict(terms)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in terms.items()})
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for rank_terms in gathered for k in rank_terms):
        values = [rank_terms[key] for rank_terms in gathered if key in rank_terms]
        out[key] = float(sum(values)) if key in summed else float(sum(values) / len(values))
    return out
