"""Benchmark the two-view training pipeline: Ray Data stream vs a torch ``DataLoader``, images/s and peak memory.

Both feed the same samples: IDF stage-1 two-view samples of the ``small`` world's CrowdHuman + COCO
images (``idf_cpu``: decode + two augmented views + letterbox + targets, ``kdtrack.data.dataset``), one epoch,
batches of ``train.batch_size_per_worker`` collated by ``kdtrack.data.dataset.feed_collate`` in the consuming process
(uint8 canvases, as the training feeds ship them):

* DataLoader: ``TrainingDataset`` in a ``DataLoader`` with ``--procs`` worker processes (the old path,
  ``data.loader: torch``);
* Ray Data: ``data_pipelines.training.training_stream`` with ``--procs`` decode actors of 1 CPU each on a
  local cluster of ``--procs`` CPUs, read as a Ray Train worker reads its shard
  (``iter_torch_batches(collate_fn=SampleCollate())``).

Each measurement is a fresh process (clean memory, its own Ray cluster). images/s = views delivered / wall
seconds from the first request to the last batch (start-up of the worker processes or actors included);
"steady" leaves out the time to the first batch (for a short pass it is flattered by what the pipeline
produced while the consumer waited for its first batch: read it on the larger size). Peak memory = the
largest sum, sampled every 0.5 s (the sampler thread reads smaps: its CPU is shown apart), of the PSS of the consuming process and its pipeline processes
(DataLoader workers; Ray's worker processes; PSS counts shared pages — torch's libraries, Ray's object
store — once) — Ray's fixed daemons (raylet, GCS) are left out. Memory is shown at two dataset sizes: a streaming pipeline's peak must
not grow with the dataset. The image files are read once before timing (warm page cache for both).
CPU % (100 = one core, steady window): the consuming process (its own threads: Ray Data's iterator and
collate threads included; the memory sampler's thread left out, shown apart), and the pipeline's processes
(DataLoader workers / Ray workers) — who keeps the cores busy, and who waits.

    .venv/bin/python bench/pipeline.py --world W            # W: python -m jobs.generate_synth --preset small
    .venv/bin/python bench/pipeline.py --smoke-test         # the tiny world, seconds

The last line is ``ray_data/dataloader images/s ratio: R``: steady images/s on the larger dataset size
(a training run pays the start-up once; the line before it gives the ratio with start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from bench._procs import is_ray_worker  # noqa: E402


def config(world: Path, records: int, batch: int, procs: int, preset: str, overrides: list[str] = ()):
    """The measured config; ``overrides`` (``--set``) come last, e.g. ``data.map_actors=4 data.map_num_cpus=0.5``
    (more decode actors than cores) or ``data.preserve_order=false``."""
    from kdtrack.config import load_config

    return load_config(preset, [f"data.root={world}", "data.sources=[crowdhuman,coco]", f"data.max_records={records}",
                                f"train.batch_size_per_worker={batch}", "train.epochs=1", "train.max_iterations=0",
                                f"data.loader_workers={procs}", f"data.map_actors={procs}", "data.map_num_cpus=1",
                                *overrides])


class PeakMemory:
    """Peak of the summed PSS (proportional set size: a shared page counts once across processes) of this
    process and the pipeline's processes, sampled in a thread; and the CPU seconds the pipeline's processes
    and this sampler spend (``mark()`` starts the steady window), to tell who keeps the cores busy."""

    def __init__(self, ray_workers: bool) -> None:
        import psutil

        self.me = psutil.Process()
        self.ray_workers = ray_workers
        self.peak = 0
        self.cpu: dict[int, float] = {}  # pipeline process -> user + system CPU seconds, last sample
        self.cpu_at_mark: dict[int, float] | None = None
        self.sampler_cpu = 0.0  # this thread's own CPU seconds (reading smaps is not free)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self):
        procs = self.me.children(recursive=True)  # Ray: the cluster ray.init started here (daemons + workers)
        if self.ray_workers:
            procs = [p for p in procs if is_ray_worker(p)]
        return procs

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.me, *self._processes()]:
                try:
                    total += p.memory_full_info().pss  # shared pages (torch's libraries, Ray's object store) once
                    if p.pid != self.me.pid:
                        t = p.cpu_times()
                        self.cpu[p.pid] = t.user + t.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self.sampler_cpu = time.thread_time()
            time.sleep(0.5)

    def mark(self) -> None:
        """Start of the steady window (the first batch arrived)."""
        self.cpu_at_mark = dict(self.cpu)

    def pipeline_cpu_since_mark(self) -> float:
        """CPU seconds of the pipeline's processes since ``mark()`` (a process born later counts whole)."""
        base = self.cpu_at_mark or {}
        return sum(cpu - base.get(pid, 0.0) for pid, cpu in self.cpu.items())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def consume(batches, views_per_batch: int, memory: PeakMemory) -> dict:
    """Drain an iterator of collated batches; images (views) delivered, wall and steady seconds, and the CPU
    share (100 = one core) of this consuming process and of the pipeline's processes after the first batch."""
    start = time.perf_counter()
    first = None
    count = 0
    marks = []
    for batch in batches:
        count += int(batch["image"].shape[0])
        marks.append((time.perf_counter(), count))
        if first is None:
            first = time.perf_counter()
            memory.mark()
            sampler_at_first = memory.sampler_cpu
            consumer_at_first = time.process_time()
    end = time.perf_counter()
    steady = max(end - (first or end), 1e-9)
    sampler_cpu = memory.sampler_cpu - sampler_at_first if first else 0.0
    consumer_cpu = time.process_time() - consumer_at_first - sampler_cpu if first else 0.0
    cpu = {"consumer_cpu_pct": 100 * consumer_cpu / steady,
           "pipeline_cpu_pct": 100 * memory.pipeline_cpu_since_mark() / steady,
           "sampler_cpu_pct": 100 * sampler_cpu / steady}
    quarters = [marks[min(len(marks) - 1, int(q * len(marks) / 4))] for q in range(5)] if marks else []
    rates = [round((c1 - c0) / max(t1 - t0, 1e-9), 1) for (t0, c0), (t1, c1) in zip(quarters, quarters[1:])]
    return {"images": count, "seconds": end - start, "first_batch_s": (first or end) - start,
            "steady_images": count - views_per_batch, "quarter_rates": rates, **cpu}


