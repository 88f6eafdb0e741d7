"""Teacher training losses (strong baseline): label-smoothed ID cross-entropy + batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCE_EPS = 1e-12  # floor under squared distances before sqrt (finite gradient at 0)


def label_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean over the batch of -sum_k q_k log p_k with q = (1 - eps) one_hot + eps / K.

    logits (B, K), labels (B,) int in [0, K). Same definition as
    ``F.cross_entropy(label_smoothing=eps)`` and strong-baseline's CrossEntropyLabelSmooth.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    log_probs = F.log_softmax(logits, dim=1)
    target = torch.full_like(log_probs, smoothing / num_classes)
    target.scatter_(1, labels.unsqueeze(1), 1.0 - smoothing + smoothing / num_classes)
    return -(target * log_probs).sum(dim=1).mean()


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances."""
    sq = (features * features).sum(dim=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * features @ features.t()
    return d2.clamp(min=DISTANCE_EPS).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Hermans et al. batch-hard triplet: mean over anchors of relu(max d(a, p) - min d(a, n) + margin).

    features (B, D), labels (B,). Anchors with no other sample of their id or
    no sample of another id are left out; with no valid anchor the loss is 0
    (still attached to the graph).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (B, D) and labels (B,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    dist = pairwise_euclidean(features)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def reid_loss(outputs: dict[str, torch.Tensor | None], labels: torch.Tensor, smoothing: float,
              margin: float) -> dict[str, torch.Tensor]:
    """Strong-baseline total: CE on the classifier logits (BN'ed feature) + triplet on the pooled feature."""
    if outputs.get("logits") is None:
        raise ValueError("reid_loss needs classifier logits: build the teacher with num_classes > 0")
    ce = label_smoothed_cross_entropy(outputs["logits"], labels, smoothing)
    triplet = batch_hard_triplet_loss(outputs["features"], labels, margin)
    return {"loss": ce + triplet, "id": ce.detach(), "triplet": triplet.detach()}
