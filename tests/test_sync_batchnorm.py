"""train.sync_batchnorm: BatchNorm statistics over every GPU worker's images, converted before DDP.

torch's SyncBatchNorm only syncs CUDA tensors, so the option is refused on the driver without
``train.use_gpu``; here the conversion itself is checked (what it keeps and where it is a no-op).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jobs.train import check_recipe
from kdtrack.config import ConfigError, load_config
from kdtrack.engine import freeze_parts, sync_batchnorm
from kdtrack.models import build_student


def test_sync_batchnorm_needs_gpu_workers():
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm .* set train.use_gpu=true"):
        check_recipe(load_config("tiny", ["train.sync_batchnorm=true"]))
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm"):
        check_recipe(load_config("teacher_cpu", ["train.sync_batchnorm=true"]))
    check_recipe(load_config("tiny", ["train.sync_batchnorm=true", "train.use_gpu=true"]))
    assert load_config("tiny").train.sync_batchnorm is False  # off unless asked for


def test_conversion_keeps_weights_frozen_parts_and_checkpoint_keys():
    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.deformable=false"])
    torch.manual_seed(0)
    student = build_student(cfg.model)
    freeze_parts(student, ["body"])
    state = {k: v.clone() for k, v in student.state_dict().items()}
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in student.modules())
    assert norms > 0

    assert sync_batchnorm(student, 1) is student  # one worker: nothing to sync
    converted = sync_batchnorm(student, 2)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == norms
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert not any(p.requires_grad for p in converted.body.parameters())  # still frozen
    assert all(p.requires_grad for p in converted.heads["heatmap"].parameters())
    assert not any(m.training for m in converted.body.modules())  # freeze_parts' eval mode carried over
    after = converted.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    build_student(cfg.model).load_state_dict(after)  # a checkpoint loads into the plain student
