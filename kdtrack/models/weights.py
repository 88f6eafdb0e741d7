"""Loading local checkpoints into a model (never a download), by key mapping.

Three on-disk formats are recognised from their keys (``detect_format``):

- ``"kdtrack"``: our own state dicts, raw or under ``"model"`` (training
  checkpoints). Keys are the model's own.
- ``"torchvision"``: an ImageNet ResNet as torchvision saves it (``conv1.*``,
  ``bn1.*``, ``layer1.0.conv1.weight`` ..., ``fc.*``); IBN-Net's ResNet-IBN-a
  releases use the same names plus ``bn1.IN.*`` / ``bn1.BN.*``.
- ``"fastreid"``: a FastReID Re-ID checkpoint (``backbone.*`` a torchvision-named
  ResNet(-IBN), ``heads.pool_layer`` / ``heads.bottleneck`` / ``heads.weight``): a
  trained teacher (``teacher.checkpoint``).
- ``"centernet"``: a CenterNet / FairMOT DLA-34 checkpoint
  (``ctdet_coco_dla_2x.pth``, ``fairmot_dla34.pth``): ``{"state_dict": ...,
  "epoch": ...}``, keys ``base.*`` (DLA), ``dla_up.*``, ``ida_up.*`` and the
  heads ``hm`` / ``wh`` / ``reg`` / ``id``.

``module.`` prefixes (DataParallel / DDP) are stripped. A *converter* (one per
format and model, supplied by the model's builder) renames checkpoint keys to
the model's and applies the few exact tensor rewrites a layout change needs;
``load_pretrained`` then loads what fits and returns a ``LoadReport``
(loaded / missing / unexpected / shape-mismatched), printed as one line.

Loading *zero* tensors is always an error (``CheckpointMismatchError`` naming
the file and a few keys on both sides): a silent no-op leaves random weights
that look like a trained start. ``strict``: a kdtrack checkpoint must match
every key and shape. A torchvision or CenterNet checkpoint covers a part of
the model by nature (missing / unexpected keys are reported, not errors), but
every tensor it maps must fit, except under the heads (COCO's 80 classes are
not our 1): a shape mismatch in a backbone means another architecture
(ResNet-18 weights for a ResNet-50 share many shapes by chance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

_MAX_LISTED = 10  # keys named in an error message before "... and N more"
_FEW = 4  # keys of each side named when nothing matches
BN_COUNTER = "num_batches_tracked"  # a step counter, not a weight: never counted as missing or as a match
FORMATS = ("kdtrack", "torchvision", "centernet", "fastreid")
TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")
CENTERNET_PARTS = ("base", "dla_up", "ida_up")  # DLASeg's backbone, DLAUp and final IDAUp (our DLA34Body's)
CENTERNET_HEADS = {"hm": "heatmap", "wh": "size", "reg": "offset", "id": "embedding"}  # FairMOT name -> ours

# (renamed state in model keys, model key -> checkpoint key it came from, checkpoint keys with no place)
Converted = tuple[dict[str, torch.Tensor], dict[str, str], list[str]]
Converter = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], Converted]


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model."""


@dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` did. ``missing``: model keys left as they were; ``unexpected``:
    checkpoint keys with no place in the model; ``mismatched``: ``"[ckpt_key -> ]model_key (shape) vs
    model (shape)"`` for the tensors that were not loaded."""

    path: str
    source_format: str
    model: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]

    def summary(self) -> str:
        return (f"weights {self.path} ({self.source_format}) -> {self.model}: {len(self.loaded)} loaded, "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} shape-mismatched")


def _listed(keys: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (``torch.load(weights_only=True)``, on CPU), ``module.`` stripped.

    Accepts a raw state dict or one under ``"model"`` (kdtrack) or ``"state_dict"`` (CenterNet, FairMOT);
    the other entries of such a dict (epoch, optimizer) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointMismatchError(f"{path}: expected a state dict of tensors or a dict with a 'model' / "
                                      f"'state_dict' state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in data.items()}


def detect_format(keys: Sequence[str] | Mapping[str, object]) -> str:
    """``"centernet"`` (``base.`` / ``dla_up.`` / ``ida_up.`` keys), ``"torchvision"`` (``conv1.weight``
    and ``layer1.*`` at the top level) or ``"kdtrack"`` (anything else: our modules sit under ``body.`` /
    ``heads.``, so the two foreign layouts never collide with ours)."""
    keys = list(keys)
    if any(k.split(".", 1)[0] in CENTERNET_PARTS for k in keys):
        return "centernet"
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith("heads.") for k in keys):
        return "fastreid"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    return "kdtrack"


def identity_converter(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Converted:
    """kdtrack checkpoints: keys are the model's."""
    mapped = {k: v for k, v in state.items() if k in own}
    return mapped, {k: k for k in mapped}, [k for k in state if k not in own]


def _rename(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
            rule: Callable[[str], str | None]) -> Converted:
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        target = rule(key)
        if target is None or target not in own:
            unexpected.append(key)
        else:
            mapped[target], sources[target] = value, key
    return mapped, sources, unexpected


def torchvision_resnet_converter(stem_conv: str, stem_bn: str, stages: Sequence[str]) -> Converter:
    """torchvision ResNet keys -> a model holding the same ResNet under other names.

    ``conv1.*`` -> ``{stem_conv}.*``, ``bn1.*`` -> ``{stem_bn}.*``, ``layerN.*`` -> ``{stages[N-1]}.*``;
    ``fc.*`` (the ImageNet classifier) has no place. When the model has IBN-a at a block's ``bn1``
    (``bn1.IN`` + ``bn1.BN``) and the checkpoint a plain ``bn1`` (torchvision, not an IBN-Net release),
    the plain BatchNorm is split along channels as IBN-a splits them: the first ``IN`` channels' affine
    goes to the InstanceNorm, the rest (affine and running statistics) to the BatchNorm.
    """
    if len(stages) != 4:
        raise ValueError(f"torchvision_resnet_converter: expected 4 stage prefixes, got {list(stages)}")
    prefixes = {"conv1": stem_conv, "bn1": stem_bn, **dict(zip(TORCHVISION_STAGES, stages))}

    def rule(key: str) -> str | None:
        head, _, rest = key.partition(".")
        return f"{prefixes[head]}.{rest}" if head in prefixes and rest else None

    def convert(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Converted:
        renamed = {rule(k): (k, v) for k, v in state.items() if rule(k) is not None}
        mapped: dict[str, torch.Tensor] = {}
        sources: dict[str, str] = {}
        unexpected = [k for k in state if rule(k) is None]
        for target, (key, value) in renamed.items():
            prefix, _, leaf = target.rpartition(".")
            in_key, bn_key = f"{prefix}.IN.weight", f"{prefix}.BN.{leaf}"
            if target not in own and in_key in own and bn_key in own:  # plain bn1 -> IBN-a halves
                half = own[in_key].shape[0]
                if leaf in ("weight", "bias") and value.dim() == 1:
                    mapped[f"{prefix}.IN.{leaf}"], sources[f"{prefix}.IN.{leaf}"] = value[:half], key
                if leaf == BN_COUNTER or value.dim() == 0:
                    mapped[bn_key], sources[bn_key] = value, key
                else:
                    mapped[bn_key], sources[bn_key] = value[half:], key
            elif target in own:
                mapped[target], sources[target] = value, key
            else:
                unexpected.append(key)
        return mapped, sources, unexpected

    return convert


# CenterNet's DeformConv: ``actf`` (BN, ReLU) after ``conv`` (DCNv2: weight, bias, conv_offset_mask); ours is a
# ConvBlock: 0 = ModulatedDeformConv (conv.weight, offset_mask) or a plain Conv2d, 1 = BatchNorm, 2 = ReLU.
_DEFORM = re.compile(r"^(?P<node>.*\.(?:proj|node)_\d+)\.(?P<part>conv\.conv_offset_mask|conv|actf\.0)\.(?P<leaf>\w+)$")


def centernet_dla_converter(body: str = "body", heads: str = "heads") -> Converter:
    """CenterNet / FairMOT ``DLASeg`` keys -> our ``Student`` with a ``DLA34Body`` at ``body``.

    ``base.*``, ``dla_up.*``, ``ida_up.*`` -> ``{body}.<same>``: DLA-34, DLAUp and IDAUp use CenterNet's
    module names, except each deformable ``proj_i`` / ``node_i``:

    - ``X.conv.weight`` -> ``X.0.conv.weight`` (``X.0.weight`` when the model's neck is plain convs,
      ``model.deformable=false``: the DCN's kernel without its offsets);
    - ``X.conv.conv_offset_mask.*`` -> ``X.0.offset_mask.*`` (DCNv2 lays out [offsets (dy, dx per tap),
      mask logits] as ``ModulatedDeformConv`` reads them);
    - ``X.actf.0.*`` (the BatchNorm) -> ``X.1.*``;
    - ``X.conv.bias``: our deformable conv has no bias (a BatchNorm follows), so the bias is folded into
      the BatchNorm's running mean, ``running_mean - bias``: BN(y + b) with mean m equals BN(y) with mean
      m - b exactly (eval), and training-mode BN removes any constant per channel anyway.

    Heads ``hm`` / ``wh`` / ``reg`` / ``id`` -> ``{heads}.heatmap`` / ``size`` / ``offset`` / ``embedding``
    (both are 3x3 conv, ReLU, 1x1 conv: indices 0 and 2). Heads whose shapes differ (COCO's 80 classes,
    ctdet's 2-channel ``wh`` against l,t,r,b, FairMOT's 128-d ``id`` against KD's 2048) are reported by
    ``load_pretrained`` and not loaded. ``base.fc.*`` (the ImageNet classifier) has no place.
    """

    def rule(key: str, own: Mapping[str, torch.Tensor]) -> str | None:
        part, _, rest = key.partition(".")
        if part in CENTERNET_HEADS:
            return f"{heads}.{CENTERNET_HEADS[part]}.{rest}"
        if part not in CENTERNET_PARTS:
            return None
        m = _DEFORM.match(key)
        if m is None:
            return f"{body}.{key}"
        node, sub, leaf = f"{body}.{m['node']}", m["part"], m["leaf"]
        if sub == "actf.0":
            return f"{node}.1.{leaf}"
        if sub == "conv.conv_offset_mask":
            return f"{node}.0.offset_mask.{leaf}"
        deformable = f"{node}.0.conv.{leaf}"
        return deformable if deformable in own or f"{node}.0.weight" not in own else f"{node}.0.{leaf}"

    def convert(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Converted:
        mapped, sources, unexpected = _rename(state, own, lambda k: rule(k, own))
        for key in list(unexpected):  # DCN biases without a place: fold into the following BatchNorm
            m = _DEFORM.match(key)
            if m is None or m["part"] != "conv" or m["leaf"] != "bias":
                continue
            mean_key = f"{body}.{m['node']}.1.running_mean"
            if mean_key in mapped and mapped[mean_key].shape == state[key].shape:
                mapped[mean_key] = mapped[mean_key] - state[key]
                unexpected.remove(key)
        return mapped, sources, unexpected

    return convert


def fastreid_converter(backbone: Converter, pool: str = "pool", reduction: str = "reduction", bnneck: str = "bnneck",
                       classifier: str = "classifier") -> Converter:
    """FastReID checkpoints (``model_final.pth``: ``{"model": ...}``; BoT / AGW / SBS configs) -> a Re-ID
    net: ``backbone.*`` is a torchvision-named ResNet(-IBN), renamed by ``backbone``; the head's GeM
    exponent ``heads.pool_layer.p`` (shape (1,)) -> ``{pool}.p``; its neck ``heads.bottleneck`` is the
    BNNeck alone (``.0``: BatchNorm -> ``{bnneck}.*``) or, with FastReID's ``EMBEDDING_DIM``, a 1x1 conv
    then the BNNeck (``.0.weight`` (D, C, 1, 1) -> the linear ``{reduction}.weight`` (D, C), ``.1`` ->
    ``{bnneck}``); the classifier ``heads.weight`` (or ``heads.classifier.weight``) -> ``{classifier}.weight``.
    ``pixel_mean`` / ``pixel_std`` (FastReID normalises in the model, as ours does) have no place."""

    def convert(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Converted:
        body = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        mapped, sources, unexpected = backbone(body, own)
        sources = {k: f"backbone.{v}" for k, v in sources.items()}
        unexpected = [f"backbone.{k}" for k in unexpected]
        first = state.get("heads.bottleneck.0.weight")
        reduced = first is not None and first.dim() == 4  # conv 1x1 before the BNNeck
        head_prefixes = {"heads.bottleneck.1.": f"{bnneck}."} if reduced else {"heads.bottleneck.0.": f"{bnneck}."}
        head_keys = {"heads.pool_layer.p": f"{pool}.p", "heads.weight": f"{classifier}.weight",
                     "heads.classifier.weight": f"{classifier}.weight"}
        if reduced:
            head_keys["heads.bottleneck.0.weight"] = f"{reduction}.weight"
        for key, value in state.items():
            if key.startswith("backbone."):
                continue
            target = head_keys.get(key) or next((new + key[len(old):] for old, new in head_prefixes.items()
                                                 if key.startswith(old)), None)
            if target is None or target not in own:
                unexpected.append(key)
                continue
            if value.numel() == own[target].numel():  # GeM p (1,) -> (); the 1x1 conv (D, C, 1, 1) -> (D, C)
                value = value.reshape(own[target].shape)
            mapped[target], sources[target] = value, key
        return mapped, sources, unexpected

    return convert


def load_pretrained(model: nn.Module, path: str | Path, *, strict: bool = True,
                    ignore_prefixes: tuple[str, ...] = (),
                    converters: Mapping[str, Converter] | None = None, hint: str = "",
                    heads: tuple[str, ...] = ("heads.",), verbose: bool = True) -> LoadReport:
    """Load what fits of a local checkpoint into ``model``; returns (and prints) a ``LoadReport``.

    ``converters``: format -> converter for this model (default: kdtrack checkpoints only); a checkpoint
    of another format is an error naming the formats the model takes (and ``hint``). ``ignore_prefixes``:
    checkpoint keys dropped first (e.g. a Re-ID classifier KD does not need). Errors
    (``CheckpointMismatchError``): zero tensors loaded, always; with ``strict``, a kdtrack checkpoint's
    missing, unexpected or shape-mismatched keys, and a foreign checkpoint's shape mismatches outside the
    model-key prefixes ``heads``.
    """
    converters = {"kdtrack": identity_converter} if converters is None else dict(converters)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    fmt = detect_format(state)
    name = type(model).__name__
    if fmt not in converters:
        raise CheckpointMismatchError(
            f"{path}: a {fmt} checkpoint (keys like {_listed(list(state), _FEW)}) does not fit {name}; "
            f"it takes {' / '.join(converters)} checkpoints" + (f"; {hint}" if hint else ""))
    own = model.state_dict()
    mapped, sources, unexpected = converters[fmt](state, own)
    wrong_shape = [k for k, v in mapped.items() if own[k].shape != v.shape]
    mismatched = [("" if sources.get(k, k) == k else f"{sources[k]} -> ")
                  + f"{k} {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong_shape]
    fits = {k: v for k, v in mapped.items() if own[k].shape == v.shape}
    loaded = sorted(k for k in fits if not k.endswith(BN_COUNTER))
    missing = sorted(k for k in own if k not in fits and not k.endswith(BN_COUNTER))
    report = LoadReport(str(path), fmt, name, tuple(loaded), tuple(missing), tuple(sorted(unexpected)),
                        tuple(mismatched))
    if not loaded:
        raise CheckpointMismatchError(
            f"{path}: no tensor of this {fmt} checkpoint fits {name} (checkpoint keys: "
            f"{_listed(list(state), _FEW)}; model keys: {_listed(list(own), _FEW)}"
            + (f"; shape mismatches: {_listed(mismatched, _FEW)}" if mismatched else "") + ")")
    if strict:
        fatal = [m for k, m in zip(wrong_shape, mismatched) if fmt == "kdtrack" or not k.startswith(heads)]
        if fatal:
            raise CheckpointMismatchError(
                f"{path}: shape mismatch for {len(fatal)} key(s): {_listed(fatal)}")
    if strict and fmt == "kdtrack":
        if missing or report.unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
            if report.unexpected:
                parts.append(f"{len(report.unexpected)} unexpected key(s): {_listed(report.unexpected)}")
            raise CheckpointMismatchError(f"{path}: checkpoint does not match {name}: " + "; ".join(parts))
    model.load_state_dict(fits, strict=False)
    if verbose:
        print(report.summary(), flush=True)
    return report


def load_weights(model: nn.Module, path: str | Path, strict: bool = True,
                 ignore_prefixes: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """A kdtrack checkpoint into ``model``; returns (missing, unexpected) keys (``load_pretrained``'s
    rules: zero matches is an error; ``strict``: any missing, unexpected or mis-shaped key too)."""
    report = load_pretrained(model, path, strict=strict, ignore_prefixes=ignore_prefixes)
    return list(report.missing), list(report.unexpected)
