"""The Re-ID teacher: strong-baseline style (Luo et al.) / fastreid R50-IBN as KDMOT uses it.

Backbone (ResNet-50, optional IBN-a, last stride 1 by default) -> pooling
(GeM with learnable p, or average) -> BNNeck (BatchNorm1d, bias frozen at 0)
-> classifier without bias (training only). Input: (B, 3, H, W) RGB in [0, 1];
ImageNet mean/std normalisation happens inside. Any H, W work (global
pooling); the teacher is trained and queried at ``crop_height x crop_width``.

Retrieval / KD feature: the BN'ed feature (``neck_feat = "after_bn"``, as the
strong baseline does at test time); ``"before_bn"`` returns the pooled one.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

from kdtrack.config import TeacherConfig
from kdtrack.models.weights import (
    CheckpointMismatchError,
    LoadReport,
    fastreid_converter,
    identity_converter,
    load_pretrained,
    torchvision_resnet_converter,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IBN_RATIO = 0.5  # IBN-a: share of the first conv's channels that get instance norm
GEM_EPS = 1e-6  # clamp before the GeM power so p-th powers stay finite
CLASSIFIER_STD = 0.001  # strong baseline: classifier weights ~ N(0, 0.001^2)
TINY_TEACHER_BLOCKS = (1, 1, 1, 1)  # blocks per stage of the tiny teacher


class IBN(nn.Module):
    """IBN-a normalisation: InstanceNorm (affine) on the first half of the channels, BatchNorm on the rest."""

    def __init__(self, channels: int, ratio: float = IBN_RATIO) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


class GeM(nn.Module):
    """Generalised mean pooling: (B, C, H, W) -> (B, C), mean(x^p)^(1/p) with learnable p."""

    def __init__(self, p: float = 3.0, eps: float = GEM_EPS) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def _add_ibn(layers: list[nn.Sequential]) -> None:
    """Replace bn1 of every block of ``layers`` (ResNet stages 1-3) by IBN-a."""
    for layer in layers:
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)


def _set_last_stride(layer4: nn.Sequential, stride: int) -> None:
    first = layer4[0]
    conv = first.conv2 if isinstance(first, Bottleneck) else first.conv1
    conv.stride = (stride, stride)
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)


class _TinyResNet(nn.Module):
    """Narrow ResNet (widths w, 2w, 4w, 8w; BasicBlocks) with the torchvision attribute names."""

    def __init__(self, width: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"tiny teacher: width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages = []
        for i, (c, n) in enumerate(zip(widths, TINY_TEACHER_BLOCKS)):
            c_in = widths[i - 1] if i else width
            stride = 1 if i == 0 else 2
            down = (nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                    if stride != 1 or c_in != c else None)
            stages.append(nn.Sequential(BasicBlock(c_in, c, stride, down), *[BasicBlock(c, c) for _ in range(n - 1)]))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _backbone(cfg: TeacherConfig) -> tuple[nn.Module, int]:
    if cfg.backbone in ("resnet50", "resnet50_ibn"):
        net, channels = resnet50(weights=None), 2048
    elif cfg.backbone == "resnet18":
        net, channels = resnet18(weights=None), 512
    elif cfg.backbone == "tiny":
        net, channels = _TinyResNet(cfg.width), 8 * cfg.width
    else:
        raise ValueError(f"unknown teacher backbone '{cfg.backbone}' (known: resnet18, resnet50, resnet50_ibn, tiny)")
    if cfg.backbone == "resnet50_ibn":
        _add_ibn([net.layer1, net.layer2, net.layer3])
    if cfg.last_stride not in (1, 2):
        raise ValueError(f"TeacherConfig.last_stride must be 1 or 2, got {cfg.last_stride}")
    _set_last_stride(net.layer4, cfg.last_stride)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, channels


class ReIDNet(nn.Module):
    """(B, 3, H, W) RGB [0, 1] -> dict of ``features`` (B, D) pooled, ``bn_features`` (B, D)
    after BNNeck, ``logits`` (B, num_classes) or None. ``embed`` returns the retrieval feature."""

    def __init__(self, cfg: TeacherConfig, num_classes: int = 0) -> None:
        super().__init__()
        if cfg.pooling not in ("gem", "avg"):
            raise ValueError(f"TeacherConfig.pooling must be 'gem' or 'avg', got {cfg.pooling!r}")
        self.cfg = cfg
        self.body, channels = _backbone(cfg)
        self.pool = GeM(cfg.gem_p) if cfg.pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cfg.feature_dim or channels
        self.reduction = (nn.Linear(channels, self.feature_dim, bias=False)
                          if self.feature_dim != channels else nn.Identity())
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, so the CE and triplet spaces stay compatible
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=CLASSIFIER_STD)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ReIDNet expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = self.body((images - self.mean) / self.std)
        pooled = self.pool(x).flatten(1)
        features = self.reduction(pooled)
        bn_features = self.bnneck(features)
        logits = self.classifier(bn_features) if self.classifier is not None else None
        return {"features": features, "bn_features": bn_features, "logits": logits}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) retrieval / KD feature (``cfg.neck_feat``)."""
        out = self.forward(images)
        return out["bn_features"] if self.cfg.neck_feat == "after_bn" else out["features"]


