"""Benchmark one tiny training step (``demo`` preset: IDF stage 1, contrastive, two views) without and with
Ray Train, on the same data and iteration budget, in one run on one machine.

* plain loop — no Ray: ``TrainingDataset`` + torch ``DataLoader`` (``num_workers=0``, ``kdtrack.data.TorchFeed``,
  the loader ``data.loader=torch`` runs inside a Ray worker) + ``kdtrack.engine.train_one_epoch``, 2 torch threads;
* Ray Train, 1 worker, ``data.loader=torch`` — ``jobs.train.main``, the same loader in the worker (1.5 CPUs:
  2 threads): Ray Train's own overhead;
* Ray Train, 1 worker, ``data.loader=ray`` — decode + augmentation in a Ray Data actor (0.5 CPU) feeding it;
* Ray Train, 2 workers x 0.75 CPU (1 thread each) + the 0.5-CPU decode actor, DDP.

The Ray runs share one local 2-CPU cluster started here. images/s steady = images trained (both views, all
workers) / seconds, from ``train_one_epoch``'s ``perf/*`` windows after the first ``--warmup`` iterations
(read back from each run's MLflow history: ``Result.metrics`` holds the loss terms, not the perf ones);
wall s = the whole run (records, model, Ray Train start, checkpoint); data wait = share of the steady
windows spent waiting for the next batch. Other work on the machine skews every figure: run it alone.

    .venv/bin/python bench/train_step.py                # ~5 min on 2 cores; makes runs/bench-train-world-tiny once
    .venv/bin/python bench/train_step.py --smoke-test   # 6 iterations
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

PERF = ("perf/images_per_s", "perf/data_wait", "perf/seconds_per_iteration")
# (label, extra --set items): the Ray setups; the decode actor's 0.5 CPU fills the 2-CPU cluster.
RAY_SETUPS = (
    ("Ray Train 1 worker (torch loader)", ["data.loader=torch", "train.cpus_per_worker=1.5"]),
    ("Ray Train 1 worker (Ray Data)", ["data.loader=ray", "train.cpus_per_worker=1.5", "data.map_num_cpus=0.5"]),
    ("Ray Train 2 workers (Ray Data)", ["data.loader=ray", "train.num_workers=2", "train.cpus_per_worker=0.75",
                                        "data.map_num_cpus=0.5"]),
)
PLAIN = "plain loop"
RATIO_ROW = RAY_SETUPS[0][0]


def make_world(out: Path) -> Path:
    """The tiny synthetic world (seed 0), generated once: every setup reads the same images."""
    if (out / "world.json").is_file() and (out / "crowdhuman").is_dir() and (out / "coco").is_dir():
        return out
    print(f"generating the tiny world into {out} ...", flush=True)
    subprocess.run([sys.executable, "-m", "jobs.generate_synth", "--preset", "tiny", "--out", str(out), "--seed", "0"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return out


def train_argv(world: Path, out: Path, iterations: int, log_every: int, extra: list[str]) -> list[str]:
    """``jobs.train`` arguments shared by every setup: an iteration budget (epochs 0) and one checkpoint at the
    end (``checkpoint_every`` past the run: the plain loop writes none, so per-epoch ones would skew wall s)."""
    sets = ["train.epochs=0", f"train.max_iterations={iterations}", f"train.log_every={log_every}",
            f"train.checkpoint_every={iterations + 1}", *extra]
    argv = ["--config", "demo", "--data-root", str(world), "--out", str(out),
            "--mlflow-uri", f"sqlite:///{out.resolve() / 'mlflow.db'}"]
    for item in sets:
        argv += ["--set", item]
    return argv


def summarise(windows: list[tuple[int, dict[str, float]]], warmup: int) -> dict[str, float]:
    """Steady figures from ``(step, perf terms)`` reports: each covers the iterations since the previous one;
    those ending at or before ``warmup`` (first batch, allocator and stream start-up) are left out. With
    several workers the terms are rank 0's ``mean_over_ranks``: images/s summed, the rest averaged."""
    images = seconds = waited = 0.0
    prev = None
    for step, perf in sorted(windows):
        steps = step - (prev if prev is not None else step - 1)
        prev = step
        if step <= warmup:
            continue
        window_s = perf["perf/seconds_per_iteration"] * steps
        seconds += window_s
        images += perf["perf/images_per_s"] * window_s
        waited += perf["perf/data_wait"] * window_s
    if seconds <= 0:
        raise RuntimeError(f"no perf window after iteration {warmup}: raise --iterations")
    return {"images_per_s": images / seconds, "data_wait": waited / seconds, "steady_seconds": seconds}


