"""The student: one anchor-free network that detects people and embeds their identity.

``forward(images)`` takes ``(B, 3, H, W)`` float RGB in [0, 1] (no mean/std,
like FairMOT), H and W multiples of 32, and returns, at output stride 4
(h = H/4, w = W/4):

- ``"heatmap"``:   (B, 1, h, w) centre logits (apply sigmoid for probabilities);
- ``"size"``:      (B, S, h, w) raw box regression, S = ``size_channels``
  (4: l, t, r, b distances; 2: w, h); units are whatever the loss targets use;
- ``"offset"``:    (B, 2, h, w) sub-cell centre offset (x, y), raw;
- ``"embedding"``: (B, k, h, w) identity, L2-normalised over channels when
  ``normalize_embedding`` (IDF; centred first by a BatchNorm without affine
  when ``embedding_norm = "batchnorm"``), raw otherwise (KD regression to the
  teacher).

``forward(images, heads=...)`` computes only the named outputs; in training
mode :meth:`Student.train_only` restricts them to the ones a loss reads (a
head whose output no loss uses would hold parameters without gradients,
which DistributedDataParallel refuses).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdtrack.config import ModelConfig
from kdtrack.models.dla_up import DLA34Body
from kdtrack.models.heads import Head
from kdtrack.models.resnet_unet import ResNetUNetBody
from kdtrack.models.tiny import TinyBody
from kdtrack.models.weights import (
    Converter,
    LoadReport,
    centernet_dla_converter,
    identity_converter,
    load_pretrained,
    torchvision_resnet_converter,
)

INPUT_MULTIPLE = 32  # coarsest backbone stride: H and W must be multiples of it
OUTPUT_KEYS = ("heatmap", "size", "offset", "embedding")


def build_body(cfg: ModelConfig) -> nn.Module:
    """Backbone + neck for ``cfg.backbone``; the module has ``out_channels`` and outputs stride 4."""
    builders = {
        "tiny": lambda: TinyBody(cfg.width, cfg.deformable),
        "dla34": lambda: DLA34Body(cfg.deformable),
        "resnet18_unet": lambda: ResNetUNetBody("resnet18", cfg.neck_channels, cfg.deformable, cfg.unet_merge),
        "resnet34_unet": lambda: ResNetUNetBody("resnet34", cfg.neck_channels, cfg.deformable, cfg.unet_merge),
        "resnet50_unet": lambda: ResNetUNetBody("resnet50", cfg.neck_channels, cfg.deformable, cfg.unet_merge),
    }
    if cfg.backbone not in builders:
        raise ValueError(f"unknown student backbone '{cfg.backbone}' (known: {', '.join(sorted(builders))})")
    return builders[cfg.backbone]()


class Student(nn.Module):
    """Body (stride 4) + four heads; see the module docstring for the output dict."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.down_ratio != 4:
            raise ValueError(f"ModelConfig.down_ratio: only output stride 4 is built, got {cfg.down_ratio}")
        if cfg.size_channels not in (2, 4):
            raise ValueError(f"ModelConfig.size_channels must be 2 or 4, got {cfg.size_channels}")
        if cfg.embedding_dim < 1:
            raise ValueError(f"ModelConfig.embedding_dim must be >= 1, got {cfg.embedding_dim}")
        self.cfg = cfg
        self.body = build_body(cfg)
        c = self.body.out_channels
        self.heads = nn.ModuleDict({
            "heatmap": Head(c, cfg.head_conv, 1, final_bias=cfg.heatmap_bias, small_init=False),
            "size": Head(c, cfg.head_conv, cfg.size_channels),
            "offset": Head(c, cfg.head_conv, 2),
            "embedding": Head(c, cfg.head_conv, cfg.embedding_dim),
        })
        # Centring before the L2 norm (IDF only): BatchNorm without affine, as MoCo/SimCLR heads.
        self.embedding_norm = (
            nn.BatchNorm2d(cfg.embedding_dim, affine=False)
            if cfg.normalize_embedding and cfg.embedding_norm == "batchnorm" else nn.Identity()
        )
        self.training_outputs: tuple[str, ...] = OUTPUT_KEYS  # what forward computes in training mode

    def train_only(self, outputs: Iterable[str]) -> list[str]:
        """Train just the heads of ``outputs``: the others are not computed in training mode and their
        parameters take no gradient (set before DDP wraps the model, so it never waits for them; the
        optimizer skips them). Evaluation mode still computes every head. Returns the heads left out."""
        keep = tuple(name for name in OUTPUT_KEYS if name in set(outputs))
        unknown = sorted(set(outputs) - set(OUTPUT_KEYS))
        if unknown or not keep:
            raise ValueError(f"Student.train_only: outputs must be among {OUTPUT_KEYS}, got {sorted(outputs)}")
        dropped = [name for name in OUTPUT_KEYS if name not in keep]
        for name in dropped:
            for p in self.heads[name].parameters():
                p.requires_grad_(False)
        self.training_outputs = keep
        return dropped

    def forward(self, images: torch.Tensor, heads: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The outputs named by ``heads``; None: :attr:`training_outputs` in training mode, all in eval mode."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Student expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(f"Student input height/width must be multiples of {INPUT_MULTIPLE}, got {h}x{w}")
        names = set(heads) if heads is not None else set(self.training_outputs if self.training else OUTPUT_KEYS)
        features = self.body(images)
        out = {name: head(features) for name, head in self.heads.items() if name in names}
        if self.cfg.normalize_embedding and "embedding" in out:
            out["embedding"] = F.normalize(self.embedding_norm(out["embedding"]), dim=1)
        return out


def pretrained_converters(model: Student) -> dict[str, Converter]:
    """Checkpoint formats that can initialise ``model`` (``kdtrack.models.weights``): our own always;
    torchvision ImageNet ResNets for the ResNet-UNet encoder (``body.stem`` / ``body.layerN``);
    CenterNet / FairMOT DLA-34 (``ctdet_coco_dla_2x.pth``) for the DLA-34 body, neck and heads."""
    converters: dict[str, Converter] = {"kdtrack": identity_converter}
    if isinstance(model.body, ResNetUNetBody):
        converters["torchvision"] = torchvision_resnet_converter(
            "body.stem.0", "body.stem.1", [f"body.layer{i}" for i in range(1, 5)])
    if isinstance(model.body, DLA34Body):
        converters["centernet"] = centernet_dla_converter("body", "heads")
    return converters


def load_student_weights(model: Student, path: str, strict: bool = True) -> LoadReport:
    """``path`` (kdtrack, torchvision or CenterNet, by its keys) into ``model``; see ``load_pretrained``."""
    return load_pretrained(model, path, strict=strict, converters=pretrained_converters(model))


def build_student(cfg: ModelConfig) -> Student:
    """The student for ``cfg``; ``cfg.pretrained`` (a local path) initialises its weights.

    A kdtrack checkpoint must match the whole network when ``cfg.pretrained_strict``; a torchvision
    ImageNet ResNet (``resnet*_unet``) or a CenterNet/FairMOT DLA-34 (``dla34``) loads its overlap.
    Loading nothing at all is an error either way.
    """
    model = Student(cfg)
    if cfg.pretrained:
        load_student_weights(model, cfg.pretrained, strict=cfg.pretrained_strict)
    return model
