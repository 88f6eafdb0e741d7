"""KD identity loss (METHOD.md section 3): regress the teacher's Re-ID embedding at each centre.

``L_soft`` = smooth-L1 (beta 1: 0.5 d^2 if |d| < 1 else |d| - 0.5) between the
student embedding read at each object's centre cell and the teacher's
embedding of that object's crop, averaged over objects and channels (the
``torch.nn.functional.smooth_l1_loss`` mean). Optional hard labels:
``L_KD = eta L_soft + (1 - eta) L_hard`` with ``L_hard`` the ID cross-entropy
of a bias-free linear classifier on the student embedding, over objects with
an id >= 0. With ``eta == 1`` no classifier is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.decode import gather_at


class KDLoss(nn.Module):
    def __init__(self, embedding_dim: int, eta: float = 1.0, num_id_classes: int = 0) -> None:
        super().__init__()
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"loss.eta must be in [0, 1], got {eta}")
        if eta < 1.0 and num_id_classes <= 0:
            raise ValueError(f"loss.eta = {eta} < 1 needs hard labels: set loss.num_id_classes > 0")
        self.eta = float(eta)
        self.embedding_dim = int(embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_id_classes, bias=False) if eta < 1.0 else None

    def forward(
        self,
        embedding: torch.Tensor,
        index: torch.Tensor,
        mask: torch.Tensor,
        teacher: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``embedding (B,k,h,w)``, ``index``/``mask``/``ids (B,K)``, ``teacher (B,K,k)`` aligned with the slots."""
        if teacher.shape[-1] != embedding.shape[1]:
            raise ValueError(
                f"KD: student embedding has {embedding.shape[1]} channels but the teacher {teacher.shape[-1]}; "
                "set model.embedding_dim = teacher.feature_dim"
            )
        sel = mask.bool()
        student = gather_at(embedding.float(), index)[sel]  # (n, k)
        zero = embedding.sum() * 0.0  # keeps the graph when there is nothing to learn from
        soft = F.smooth_l1_loss(student, teacher[sel].float(), beta=1.0) if len(student) else zero
        terms = {"id/soft": soft}
        kd = soft
        if self.classifier is not None:
            hard = zero
            if ids is not None:
                obj_ids = ids[sel]
                labeled = obj_ids >= 0
                if labeled.any():
                    n_cls = self.classifier.out_features
                    if int(obj_ids.max()) >= n_cls:
                        raise ValueError(f"KD: id {int(obj_ids.max())} >= loss.num_id_classes = {n_cls}")
                    hard = F.cross_entropy(self.classifier(student[labeled]), obj_ids[labeled])
            terms["id/hard"] = hard
            kd = self.eta * soft + (1.0 - self.eta) * hard
        terms["id"] = kd
        return terms
