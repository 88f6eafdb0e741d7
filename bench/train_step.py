"""Benchmark one tiny training step (``demo_idf`` preset: IDF stage 1, contrastive, two views) without and with
Ray Train, on the same data and iteration budget, in one run on one machine.

* plain loop — no Ray: ``TrainingDataset`` + torch ``DataLoader`` (``num_workers=0``, ``kdtrack.data.dataset.TorchFeed``,
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
    .venv/bin/python bench/train_step.py --host-syncs-only  # the host-read count alone (seconds, no Ray)

Host syncs: every run first counts, per training step, the tensor reads back to the host that kdtrack's
own code makes (``Tensor.item``, ``tolist``, ``numpy``, ``float()``, ``int()``, ``bool()`` called from a
``kdtrack/`` frame: on CUDA each one waits for the GPU to drain), on steps between logging steps and on
logging steps, for the detection and contrastive recipes on a synthetic batch (``jobs.gpu_check``'s),
naming the lines that still read. Reads inside torch (the optimizer's CPU step counters) are not ours and
not counted; neither are syncs without a Python call (a boolean-mask index), which only CUDA's
``torch.cuda.set_sync_debug_mode`` sees.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
    argv = ["--config", "demo_idf", "--data-root", str(world), "--out", str(out),
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

    from jobs.train import dataset_factory, get_args_parser, resolve_config, training_data
    from kdtrack.data.dataset import TorchFeed
    from kdtrack.engine import build_optimizer, build_scheduler, total_iterations, train_one_epoch, trainable_parameters
    from kdtrack.losses import Criterion
    from kdtrack.models import build_student
    from kdtrack.models.momentum import MomentumEncoder
    from kdtrack.recipes import recipe_of

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
    if recipe_of(cfg).key_encoder and cfg.loss.key_momentum > 0:
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


HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def counting_host_reads(sites: collections.Counter) -> Iterator[None]:
    """Count the ``HOST_READS`` tensor methods called directly from kdtrack code, by ``file:line``."""
    import torch

    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name: str, method: Callable) -> Callable:
        def read(self: Any, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if f"{os.sep}kdtrack{os.sep}" in path:
                sites[f"{Path(path).relative_to(REPO) if path.startswith(str(REPO)) else path}:{caller.f_lineno}"] += 1
            return method(self, *args, **kwargs)
        return read

    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(name, method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def host_reads_per_step(recipe: str, iterations: int = 6, log_every: int = 3,
                        amp_path: bool = True) -> list[dict[str, Any]]:
    """``iterations`` steps of ``recipe`` (``jobs.gpu_check``'s synthetic batch and config, CPU) through
    ``train_one_epoch`` with a logger every ``log_every``: per step whether it was a logging step, and the
    kdtrack host reads it made by site. ``amp_path``: with a gradient scaler, as the GPU trains (without
    one the step adds its one non-finite check, ``engine.check_finite_everywhere``)."""
    import torch

    from jobs import gpu_check
    from kdtrack import engine
    from kdtrack.losses import Criterion
    from kdtrack.models import build_student
    from kdtrack.models.momentum import MomentumEncoder

    torch.manual_seed(0)
    cfg = gpu_check.recipe_config(recipe)
    model, criterion = build_student(cfg.model), Criterion.from_config(cfg)
    if hasattr(engine, "leave_out_unused_heads"):
        engine.leave_out_unused_heads(model, criterion)
    optimizer = engine.build_optimizer(engine.trainable_parameters(model) + list(criterion.parameters()), cfg.train)
    contrastive = cfg.loss.id_mode == "contrastive"
    keys = MomentumEncoder(model, cfg.loss.key_momentum) if contrastive else None
    batch = gpu_check.synthetic_batch(cfg, images=2, views=2 if contrastive else 1)
    steps: list[dict[str, Any]] = []
    plain_step = engine.train_step

    def step(*args: Any, **kwargs: Any) -> Any:
        sites: collections.Counter = collections.Counter()
        with counting_host_reads(sites):
            out = plain_step(*args, **kwargs)
        it = kwargs["iteration"]
        steps.append({"iteration": it, "logged": (it + 1) == 1 or (it + 1) % log_every == 0 or it + 1 == iterations,
                      "reads": sum(sites.values()), "sites": dict(sites)})
        return out

    engine.train_step = step
    try:
        engine.train_one_epoch(model, criterion, optimizer, [batch] * iterations, "cpu", 0, max_iterations=iterations,
                               log_every=log_every, log_fn=lambda it, terms: None, key_encoder=keys,
                               scaler=torch.amp.GradScaler("cpu") if amp_path else None)
    finally:
        engine.train_step = plain_step
    return steps


def host_reads_report(recipes: Sequence[str] = ("detection", "contrastive")) -> tuple[str, dict[str, Any]]:
    """One line per recipe: the largest read count of an unlogged step and of a logged step, and where the
    unlogged steps still read."""
    lines, figures = [], {}
    for recipe in recipes:
        steps = host_reads_per_step(recipe)
        unlogged = [s for s in steps if not s["logged"]]
        logged = [s for s in steps if s["logged"]]
        sites: collections.Counter = collections.Counter()
        for s in unlogged:
            sites.update(s["sites"])
        figures[recipe] = {"unlogged_max": max((s["reads"] for s in unlogged), default=0),
                           "logged_max": max((s["reads"] for s in logged), default=0),
                           "unlogged_sites": {k: v / max(len(unlogged), 1) for k, v in sites.items()}}
        where = ", ".join(f"{k} x{v / max(len(unlogged), 1):g}" for k, v in sites.most_common()) or "none"
        lines.append(f"host reads per step (AMP path), {recipe}: {figures[recipe]['unlogged_max']} between logging "
                     f"steps ({where}), {figures[recipe]['logged_max']} on a logging step")
    return "\n".join(lines), figures


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
    parser.add_argument("--host-syncs-only", action="store_true", help="only count the host reads per step")
    args = parser.parse_args()
    reads_text, reads = host_reads_report()
    print(reads_text, flush=True)
    if args.host_syncs_only:
        if args.json:
            args.json.write_text(json.dumps({"host_reads": reads}, indent=2))
        return
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
    print(f"\ntiny world, demo_idf recipe (contrastive, two views, batch 4 per worker), {iterations} iterations, "
          f"steady = after iteration {warmup}; ray.init {ray_init_s:.1f} s (not in wall s); "
          f"{os.cpu_count()} CPUs\n")
    print(table(rows))
    print("\n" + reads_text)
    if args.json:
        args.json.write_text(json.dumps({"iterations": iterations, "warmup": warmup, "ray_init_s": ray_init_s,
                                         "rows": rows, "host_reads": reads}, indent=2))
    print(f"\nray_train/plain images/s ratio: {rows[RATIO_ROW]['images_per_s'] / rows[PLAIN]['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
