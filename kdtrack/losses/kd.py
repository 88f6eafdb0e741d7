"""KD identity loss (METHOD.md section 3): regress the teacher's Re-ID embedding at each centre.

With ``d`` the student embedding read at each object's centre cell minus the
teacher's embedding of that object's crop (k channels, n objects in the
batch) and ``sl1(x)`` = smooth-L1 with beta 1 (0.5 x^2 if |x| < 1 else
|x| - 0.5), ``reduction`` (``loss.kd_reduction``) gives ``L_soft``:

- ``"sum_per_object"`` (default): ``(1/n) sum_objects sum_channels sl1(d)``,
  the per-object sum over the k channels averaged over objects;
- ``"mean"``: ``(1/(n k)) sum sl1(d)``, ``F.smooth_l1_loss``'s default,
  exactly ``sum_per_object / k``.

KDMOT's public trainer (``torch.nn.SmoothL1Loss(size_average=False)``, which
overrides its ``reduction='mean'`` argument to a sum) sums over objects *and*
channels of each GPU's share of the batch (DataParallel averages the GPUs'
losses): ``n_gpu * sum_per_object`` with ``n_gpu`` the objects on one GPU.
Its detection terms are per object (focal and L1 divided by the object
count). The Kendall log-variances start at -1.85 / -1.05 and Adam (lr 1e-4)
moves them by about lr per step, a few units over a whole run, less than
log 2048 = 7.6, so they cannot undo a constant factor on the identity term:
the per-object scale decides the balance. The default keeps KDMOT's
per-object scale (a sum over k = 2048 channels: ~870 at the start for
unit-variance teacher features and a student head near 0, against ~0.42
for ``"mean"``) and leaves out only KDMOT's extra factor ``n_gpu``, which
varies with crowd density (a few people on a MOT frame, over a hundred on 4
CrowdHuman images) and so is not a constant a recipe could reproduce; it
also keeps the term independent of the batch size. ``"mean"`` is the
earlier kdtrack behaviour, k times weaker per object than KDMOT.

Optional hard labels: ``L_KD = eta L_soft + (1 - eta) L_hard`` with
``L_hard`` the ID cross-entropy (mean over labelled objects, whatever
``reduction`` is) of a bias-free linear classifier on the student embedding,
over objects with an id >= 0. With ``eta == 1`` no classifier is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.decode import gather_at


KD_REDUCTIONS = ("sum_per_object", "mean")


class KDLoss(nn.Module):
    def __init__(self, embedding_dim: int, eta: float = 1.0, num_id_classes: int = 0,
                 reduction: str = "sum_per_object") -> None:
        super().__init__()
        if reduction not in KD_REDUCTIONS:
            raise ValueError(f"loss.kd_reduction must be one of {list(KD_REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
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
        if len(student):
            per_value = F.smooth_l1_loss(student, teacher[sel].float(), beta=1.0, reduction="none")  # (n, k)
            soft = per_value.sum(dim=1).mean() if self.reduction == "sum_per_object" else per_value.mean()
        else:
            soft = zero
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
