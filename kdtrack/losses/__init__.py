"""Losses of both recipes; ``Criterion`` assembles them from ``LossConfig``."""

from kdtrack.losses.contrastive import DenseContrastiveLoss
from kdtrack.losses.criterion import Criterion
from kdtrack.losses.detection import DetectionLoss, focal_loss, reg_l1_loss
from kdtrack.losses.distributed import all_gather_cat
from kdtrack.losses.kd import KDLoss
from kdtrack.losses.uncertainty import UncertaintyWeighting

__all__ = [
    "Criterion",
    "DenseContrastiveLoss",
    "DetectionLoss",
    "KDLoss",
    "UncertaintyWeighting",
    "all_gather_cat",
    "focal_loss",
    "reg_l1_loss",
]