def plain_loop(argv: list[str], warmup: int) -> dict[str, float]:
    """The training step with no Ray at all, built as ``jobs.train.train_func`` builds it (same config, records,
    dataset, loader, network, loss, optimizer, schedule, key encoder): the baseline."""
    import numpy as np
    import torch

    from jobs.train import CONTRASTIVE_RECIPES, dataset_factory, get_args_parser, resolve_config, training_data
    from kdtrack.data import TorchFeed
    from kdtrack.engine import build_optimizer, build_scheduler, total_iterations, train_one_epoch, trainable_parameters
    from kdtrack.losses import Criterion
    from kdtrack.models import build_student
    from kdtrack.models.momentum import MomentumEncoder

    start = time.perf_counter()
    torch.set_num_threads(2)  # as a Ray worker of 1.5 CPUs sets it
    cfg = resolve_config(get_args_parser().parse_args(argv))
    tc = cfg.train
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    _, loop_data = training_data(cfg)
    factory, _ = dataset_factory(cfg, loop_data)
    feed = TorchFeed(factory(), cfg, rank=0, world=1)
    model = build_student(cfg.model)
    criterion = Criterion.from_config(cfg)
    optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), tc)
    total = total_iterations(tc, feed.per_epoch)
    scheduler = build_scheduler(optimizer, tc, total)
    key_encoder = None
    if tc.recipe in CONTRASTIVE_RECIPES and cfg.loss.key_momentum > 0:
        key_encoder = MomentumEncoder(model, cfg.loss.key_momentum)
    windows: list[tuple[int, dict[str, float]]] = []

    def log_fn(step: int, terms: dict[str, float]) -> None:
        windows.append((step, {k: terms[k] for k in PERF}))

    iteration, epoch = 0, 0
    while iteration < total:
        iteration, _ = train_one_epoch(model, criterion, optimizer, feed.epoch_batches(epoch, iteration, 0),
                                       torch.device("cpu"), epoch, scheduler=scheduler, amp=tc.amp, grad_clip=tc.grad_clip,
                                       start_iteration=iteration, max_iterations=total, log_every=tc.log_every,
                                       log_fn=log_fn, key_encoder=key_encoder)
        epoch += 1
    return {**summarise(windows, warmup), "wall_s": time.perf_counter() - start, "iterations": iteration}


def ray_run(argv: list[str], warmup: int) -> dict[str, float]:
    """``jobs.train.main`` as a user runs it; the perf windows come from its MLflow history (rank 0 logs them
    at every ``log_every``-th iteration; ``Result.metrics`` carries the loss terms only)."""
    from mlflow.tracking import MlflowClient

    from jobs.train import get_args_parser, main

    start = time.perf_counter()
    result = main(get_args_parser().parse_args(argv))
    wall = time.perf_counter() - start
    client = MlflowClient(tracking_uri=result["mlflow_uri"])
    history = {key: {m.step: m.value for m in client.get_metric_history(result["mlflow_run_id"], f"train/{key}")}
               for key in PERF}
    windows = [(step, {key: history[key][step] for key in PERF}) for step in history[PERF[0]]]
    return {**summarise(windows, warmup), "wall_s": wall, "fit_s": result["fit_seconds"],
            "iterations": int(result["metrics"]["iteration"])}


def table(rows: dict[str, dict[str, float]]) -> str:
    base = rows[PLAIN]["images_per_s"]
    lines = ["| setup | images/s steady | wall s | data wait | ratio vs plain |", "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['wall_s']:.1f} | {row['data_wait']:.0%} | "
                     f"{row['images_per_s'] / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=None,
                        help="existing synthetic world root (default: generate runs/bench-train-world-tiny once)")
    parser.add_argument("--iterations", type=int, default=None, help="iteration budget of every run (default 30)")
    parser.add_argument("--log-every", type=int, default=None, help="perf window length in iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="iterations left out of the steady figure (default: one --log-every)")
    parser.add_argument("--smoke-test", action="store_true", help="6 iterations, windows of 2")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override for every setup (e.g. data.background_swap=0)")
    args = parser.parse_args()
    iterations = args.iterations or (6 if args.smoke_test else 30)
    log_every = args.log_every or (2 if args.smoke_test else 10)
    warmup = args.warmup if args.warmup is not None else log_every
    world = make_world(args.world or REPO / "runs" / "bench-train-world-tiny")

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        print(f"== {PLAIN}", flush=True)
        rows[PLAIN] = plain_loop(train_argv(world, Path(tmp) / "plain", iterations, log_every, args.overrides), warmup)

        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # ours, not a running one
        ray_init_s = time.perf_counter() - start
        try:
            for i, (name, extra) in enumerate(RAY_SETUPS):
                print(f"== {name}", flush=True)
                argv = train_argv(world, Path(tmp) / f"ray{i}", iterations, log_every, [*args.overrides, *extra])
                rows[name] = ray_run(argv, warmup)
        finally:
            ray.shutdown()
    print(f"\ntiny world, demo recipe (contrastive, two views, batch 4 per worker), {iterations} iterations, "
          f"steady = after iteration {warmup}; ray.init {ray_init_s:.1f} s (not in wall s); "
          f"{os.cpu_count()} CPUs\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"iterations": iterations, "warmup": warmup, "ray_init_s": ray_init_s,
                                         "rows": rows}, indent=2))
    print(f"\nray_train/plain images/s ratio: {rows[RATIO_ROW]['images_per_s'] / rows[PLAIN]['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