def teacher_feature_dim(cfg: TeacherConfig) -> int:
    """D of the teacher built from ``cfg`` (what a KD student's ``embedding_dim`` must equal)."""
    if cfg.feature_dim:
        return cfg.feature_dim
    return {"resnet50": 2048, "resnet50_ibn": 2048, "resnet18": 512}.get(cfg.backbone, 8 * cfg.width)


# torchvision ResNet names -> ReIDNet.body = Sequential(conv1, bn1, relu, maxpool, layer1..layer4)
TORCHVISION_TO_BODY = torchvision_resnet_converter("body.0", "body.1", [f"body.{i}" for i in range(4, 8)])
FASTREID_TO_TEACHER = fastreid_converter(TORCHVISION_TO_BODY)


def load_teacher_weights(model: ReIDNet, cfg: TeacherConfig) -> LoadReport | None:
    """``cfg.checkpoint`` (a trained teacher, kdtrack format, every key) or else ``cfg.pretrained`` (an
    ImageNet ResNet to start teacher training from, torchvision / IBN-Net keys: the backbone is loaded,
    GeM, BNNeck and classifier keep their init, ``fc`` is dropped; every backbone shape must fit). A plain
    torchvision R50 into ``resnet50_ibn`` splits each IBN block's ``bn1`` (``torchvision_resnet_converter``).
    ``None`` when neither is set."""
    if cfg.checkpoint:
        ignore = ("classifier.", "heads.weight", "heads.classifier.") if model.classifier is None else ()
        report = load_pretrained(model, cfg.checkpoint, strict=True, ignore_prefixes=ignore, heads=("classifier.",),
                                 converters={"kdtrack": identity_converter, "fastreid": FASTREID_TO_TEACHER},
                                 hint="ImageNet weights initialise teacher training: teacher.pretrained")
        untrained = [k for k in report.missing if not k.startswith("classifier.")]
        if report.source_format == "fastreid" and untrained:  # a trained teacher must fill the whole net
            raise CheckpointMismatchError(f"{cfg.checkpoint}: this FastReID checkpoint leaves {len(untrained)} "
                                          f"teacher tensors untrained (e.g. {', '.join(untrained[:4])}): another "
                                          f"architecture than teacher.backbone {cfg.backbone!r}?")
        return report
    if cfg.pretrained:
        return load_pretrained(model, cfg.pretrained, strict=True, converters={"torchvision": TORCHVISION_TO_BODY},
                               hint="a trained teacher goes to teacher.checkpoint")
    return None


def build_teacher(cfg: TeacherConfig, num_classes: int = 0) -> ReIDNet:
    """The teacher; ``cfg.checkpoint`` (local path) loads trained weights, else ``cfg.pretrained``
    initialises the backbone (``load_teacher_weights``).

    Loading for KD (``num_classes = 0``) drops a saved classifier; otherwise keys must match.
    """
    model = ReIDNet(cfg, num_classes)
    load_teacher_weights(model, cfg)
    return model


def _frozen_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """Stand-in for ``module.train``: a frozen teacher stays in eval mode whatever its parent asks."""
    return nn.Module.train(module, False)


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm running stats fixed), no gradients, and ``.train()`` becomes a no-op.

    The guard is an instance attribute, so ``parent.train()`` (which calls each
    child's ``train``) leaves the teacher in eval mode; it survives deepcopy/pickle.
    """
    model.eval()
    model.requires_grad_(False)
    object.__setattr__(model, "train", functools.partial(_frozen_train, model))
    return model


def is_frozen(model: nn.Module) -> bool:
    train = model.__dict__.get("train")
    return isinstance(train, functools.partial) and train.func is _frozen_train
