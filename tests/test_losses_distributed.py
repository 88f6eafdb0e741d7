"""all_gather_cat on a real 2-process gloo group, and the contrastive queue filled from both workers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdtrack.losses.contrastive import DenseContrastiveLoss
from kdtrack.losses.distributed import all_gather_cat, mean_over_ranks

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # Rank 0 sends 1 row, rank 1 sends 3 rows (variable lengths), then an empty tensor.
        x = torch.full((1 + 2 * rank, 2), float(rank))
        gathered = all_gather_cat(x)
        empty = all_gather_cat(torch.zeros(0, 2))
        loss = DenseContrastiveLoss(3, queue_size=8, gather_fn=all_gather_cat)
        pts = torch.eye(3)[rank : rank + 1].repeat(2, 1) if rank == 0 else torch.zeros(0, 3)
        keys = torch.tensor([10, 10]) if rank == 0 else torch.zeros(0, dtype=torch.long)
        emb, person = loss.person_embeddings(pts, keys)
        loss.enqueue(loss.gather_fn(emb), loss.gather_fn(person))
        # logged terms: rank 0 {total 1, det 2, img/s 3}, rank 1 {total 3, det 6, img/s 5, only1 7}
        terms = {"total": 1.0 + 2 * rank, "det": 2.0 + 4 * rank, "perf/images_per_s": 3.0 + 2 * rank}
        if rank == 1:
            terms["only1"] = 7.0
        mean = mean_over_ranks(terms)
        torch.save(
            {"gathered": gathered, "empty": empty, "queue_keys": loss.queue_keys, "fill": loss.queue_fill,
             "mean": torch.tensor([mean["total"], mean["det"], mean["perf/images_per_s"], mean["only1"]])},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_all_gather_two_processes(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["gathered"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
        assert r["empty"].shape == (0, 2)
        # Only rank 0 had a person; both ranks' queues hold it.
        assert r["fill"].item() == 1 and r["queue_keys"][0].item() == 10
        # every rank logs the same numbers: losses averaged, throughput summed, a one-rank key as it is
        assert r["mean"].tolist() == [2.0, 4.0, 8.0, 7.0]


def test_no_op_without_process_group():
    x = torch.randn(3, 2)
    assert all_gather_cat(x) is x
    assert mean_over_ranks({"total": 1.5}) == {"total": 1.5}
