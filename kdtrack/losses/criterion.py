"""The training criterion: detection + identity (+ uncertainty weighting), built from ``LossConfig``.

An ``nn.Module`` so that every learnable or stateful piece of the loss (the
uncertainty log-variances ``s_det``/``s_id``, the KD hard-label classifier,
the contrastive queue) lives in its ``state_dict`` and is checkpointed with
the model. The optimizer must receive ``criterion.parameters()`` too.

Totals per ``id_mode``:

- ``"none"``: ``total = L_det``.
- ``"kd"``: ``L_id = L_KD``; ``total = Kendall(L_det, L_id)`` when
  ``loss.uncertainty`` else ``L_det + L_id``.
- ``"contrastive"``: ``L_id = lambda * l_id``; ``total = L_det + L_id`` (IDF).
  ``loss.uncertainty`` belongs to the KD recipe and is not applied here.
- ``"supervised"``: ``L_id`` = FairMOT's identity cross-entropy over
  ``loss.num_id_classes`` training identities; ``total`` as for ``"kd"``.
- ``"hybrid"`` (kdtrack's, in neither paper): both identity terms on the one
  identity map, ``L_KD`` at every person's centre cell (the teacher's feature)
  and the contrastive ``l_id`` read by ``model.id_readout``;
  ``total = Kendall(L_det, L_KD, l_id)`` over the three when ``loss.uncertainty``
  (``s_contrastive`` from ``loss.s_contrastive_init``), else
  ``L_det + L_KD + lambda l_id``. Logged ``id`` is ``L_KD + lambda l_id``.

Every mode adds ``loss.detection_anchor_weight * L_anchor`` when it is > 0: the frozen starting network's
detection outputs kept (``kdtrack.losses.anchor``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kdtrack.config import Config, LossConfig
from kdtrack.config_checks import identity_readout_problems
from kdtrack.decode import boxes_from_heads
from kdtrack.losses.anchor import detection_anchor_loss
from kdtrack.losses.collapse import collapse_stats, collapse_stats_of_vectors
from kdtrack.losses.contrastive import DenseContrastiveLoss
from kdtrack.losses.detection import DetectionLoss
from kdtrack.losses.kd import KDLoss
from kdtrack.losses.supervised import SupervisedIdLoss
from kdtrack.losses.uncertainty import UncertaintyWeighting
from kdtrack.models.momentum import MomentumEncoder
from kdtrack.readout import read_at_boxes, readout_dim


ID_MODES = ("kd", "contrastive", "supervised", "hybrid", "none")
KENDALL_ID_MODES = ("kd", "supervised", "hybrid")  # Kendall weighting of the terms (loss.uncertainty)


class Criterion(nn.Module):
    def __init__(
        self,
        cfg: LossConfig,
        *,
        embedding_dim: int,
        gather_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        id_readout: str = "cell",
        down_ratio: int = 4,
    ) -> None:
        super().__init__()
        if cfg.id_mode not in ID_MODES:
            raise ValueError(f"loss.id_mode must be {' | '.join(ID_MODES)}, got {cfg.id_mode!r}")
        self.cfg = cfg
        self.detection = DetectionLoss(
            cfg.focal_alpha, cfg.focal_beta, cfg.heatmap_weight, cfg.size_weight, cfg.offset_weight,
            cfg.size_loss_scale,
        )
        # the hybrid's KD term reads the centre cell too, its contrastive term model.id_readout
        problems = identity_readout_problems(cfg, id_readout)
        if problems:
            raise ValueError(problems[0][1])
        self.id_readout, self.down_ratio = id_readout, int(down_ratio)
        vector_dim = readout_dim(embedding_dim, id_readout)  # one person's identity vector (and a queue row)
        if cfg.id_mode == "hybrid" and cfg.eta < 1.0:
            raise ValueError(f"loss.id_mode = 'hybrid' trains on soft targets only (loss.eta = 1, got {cfg.eta}): its "
                             f"ids are person keys of the contrastive term, not identity labels")
        self.kd = (KDLoss(embedding_dim, cfg.eta, cfg.num_id_classes, cfg.kd_reduction)
                   if cfg.distils else None)
        self.contrastive = (
            DenseContrastiveLoss(vector_dim, cfg.queue_size, cfg.temperature, gather_fn,
                                 batch_negatives=cfg.batch_negatives, nn_positives=cfg.nn_positives,
                                 key_positives=cfg.key_positives)
            if cfg.contrasts_people
            else None
        )
        # SimCLR / MoCo v2's head: the loss compares head outputs, retrieval reads the vectors before it, which
        # keep what the loss's invariances would otherwise strip
        self.projection = (nn.Sequential(nn.Linear(vector_dim, cfg.projection_dim), nn.ReLU(inplace=True),
                                         nn.Linear(cfg.projection_dim, vector_dim))
                           if cfg.projection_dim > 0 else None)
        # the key encoder's vectors go through a momentum copy of the head, as in MoCo v2: through the online head
        # the queue fills with outputs of a fast-moving head, and the embedding collapses (measured)
        self.key_projection = (MomentumEncoder(self.projection, cfg.key_momentum)
                               if self.projection is not None and cfg.key_momentum > 0 else None)
        self.supervised = (SupervisedIdLoss(vector_dim, cfg.num_id_classes, cfg.supervised_memory,
                                            cfg.supervised_metric_weight, cfg.supervised_temperature)
                           if cfg.id_mode == "supervised" else None)
        self.uncertainty = (
            UncertaintyWeighting(cfg.s_det_init, cfg.s_id_init,
                                 cfg.s_contrastive_init if cfg.id_mode == "hybrid" else None)
            if cfg.id_mode in KENDALL_ID_MODES and cfg.uncertainty else None
        )

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The identity classifiers' weights (supervised, KD hard labels): ``train.classifier_lr_mult``'s group."""
        heads = [self.supervised.classifier if self.supervised is not None else None,
                 self.kd.classifier if self.kd is not None else None]
        return [p for head in heads if head is not None for p in head.parameters()]

    @property
    def required_outputs(self) -> tuple[str, ...]:
        """The student outputs this criterion reads: the detection heads, and the embedding unless
        ``id_mode`` is ``none`` (``Student.train_only`` leaves the others out of training)."""
        detection = ("heatmap", "size", "offset")
        return detection if self.cfg.id_mode == "none" else (*detection, "embedding")

    @classmethod
    def from_config(
        cls, cfg: Config, gather_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> "Criterion":
        return cls(cfg.loss, embedding_dim=cfg.model.embedding_dim, gather_fn=gather_fn,
                   id_readout=cfg.model.id_readout, down_ratio=cfg.model.down_ratio)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], **extra: Any
    ) -> dict[str, torch.Tensor]:
        """Named scalar terms and ``"total"`` (the one to back-propagate).

        ``outputs``: the student's dict; ``targets``: ``collate_targets`` output.
        KD reads the teacher embeddings from ``extra["teacher"]`` or
        ``targets["teacher"]`` ``(B, K, D)``, aligned with the target slots.
        ``loss.detection_views: first`` (contrastive) takes the detection terms from view 0 alone.
        Contrastive: the batch must hold both views (``extra["views"]``, default
        2, all view-0 images first; the ``monitor/*`` collapse statistics are
        computed from them); ``extra["update_queue"]`` (default True) turns the
        queue update off (e.g. for validation); ``extra["key_embedding"]`` (the
        momentum key encoder's identity map of the batch) fills the queue;
        ``extra["monitor"] = False`` skips the collapse statistics (host reads; the train
        loop computes them on logging steps only). ``loss.detection_anchor_weight > 0``: ``extra["anchor"]``
        holds the frozen starting network's detection outputs on the batch, and ``weight * L_anchor`` is added
        to ``total`` (``kdtrack.losses.anchor``).
        """
        terms = self._terms(outputs, targets, extra)
        weight = self.cfg.detection_anchor_weight
        if weight > 0:
            if "anchor" not in extra:
                raise ValueError("loss.detection_anchor_weight > 0: pass anchor= (the frozen starting network's "
                                 "heatmap, size and offset on the batch) to the criterion")
            anchored = detection_anchor_loss(outputs, extra["anchor"], self.cfg.size_loss_scale)
            terms.update(anchored)
            terms["total"] = terms["total"] + weight * anchored["anchor"]
        return terms

    def _terms(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               extra: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The terms of detection and ``loss.id_mode`` and their ``total``, before the anchor."""
        if self.contrastive is not None and self.cfg.detection_views == "first":
            total = int(outputs["heatmap"].shape[0])
            rows = total // max(int(extra.get("views", 2)), 1)
            terms = dict(self.detection(_leading_rows(outputs, rows, total), _leading_rows(targets, rows, total)))
        else:
            terms = dict(self.detection(outputs, targets))
        det = terms["det"]
        if self.kd is not None and self.contrastive is not None:  # the hybrid
            kd = self._kd_terms(outputs, targets, extra)
            c = self._contrastive_terms(outputs, targets, extra)
            terms.update({k: v for k, v in kd.items() if k != "id"})
            terms.update(c)
            terms["id/kd"] = kd["id"]
            terms["id"] = kd["id"] + c["id"]
            if self.uncertainty is not None:
                terms["total"] = self.uncertainty(det, kd["id"], c["id/contrastive"])
                terms.update(self._log_variances())
            else:
                terms["total"] = det + terms["id"]
        elif self.kd is not None or self.supervised is not None:
            if self.kd is not None:
                terms.update(self._kd_terms(outputs, targets, extra))
            elif self.id_readout == "cell":
                terms.update(self.supervised(outputs["embedding"], targets["index"], targets["mask"],
                                             targets["ids"]))
            else:
                terms.update(self._supervised_read_at_boxes(outputs["embedding"], targets))
            if self.uncertainty is not None:
                terms["total"] = self.uncertainty(det, terms["id"])
                terms.update(self._log_variances())
            else:
                terms["total"] = det + terms["id"]
        elif self.contrastive is not None:
            terms.update(self._contrastive_terms(outputs, targets, extra))
            terms["total"] = det + terms["id"]
        else:
            terms["total"] = det
        return terms

    def _log_variances(self) -> dict[str, torch.Tensor]:
        """The Kendall log-variances, for the logs."""
        u = self.uncertainty
        out = {"s_det": u.s_det.detach(), "s_id": u.s_id.detach()}
        if u.s_contrastive is not None:
            out["s_contrastive"] = u.s_contrastive.detach()
        return out

    def _kd_terms(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                  extra: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """KD at every person's centre cell (``id`` = ``L_KD``)."""
        teacher = extra.get("teacher", targets.get("teacher"))
        if teacher is None:
            raise ValueError(f"loss.id_mode = '{self.cfg.id_mode}' needs teacher embeddings "
                             f"(targets['teacher'] or teacher=)")
        return self.kd(outputs["embedding"], targets["index"], targets["mask"], teacher, targets.get("ids"))

    def _contrastive_terms(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                           extra: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The dense contrastive term (``id/contrastive`` = ``l_id``, ``id`` = ``lambda l_id``) and, on a two-view
        batch with ``extra["monitor"]`` (default True), the collapse monitor of this very batch."""
        update_queue, key_embedding = bool(extra.get("update_queue", True)), extra.get("key_embedding")
        views = int(extra.get("views", 2))
        monitor = views == 2 and extra.get("monitor", True)  # the collapse monitor (kdtrack.losses.collapse)
        if self.id_readout == "cell":
            c = self.contrastive(
                outputs["embedding"], targets["region_index"], targets["region_mask"], targets["ids"],
                update_queue=update_queue, key_embedding=key_embedding,
            )
            stats = (collapse_stats(outputs["embedding"], targets["region_index"], targets["region_mask"],
                                    targets["ids"], views=views) if monitor else {})
        else:  # one vector per person and view, read over its box as at inference
            boxes, keys, images = self._labelled_boxes(targets, outputs["embedding"].shape[-1])
            points = self._read(outputs["embedding"], boxes, images)
            key_points = (self._read(key_embedding, boxes, images)
                          if key_embedding is not None and (update_queue or self.cfg.key_positives) else None)
            if self.projection is not None:
                loss_points = self._project(points, self.projection)  # the unit vectors inference reads
                if key_points is not None:
                    with torch.no_grad():
                        key_head = self.projection
                        if self.key_projection is not None:  # one EMA step per training step, as the key encoder's
                            self.key_projection.update(self.projection)
                            key_head = self.key_projection.encoder
                        key_points = self._project(key_points, key_head)
            else:
                loss_points = points
            c = self.contrastive.forward_points(loss_points, keys, update_queue, key_points)
            per_view = outputs["embedding"].shape[0] // views
            stats = collapse_stats_of_vectors(points, keys, images // per_view, views) if monitor else {}
        c["id/contrastive"] = c["id"]
        if stats:  # from this very batch
            c.update({f"monitor/{k}": torch.tensor(v) for k, v in stats.items() if math.isfinite(v)})  # undefined: absent
        c["id"] = self.cfg.id_weight * c["id"]
        return c

    @staticmethod
    def _project(points: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """``loss.projection_dim``'s ``head`` over unit-length ``points``, its outputs at unit length."""
        normalize = nn.functional.normalize
        return normalize(head(normalize(points, dim=1)), dim=1)

    def _labelled_boxes(self, targets: Mapping[str, torch.Tensor], map_width: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The labelled target slots (``ids >= 0``) as ``(n, 4)`` boxes rebuilt from each slot (centre cell,
        offset and size: the boxes the decoder would give for a perfect output), their ``(n,)`` ids and
        ``(n,)`` images in the batch."""
        sel = targets["mask"].bool() & (targets["ids"] >= 0)
        boxes = boxes_from_heads(targets["index"], targets["offset"].float(), targets["size"].float(),
                                 map_width, self.down_ratio)[sel]
        batch_index = torch.arange(sel.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]
        return boxes, targets["ids"][sel], batch_index

    def _read(self, embedding: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``(n, D)`` identity vectors of ``boxes`` read by ``model.id_readout``."""
        return read_at_boxes(embedding, boxes, batch_index, self.id_readout, self.down_ratio)

    def _supervised_read_at_boxes(self, embedding: torch.Tensor, targets: Mapping[str, torch.Tensor]
                                  ) -> dict[str, torch.Tensor]:
        """The supervised loss with each labelled person read by ``model.id_readout`` over its box."""
        boxes, labels, images = self._labelled_boxes(targets, embedding.shape[-1])
        return self.supervised.classify(self._read(embedding, boxes, images), labels, anchor=embedding)

def _leading_rows(tensors: Mapping[str, Any], rows: int, total: int) -> dict[str, Any]:
    """The first ``rows`` of every tensor batched over ``total`` images (view 0 of a two-view batch)."""
    return {k: v[:rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == total else v
            for k, v in tensors.items()}
