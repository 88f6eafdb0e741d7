"""The train step reads nothing back to the host between logging steps (on CUDA each read drains the GPU),
the momentum update is fused and the key encoder computes the embedding alone.

Host reads are counted by bench/train_step.py (Tensor.item / float / int / bool / tolist / numpy called
from kdtrack code) on the AMP path, as the GPU trains.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

from kdtrack.config import load_config
from kdtrack.engine import is_log_step, run_epoch
from kdtrack.models import build_student
from kdtrack.models.momentum import MomentumEncoder

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("_bench_train_step", ROOT / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_host_reads_between_logging_steps():
    bench = _bench()
    steps = bench.host_reads_per_step("detection", iterations=6, log_every=3)
    # logging steps: iterations 1, 3 and 6 (the first, every third, the last)
    assert [s["iteration"] + 1 for s in steps if s["logged"]] == [1, 3, 6]
    assert all(s["reads"] == 0 for s in steps if not s["logged"]), steps  # was 6 per step (every loss term)
    assert all(s["reads"] > 0 for s in steps if s["logged"])  # the terms the logger prints
    # the contrastive loss reads nothing either (it read 2: whether any queue slot was used, now masked on the
    # device, and the largest person's point count, which sized padded per-person blocks)
    contrastive = bench.host_reads_per_step("contrastive", iterations=4, log_every=3)
    assert all(s["reads"] == 0 for s in contrastive if not s["logged"]), contrastive
    assert all(s["reads"] > 0 for s in contrastive if s["logged"])


def test_the_log_rule_is_run_epochs():
    reports = []
    run_epoch(lambda batch, it: {"total": torch.tensor(1.0)}, [{"image": torch.zeros(1, 3, 4, 4)}] * 7, 0,
              start_iteration=2, max_iterations=9, log_every=3, log_fn=lambda it, terms: reports.append(it))
    expected = [it + 1 for it in range(2, 9) if is_log_step(it, start_iteration=2, log_every=3, max_iterations=9)]
    assert reports == expected == [3, 6, 9]


def test_an_epoch_that_ends_between_logging_steps_returns_floats():
    _, terms = run_epoch(lambda batch, it: {"total": torch.tensor(2.5)}, [{"image": torch.zeros(1, 3, 4, 4)}] * 2, 0,
                         log_every=10, log_fn=lambda it, terms: None)
    assert terms == {"total": 2.5} and isinstance(terms["total"], float)


def test_fused_momentum_update_is_the_per_tensor_update_and_keys_compute_the_embedding_alone():
    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16"])
    torch.manual_seed(0)
    student = build_student(cfg.model)
    keys = MomentumEncoder(student, 0.9)
    reference = copy.deepcopy(keys.encoder)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        for b in student.buffers():
            b.add_(1)
    keys.update(student)
    with torch.no_grad():  # theta_k <- 0.9 theta_k + 0.1 theta_q, tensor by tensor
        for k, q in zip(reference.parameters(), student.parameters()):
            k.mul_(0.9).add_(q, alpha=0.1)
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), keys.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(student.buffers(), keys.encoder.buffers()))

    called = []
    for name, head in keys.encoder.heads.items():
        head.register_forward_hook(lambda module, args, out, name=name: called.append(name))
    embedding = keys(torch.rand(2, 3, cfg.model.input_height, cfg.model.input_width))
    assert called == ["embedding"] and embedding.shape[1] == 16
