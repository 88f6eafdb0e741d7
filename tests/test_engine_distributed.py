"""The train step on a real 2-process gloo group: what one rank sees must not split the ranks.

DDP waits for a gradient of every parameter; a rank that stops or steps alone leaves the others
waiting in a collective or drifting apart. Each case runs in two spawned processes (a short
collective timeout turns a hang into a failure) and writes what it saw for the test to compare.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdtrack.config import load_config
from kdtrack.engine import average_gradients, backward_and_step, build_optimizer, leave_out_unused_heads, train_step
from kdtrack.losses import Criterion
from kdtrack.models import build_student

WORLD = 2
SMALL = ["model.input_width=128", "model.input_height=64", "model.width=8", "model.head_conv=16",
         "model.embedding_dim=16", "model.deformable=false", "loss.queue_size=64", "train.lr=0.001"]


def _spawn(case, tmp_path) -> list[dict]:
    mp.spawn(_run, args=(case, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _run(rank: int, case, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    try:
        torch.save(case(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _batch(cfg) -> dict:
    """Two 128 x 64 noise images with two people each (one view)."""
    import numpy as np

    from kdtrack.data.letterbox import letterbox
    from kdtrack.data.targets import encode_targets, person_keys

    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(2):
        canvas, _ = letterbox((rng.random((64, 128, 3)) * 255).astype(np.uint8), 128, 64)
        boxes = np.array([[10, 10, 40, 60], [70, 5, 110, 60]], np.float32)
        targets.append(encode_targets(boxes, person_keys(i + 1, 2), None, (64, 128), max_objects=4, size_channels=4))
        images.append(torch.from_numpy(canvas))
    batch = {k: torch.stack([t[k] for t in targets]) for k in targets[0]}
    batch["image"] = torch.stack(images)
    return batch


# --------------------------------------------------------------------------- AMP: all-reduce before unscale_


def _inf_on_rank_one(rank: int) -> dict:
    """A loss-owned parameter (as ``s_det``: DDP does not see it) whose gradient is inf on rank 1 only."""
    loss_params = nn.Linear(1, 1, bias=False)
    nn.init.ones_(loss_params.weight)
    optimizer = torch.optim.SGD(loss_params.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    x = torch.tensor([[float("inf") if rank == 1 else 1.0]])
    total = loss_params(x).sum()
    backward_and_step(total, optimizer, scaler=scaler, sync=lambda: average_gradients(loss_params))
    return {"weight": loss_params.weight.detach().clone(), "scale": scaler.get_scale()}


def test_an_inf_gradient_on_one_rank_skips_the_amp_step_on_every_rank(tmp_path):
    # The scaled gradients (16 on rank 0, inf on rank 1) are averaged first (inf on both), so both
    # scalers find the inf: the weight stays 1 and both scales halve to 8. Unscaling before the
    # average let rank 0 step with an inf gradient (weight -inf) while rank 1 skipped.
    results = _spawn(_inf_on_rank_one, tmp_path)
    for r in results:
        assert r["weight"].item() == 1.0
        assert r["scale"] == 8.0


# --------------------------------------------------------------------------- DDP and heads no loss reads


def _detection_student_under_ddp(rank: int) -> dict:
    cfg = load_config("tiny", SMALL + ["loss.id_mode=none"])
    torch.manual_seed(0)
    student, criterion = build_student(cfg.model), Criterion.from_config(cfg)
    embedding_before = [p.detach().clone() for p in student.heads["embedding"].parameters()]
    dropped = leave_out_unused_heads(student, criterion)
    model = DistributedDataParallel(student)
    optimizer = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfg.train)
    batch = _batch(cfg)
    totals = [train_step(model, criterion, batch, optimizer, device="cpu", iteration=i)["total"] for i in range(3)]
    out = {"dropped": dropped, "totals": totals, "state": {k: v.clone() for k, v in student.state_dict().items()},
           "embedding_same": all(torch.equal(a, b) for a, b in
                                 zip(embedding_before, student.heads["embedding"].parameters()))}
    # the control: the same student wrapped as it was, every head computed, fails on its second step
    torch.manual_seed(0)
    plain = DistributedDataParallel(build_student(cfg.model))
    optimizer = build_optimizer(plain.parameters(), cfg.train)
    train_step(plain, criterion, batch, optimizer, device="cpu", iteration=0)
    try:
        train_step(plain, criterion, batch, optimizer, device="cpu", iteration=1)
        out["control"] = "no error"
    except RuntimeError as exc:
        out["control"] = str(exc)
    return out


def test_detection_only_student_trains_under_ddp_without_its_embedding_head(tmp_path):
    results = _spawn(_detection_student_under_ddp, tmp_path)
    for r in results:
        assert r["dropped"] == ["embedding"]
        assert all(torch.isfinite(torch.tensor(r["totals"])))
        assert r["totals"][-1] < r["totals"][0]
        assert r["embedding_same"]  # not trained, still in the state dict (evaluation builds every head)
        assert "Expected to have finished reduction" in r["control"]
    for key, value in results[0]["state"].items():  # DDP kept the replicas identical
        assert torch.equal(value, results[1]["state"][key]), key


# --------------------------------------------------------------------------- a non-finite loss on one rank


def _nan_loss_on_rank_one(rank: int, amp: bool) -> dict:
    cfg = load_config("tiny", SMALL + ["loss.id_mode=none"])
    torch.manual_seed(0)
    student, criterion = build_student(cfg.model), Criterion.from_config(cfg)
    leave_out_unused_heads(student, criterion)
    model = DistributedDataParallel(student)  # broadcasts rank 0's weights: poison rank 1 after it
    if rank == 1:
        with torch.no_grad():
            student.heads["heatmap"][-1].bias.fill_(float("nan"))
    optimizer = build_optimizer(model.parameters(), cfg.train)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0) if amp else None
    before = {k: v.clone() for k, v in student.body.state_dict().items() if v.is_floating_point()}
    out: dict = {}
    try:
        train_step(model, criterion, _batch(cfg), optimizer, device="cpu", scaler=scaler, iteration=4)
        out["error"] = ""
    except FloatingPointError as exc:
        out["error"] = str(exc)
    out["body_params_same"] = all(torch.equal(before[name], p) for name, p in student.body.named_parameters())
    out["scale"] = scaler.get_scale() if scaler is not None else None
    return out


def _nan_fp32(rank: int) -> dict:
    return _nan_loss_on_rank_one(rank, amp=False)


def _nan_amp(rank: int) -> dict:
    return _nan_loss_on_rank_one(rank, amp=True)


def test_a_nan_loss_on_one_rank_stops_every_rank_naming_it(tmp_path):
    # Rank 0's loss is finite: it raises too (instead of waiting in DDP's all-reduce for rank 1) and
    # says which rank had the bad loss; rank 1 also lists its terms.
    zero, one = _spawn(_nan_fp32, tmp_path)
    assert "iteration 4: the loss is not finite on rank(s) [1]" in zero["error"]
    assert "iteration 4: loss is nan on rank(s) [1]" in one["error"] and "det/heatmap" in one["error"]
    assert zero["body_params_same"] and one["body_params_same"]


def test_a_nan_loss_on_one_rank_skips_the_amp_step_on_every_rank(tmp_path):
    # Under a gradient scaler nothing raises: the NaN gradients are averaged into every rank and every
    # scaler skips the step (weights untouched) and halves its scale.
    for r in _spawn(_nan_amp, tmp_path):
        assert r["error"] == ""
        assert r["body_params_same"]
        assert r["scale"] == 8.0


@pytest.mark.parametrize("id_mode, kept", [("none", 3), ("kd", 4), ("contrastive", 4), ("supervised", 4)])
def test_the_criterion_names_the_outputs_it_reads(id_mode, kept):
    cfg = load_config("tiny", SMALL + [f"loss.id_mode={id_mode}", "loss.num_id_classes=5"])
    assert len(Criterion.from_config(cfg).required_outputs) == kept
    student = build_student(cfg.model)
    leave_out_unused_heads(student, Criterion.from_config(cfg))
    student.train()
    images = torch.zeros(1, 3, 64, 128)
    assert len(student(images)) == kept
    student.eval()
    assert set(student(images)) == {"heatmap", "size", "offset", "embedding"}  # evaluation sees every head
