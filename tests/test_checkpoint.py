"""Checkpoints hold the full training state, are atomic, and load with weights_only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdtrack.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from kdtrack.config import load_config


class _CriterionWithState(nn.Module):
    """Stands in for the loss module: learnable weights + a queue buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.s_det = nn.Parameter(torch.tensor(-1.85))
        self.register_buffer("queue", torch.zeros(4, 3))


def _train_step(model, criterion, optimizer):
    loss = model(torch.randn(5, 3)).pow(2).mean() * torch.exp(-criterion.s_det) + criterion.s_det
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_round_trip_restores_model_criterion_optimizer_scheduler(tmp_path):
    torch.manual_seed(0)
    model, criterion = nn.Linear(3, 2), _CriterionWithState()
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train_step(model, criterion, optimizer)
    scheduler.step()
    criterion.queue.fill_(7.0)
    cfg = load_config("tiny", ["train.lr=0.1"])
    path = save_checkpoint(tmp_path / "ckpt", model=model, config=cfg, criterion=criterion,
                           optimizer=optimizer, scheduler=scheduler, epoch=2, iteration=11,
                           metrics={"loss": 1.5})
    assert path.name == "checkpoint.pt" and path.exists()
    assert not list(path.parent.glob("*.tmp")), "temp file left behind"

    model2, criterion2 = nn.Linear(3, 2), _CriterionWithState()
    optimizer2 = torch.optim.Adam([*model2.parameters(), *criterion2.parameters()], lr=0.1)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    state = load_checkpoint(path.parent)
    epoch, iteration = restore_training_state(state, model=model2, criterion=criterion2,
                                              optimizer=optimizer2, scheduler=scheduler2)
    assert (epoch, iteration) == (2, 11) and state["metrics"] == {"loss": 1.5}
    assert state["config"] == cfg
    assert torch.equal(model2.weight, model.weight)
    assert criterion2.s_det.item() == pytest.approx(criterion.s_det.item())
    assert torch.equal(criterion2.queue, torch.full((4, 3), 7.0))
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(0.05)
    # resumed training takes the same step as uninterrupted training
    torch.manual_seed(1)
    _train_step(model, criterion, optimizer)
    torch.manual_seed(1)
    _train_step(model2, criterion2, optimizer2)
    assert torch.allclose(model.weight, model2.weight)


def test_ddp_wrapped_model_saves_unwrapped_keys(tmp_path):
    model = nn.DataParallel(nn.Linear(3, 2))
    save_checkpoint(tmp_path / "c.pt", model=model, config=load_config())
    keys = set(load_checkpoint(tmp_path / "c.pt")["model"])
    assert keys == {"weight", "bias"}


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a kdtrack checkpoint"):
        load_checkpoint(other)


def test_config_keys_from_an_older_version_are_dropped_with_a_warning(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2), config=load_config("tiny"))
    state = torch.load(path, weights_only=True)
    state["config"]["decode"]["retired_field"] = 1.0
    torch.save(state, path)
    with pytest.warns(UserWarning, match="decode.retired_field"):
        loaded = load_checkpoint(path)
    assert loaded["config_dropped_keys"] == ["decode.retired_field"]
    assert loaded["config"].model.backbone == "tiny"
    # a known key with a wrong type is still an error naming the file
    state["config"]["train"]["epochs"] = "many"
    torch.save(state, path)
    with pytest.raises(Exception, match=r"c\.pt.*train\.epochs"), pytest.warns(UserWarning):
        load_checkpoint(path)


def test_checkpoint_from_before_a_model_field_loads_with_the_behaviour_it_was_trained_with(tmp_path):
    """A student saved before ``model.embedding_norm`` existed had no centring BatchNorm: load_student
    must rebuild it without one (strict load), not fail on missing keys or add an untrained norm."""
    import dataclasses

    from kdtrack.inference import load_student
    from kdtrack.models import build_student

    cfg = load_config("tiny", ["model.embedding_norm=none"])
    model = build_student(cfg.model)
    path = save_checkpoint(tmp_path / "old", model=model, config=cfg)
    state = torch.load(path, weights_only=True)
    del state["config"]["model"]["embedding_norm"]  # as written by an older kdtrack
    torch.save(state, path)
    loaded, loaded_cfg = load_student(path)
    assert loaded_cfg.model.embedding_norm == "none"
    assert isinstance(loaded.embedding_norm, nn.Identity)
    # A current checkpoint keeps its centring norm and its running statistics.
    new_cfg = load_config("tiny")
    assert new_cfg.model.embedding_norm == "batchnorm"
    fresh = build_student(new_cfg.model)
    fresh.embedding_norm.running_mean.fill_(0.5)
    new_path = save_checkpoint(tmp_path / "new", model=fresh, config=new_cfg)
    reloaded, _ = load_student(new_path)
    assert torch.equal(reloaded.embedding_norm.running_mean, torch.full_like(fresh.embedding_norm.running_mean, 0.5))
    assert dataclasses.asdict(new_cfg.model)["embedding_norm"] == "batchnorm"


def test_kd_checkpoint_from_before_kd_reduction_keeps_its_loss_scale(tmp_path):
    """KD checkpoints written before ``loss.kd_reduction`` averaged the smooth-L1 over channels too: a resume
    must keep that ("mean"), not jump to the new per-object sum."""
    cfg = load_config("tiny")
    path = save_checkpoint(tmp_path / "old", model=build_student_for(cfg), config=cfg)
    state = torch.load(path, weights_only=True)
    del state["config"]["loss"]["kd_reduction"]
    torch.save(state, path)
    assert load_checkpoint(path)["config"].loss.kd_reduction == "mean"
    assert load_config("tiny").loss.kd_reduction == "sum_per_object"


def build_student_for(cfg):
    from kdtrack.models import build_student

    return build_student(cfg.model)