def measure(loader: str, world: Path, records: int, batch: int, procs: int, preset: str,
            overrides: list[str] = ()) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from kdtrack.data.dataset import TrainingDataset, feed_collate, load_records

    torch.set_num_threads(1)
    cfg = config(world, records, batch, procs, preset, overrides)
    recs = load_records(cfg)
    for r in recs:  # warm the page cache: both pipelines read from memory
        Path(r.image_path).read_bytes()
    views = 2 * batch
    if loader == "torch":
        dataset = TrainingDataset(recs, cfg, views=2)
        dataset.set_epoch(0)
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(0))
        dl = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=feed_collate,
                                         num_workers=procs, drop_last=True)
        with PeakMemory(ray_workers=False) as memory:
            out = consume(iter(dl), views, memory)
    else:
        import functools

        import ray

        from data_pipelines.training import SampleCollate, training_stream

        ray.init(num_cpus=procs, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024)
        # as a Ray Train worker's shard runs (jobs.train's DataConfig: data.preserve_order)
        ray.data.DataContext.get_current().execution_options.preserve_order = cfg.data.preserve_order
        stream = training_stream(cfg, functools.partial(TrainingDataset, recs, cfg, views=2), len(recs))
        with PeakMemory(ray_workers=True) as memory:
            out = consume(iter(stream.dataset.iter_torch_batches(
                batch_size=batch, collate_fn=SampleCollate(), drop_last=True,
                prefetch_batches=cfg.data.prefetch_batches)), views, memory)
        ray.shutdown()
    out.update(loader=loader, records=len(recs), peak_pss_mib=memory.peak / 2**20)
    return out


def steady_rate(m: dict) -> float:
    """images/s after the first batch."""
    return m["steady_images"] / max(m["seconds"] - m["first_batch_s"], 1e-9)


def run_one(loader: str, args: argparse.Namespace, records: int) -> dict:
    cmd = [sys.executable, __file__, "--one", loader, "--world", str(args.world), "--records", str(records),
           "--batch", str(args.batch), "--procs", str(args.procs), "--preset", args.preset,
           *[f"--set={o}" for o in args.overrides]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{loader} measurement failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_world(preset: str, out: Path) -> Path:
    """The still-image parts of a synthetic world (CrowdHuman, COCO), once."""
    from bench._world import world_parts

    return world_parts(preset, out, ("crowdhuman", "coco"), ("crowdhuman/annotation_train.odgt",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=None, help="a world with crowdhuman/ and coco/ (default: "
                        "generate runs/bench-world-<preset>-images)")
    parser.add_argument("--sizes", default="400,1600", help="dataset sizes (records), comma-separated")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--procs", type=int, default=2, help="DataLoader workers = Ray Data decode actors")
    parser.add_argument("--preset", default="idf_cpu", help="training preset whose sample shape is measured")
    parser.add_argument("--smoke-test", action="store_true", help="the tiny world, small sizes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override for both pipelines (a variant to compare), repeatable")
    parser.add_argument("--only", choices=("torch", "ray"), default=None, help="measure one pipeline only")
    parser.add_argument("--one", choices=("torch", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.world, args.records, args.batch, args.procs, args.preset,
                                 args.overrides)))
        return
    world_preset = "tiny" if args.smoke_test else "small"
    if args.world is None:
        args.world = make_world(world_preset, REPO / "runs" / f"bench-world-{world_preset}-images")
    sizes = [16, 48] if args.smoke_test else [int(s) for s in args.sizes.split(",")]
    print(f"two-view samples of {args.preset} from {args.world}, batch {args.batch}, {args.procs} processes"
          + (f", --set {' '.join(args.overrides)}" if args.overrides else ""), flush=True)
    print("| pipeline | records | images | images/s | steady images/s | first batch s | peak PSS MiB | "
          "images/s by quarter | steady CPU % consumer / pipeline / sampler |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratio = float("nan")
    for size in sizes:
        row = {}
        for loader in (args.only,) if args.only else ("torch", "ray"):
            m = run_one(loader, args, size)
            row[loader] = m
            steady = steady_rate(m)
            name = "DataLoader" if loader == "torch" else "Ray Data"
            print(f"| {name} | {m['records']} | {m['images']} | {m['images'] / m['seconds']:.1f} | {steady:.1f} | "
                  f"{m['first_batch_s']:.1f} | {m['peak_pss_mib']:.0f} | {' / '.join(map(str, m['quarter_rates']))} | "
                  f"{m['consumer_cpu_pct']:.0f} / {m['pipeline_cpu_pct']:.0f} / {m['sampler_cpu_pct']:.0f} |",
                  flush=True)
        if args.only:
            continue
        wall_ratio = (row["ray"]["images"] / row["ray"]["seconds"]) / (row["torch"]["images"] / row["torch"]["seconds"])
        ratio = steady_rate(row["ray"]) / steady_rate(row["torch"])
    if not args.only:
        print(f"with start-up: ray_data/dataloader images/s ratio {wall_ratio:.2f}")
        print(f"ray_data/dataloader images/s ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
