"""Loading local checkpoints into a model (never a download).

A checkpoint is a raw ``state_dict`` or a dict holding one under ``"model"``
(what ``kdtrack`` training checkpoints contain). ``module.`` prefixes left by
DistributedDataParallel are stripped. Anything that does not fit is an error
naming the file and the offending keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

_MAX_LISTED = 10  # keys named in an error message before "... and N more"


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model."""


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (``torch.load(weights_only=True)``, on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointMismatchError(f"{path}: expected a state dict of tensors or a dict with a 'model' state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in data.items()}


def load_weights(model: nn.Module, path: str | Path, strict: bool = True,
                 ignore_prefixes: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Copy a checkpoint into ``model``; returns (missing, unexpected) keys.

    ``strict``: any missing or unexpected key is an error. Shape mismatches are
    always an error. Keys starting with one of ``ignore_prefixes`` are dropped
    from the checkpoint first (e.g. a Re-ID classifier not needed for KD).
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    bad_shapes = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise CheckpointMismatchError(f"{path}: shape mismatch for {len(bad_shapes)} key(s): {_listed(bad_shapes)}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        raise CheckpointMismatchError(f"{path}: checkpoint does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return missing, unexpected
