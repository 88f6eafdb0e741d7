"""Full training state on disk: model, criterion (uncertainty weights, id
classifier, contrastive queue), optimizer, scheduler, AMP scaler, config, progress.

Written atomically (temp file + rename) and read with ``weights_only=True``:
only tensors and plain Python containers go in, never pickled objects.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdtrack.config import Config, config_from_dict, config_to_dict, drop_unknown_keys, to_plain
from kdtrack.io import atomic_save

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (``.module`` only when wrapped)."""
    return getattr(model, "module", model) if isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
    ) else model


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: Config,
    criterion: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    key_encoder: nn.Module | None = None,
    epoch: int = 0,
    iteration: int = 0,
    metrics: dict[str, float] | None = None,
    mlflow_run_id: str = "",
) -> Path:
    """Save everything needed to resume exactly (``mlflow_run_id``: the run a resume keeps logging into);
    returns the written path."""
    state = {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "criterion": unwrap(criterion).state_dict() if criterion is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "key_encoder": key_encoder.state_dict() if key_encoder is not None else None,
        "config": to_plain(config_to_dict(config)),  # lists, not tuples: loads under weights_only on any torch
        "epoch": int(epoch),
        "iteration": int(iteration),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "mlflow_run_id": str(mlflow_run_id),
    }
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        # a checkpoint folder (Ray Train's) also gets its config as JSON: a driver checks a resume against it
        # without reading the weights (possibly from object storage)
        from kdtrack.io import atomic_write_json

        atomic_write_json(path / CONFIG_SIDECAR, {"config": state["config"], "epoch": state["epoch"],
                                                  "iteration": state["iteration"]})
        path = path / CHECKPOINT_NAME
    return atomic_save(path, lambda handle: torch.save(state, handle))


CONFIG_SIDECAR = "config.json"
# Fields a resumed run may change: where things live, how often it logs / keeps checkpoints / validates, and
# settings read only when a run starts. Any other change (lr, schedule, budget, batch, model, loss, data) would
# silently continue the old optimiser state and schedule under a new config.
RESUME_FREE_SECTIONS = ("mlflow", "eval", "pseudo", "synth", "decode")
RESUME_FREE_FIELDS = frozenset({
    "data.root", "data.loader_workers", "data.prefetch_batches", "data.map_num_cpus", "data.on_error", "data.loader",
    "data.map_actors", "data.preserve_order", "data.max_bad_fraction",
    "train.max_failures", "train.keep_checkpoints", "train.log_every", "train.collapse_cosine",
    "train.collapse_patience", "train.cpus_per_worker", "train.placement_strategy", "train.use_gpu", "train.amp", "train.run_name",
    "train.init_from", "train.report_every", "train.checkpoint_every", "train.val_protocols", "train.val_split",
    "train.val_root", "train.resume_policy", "train.smoke_iterations", "model.pretrained", "teacher.checkpoint",
    "teacher.pretrained", "teacher.embeddings",
})


def resume_changes(saved: Config | dict, new: Config) -> list[tuple[str, Any, Any]]:
    """``[(section.field, saved value, new value)]`` for every field a resume must not change silently
    (see :data:`RESUME_FREE_FIELDS`); keys the saved config lacks (older versions) are left out."""
    def flat(cfg: Config | dict) -> dict[str, Any]:
        data = to_plain(config_to_dict(cfg) if not isinstance(cfg, dict) else cfg)  # tuples and lists alike
        return {f"{section}.{name}": value for section, values in data.items() if isinstance(values, dict)
                for name, value in values.items()}

    old, cur = flat(saved), flat(new)
    return [(key, old[key], cur[key]) for key in sorted(cur)
            if key in old and old[key] != cur[key] and key not in RESUME_FREE_FIELDS
            and key.split(".", 1)[0] not in RESUME_FREE_SECTIONS]


# (section, field) -> the value a checkpoint saved before the field existed was trained with.
LEGACY_DEFAULTS: dict[tuple[str, str], Any] = {
    ("model", "embedding_norm"): "none", ("model", "unet_merge"): "add",
    ("loss", "kd_reduction"): "mean",  # KD checkpoints before loss.kd_reduction averaged over channels too
}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding ``checkpoint.pt``) safely.

    Returns the raw state dict with ``"config"`` rebuilt as a :class:`Config`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupted / not a torch file / unsafe pickle
        raise ValueError(f"{path}: not a readable kdtrack checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a kdtrack checkpoint (missing 'model'/'config')")
    # A checkpoint outlives config changes: keys this version no longer has are
    # dropped (and reported), wrong types of known keys are still an error.
    known, dropped = drop_unknown_keys(state["config"])
    # Fields added after a checkpoint was written take the behaviour it was trained with.
    for (section, key), value in LEGACY_DEFAULTS.items():
        if isinstance(known.get(section), dict) and key not in known[section]:
            known[section] = {**known[section], key: value}
    if dropped:
        warnings.warn(f"{path}: config keys unknown to this kdtrack version ignored: {', '.join(dropped)}",
                      stacklevel=2)
    state["config"] = config_from_dict(known, source=str(path))
    state["config_dropped_keys"] = dropped
    return state


def restore_training_state(
    state: dict[str, Any],
    *,
    model: nn.Module,
    criterion: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    key_encoder: nn.Module | None = None,
) -> tuple[int, int]:
    """Load every saved part into live objects; returns ``(epoch, iteration)``.

    A ``key_encoder`` with no saved state (a checkpoint without one) is re-seeded
    from the restored student, as a fresh run seeds it."""
    unwrap(model).load_state_dict(state["model"])
    if key_encoder is not None and state.get("key_encoder") is None:
        key_encoder.encoder.load_state_dict(unwrap(model).state_dict())
    for obj, key in ((criterion, "criterion"), (optimizer, "optimizer"),
                     (scheduler, "scheduler"), (scaler, "scaler"), (key_encoder, "key_encoder")):
        if obj is not None and state.get(key) is not None:
            target = unwrap(obj) if isinstance(obj, nn.Module) else obj
            target.load_state_dict(state[key])
    return int(state.get("epoch", 0)), int(state.get("iteration", 0))
