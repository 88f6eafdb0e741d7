"""Ray Data stream of training samples into Ray Train workers (the default ``data.loader: ray``).

The driver holds paths and boxes (``ImageRecord``s, or pseudo-labelled clips), never pixels. The
stream is the whole run unrolled: row ``p`` is position ``p`` of epoch ``p // rows_per_epoch``, whose
order is ``default_rng([seed, epoch]).permutation(n)`` cut to whole global batches (as
``DistributedSampler(drop_last=True)`` cuts it). A ``map_batches`` actor pool (``data.map_actors`` x
``data.map_num_cpus``) decodes and augments each row with the same per-sample function and the same
``(seed, epoch, item)`` seeding as the torch ``DataLoader`` path (``kdtrack.data.dataset.EpochSeededDataset``),
so augmentations are redrawn every epoch and identical on a rerun. Samples travel pickled in one
bytes column (their keys and shapes differ by recipe; multi-scale canvases differ by sample), their
canvases as uint8 levels (``kdtrack.data.letterbox.Uint8Canvas``: a quarter of the bytes through the object
store and between nodes, exact; ``data.stream_uint8``), and are collated in the worker by
:class:`SampleCollate` (a ``ray.data.collate_fn.NumpyBatchCollateFn``) into uint8 canvases that stay uint8
into pinned memory and onto the GPU, where the train step makes them float32 (``kdtrack.data.uint8_canvas``).
Ray Train splits the stream across workers (``streaming_split(equal=True)``); every rank gets ``total * batch``
rows.

A resume (worker-group restart or a rerun) starts the stream where the checkpoint stopped: each rank
tells the run's ``PipelineState`` actor the first unconsumed row before it starts iterating, and the
datasource reads it when the execution starts (Ray Data builds read tasks lazily, after every split
reached the epoch barrier). An image or clip that cannot be read is skipped: the row is filled with the
next item of the epoch order, and the bad one is counted (with examples) in ``PipelineState``; rank 0
logs the counts and stops the run when more than ``data.max_bad_fraction`` of the items read are bad.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import pickle
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import ray
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import Datasource, ReadTask

from data_pipelines.loop_throttle import throttle_scheduling_loop
# torch-free at import: the dataset manager, split coordinator and read tasks unpickle this module's classes
# and functions, each in a new process (torch and torchvision are seconds of import there); what needs
# torch imports it where it runs (the SampleMaker actors, the training workers)
from kdtrack.config import Config
from kdtrack.data.letterbox import Uint8Canvas
from kdtrack.data.order import epoch_order

SAMPLE_COLUMN = "sample"
BAD_ITEM_ERRORS = (OSError, ValueError)  # unreadable / undecodable file, size or frame count that disagrees
MAX_SUBSTITUTES = 8  # a bad item is replaced by one of the next items of the epoch order
MAX_EXAMPLES = 5  # bad items named in the error
MIN_ITEMS_FOR_FRACTION = 50  # the bad fraction is judged once this many items were read (and at the end)
READ_TASKS_TARGET = 2000  # read tasks over the whole run at most (row ranges: metadata only, no pixels)
ROWS_PER_READ_BATCHES = 2  # global batches per read task at least


class BadDataError(RuntimeError):
    """More than ``data.max_bad_fraction`` of the items read could not be used."""


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Where every row of the run comes from: ``item(position) -> (epoch, item index)``."""

    num_items: int
    global_batch: int  # batch_size_per_worker x num_workers
    per_epoch: int  # iterations per epoch (each worker)
    total_iterations: int
    seed: int
    shuffle: bool = True  # False: the items are already in epoch order (the teacher's P x K batches)

    @property
    def rows_per_epoch(self) -> int:
        return self.per_epoch * self.global_batch

    @property
    def total_rows(self) -> int:
        return self.total_iterations * self.global_batch

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start <= position < stop``: columns ``position``, ``epoch``, ``item``."""
        positions = np.arange(start, stop, dtype=np.int64)
        epochs = positions // self.rows_per_epoch
        items = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            within = positions[sel] - epoch * self.rows_per_epoch
            items[sel] = epoch_order(self.num_items, self.seed, int(epoch))[within] if self.shuffle else within
        return {"position": positions, "epoch": epochs, "item": items}


def plan_stream(num_items: int, cfg: Config, *, rows_per_batch: int | None = None, shuffle: bool = True) -> StreamPlan:
    """The stream of a run: ``per_epoch`` and the run length as ``DistributedSampler(drop_last=True)`` and
    ``kdtrack.engine.total_iterations`` give them for the torch path. ``rows_per_batch`` (default
    ``train.batch_size_per_worker``) rows make one worker's batch: 1 when a row is a whole batch."""
    from kdtrack.engine import total_iterations

    tc = cfg.train
    batch = tc.batch_size_per_worker if rows_per_batch is None else rows_per_batch
    per_epoch = (num_items // tc.num_workers) // batch
    if per_epoch == 0:
        raise ValueError(f"{num_items} samples on {tc.num_workers} worker(s) do not fill one batch of {batch}")
    return StreamPlan(num_items=num_items, global_batch=batch * tc.num_workers, per_epoch=per_epoch,
                      total_iterations=total_iterations(tc, per_epoch), seed=tc.seed, shuffle=shuffle)


@ray.remote(num_cpus=0)
class PipelineState:
    """One per training run: the first row a (re)started stream reads, and the bad items counted."""

    def __init__(self) -> None:
        self.start_row = 0
        self.items = 0
        self.bad = 0
        self.examples: list[str] = []

    def set_start_row(self, row: int) -> None:
        self.start_row = int(row)

    def get_start_row(self) -> int:
        return self.start_row

    def add(self, items: int, bad: int, examples: Sequence[str]) -> None:
        self.items += int(items)
        self.bad += int(bad)
        self.examples.extend(examples[: max(0, MAX_EXAMPLES - len(self.examples))])

    def counts(self) -> dict[str, Any]:
        return {"items": self.items, "bad": self.bad, "examples": list(self.examples)}


class TrainingRowsDatasource(Datasource):
    """The run's rows from ``PipelineState``'s start row on, read when the execution starts."""

    def __init__(self, plan: StreamPlan, state: Any = None) -> None:
        super().__init__()
        self.plan = plan
        self.state = state

    def estimate_inmemory_data_size(self) -> int:
        return self.plan.total_rows * 24

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        start = int(ray.get(self.state.get_start_row.remote())) if self.state is not None else 0
        stop = self.plan.total_rows
        step = max(self.plan.global_batch * ROWS_PER_READ_BATCHES, math.ceil(max(stop - start, 1) / READ_TASKS_TARGET))
        tasks = []
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            tasks.append(ReadTask(functools.partial(_read_rows, self.plan, lo, hi),
                                  BlockMetadata(num_rows=hi - lo, size_bytes=(hi - lo) * 24, input_files=None,
                                                exec_stats=None),
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _read_rows(plan: StreamPlan, start: int, stop: int) -> list[Any]:
    import pyarrow as pa

    return [pa.table(plan.rows(start, stop))]


@dataclasses.dataclass(frozen=True)
class DatasetFactory:
    """``factory()`` builds a stream's dataset: ``target`` ("module:attribute", imported on the call) applied
    to ``args`` / ``kwargs``. The stream's plan carries it to the dataset manager and split coordinator, which
    unpickle it but never call it: named by path, it costs them no torch import (seconds per process)."""

    target: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __call__(self) -> Any:
        import importlib

        module, _, attribute = self.target.partition(":")
        built: Any = importlib.import_module(module)
        for name in attribute.split("."):
            built = getattr(built, name)
        return built(*self.args, **self.kwargs)


def dump_sample(sample: Any, uint8_canvases: bool = True) -> bytes:
    """A sample as it travels: pickled, its canvases as ``Uint8Canvas`` (those it can hold exactly)."""
    from kdtrack.data.uint8_canvas import CANVAS_KEYS

    if uint8_canvases and isinstance(sample, dict):
        sample = dict(sample)
        for key in CANVAS_KEYS:
            if isinstance(sample.get(key), np.ndarray):
                packed = Uint8Canvas.encode(sample[key])
                if packed is not None:
                    sample[key] = packed
    return pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)


def load_sample(blob: bytes, decode: bool = True) -> Any:
    """The sample ``dump_sample`` wrote, canvases decoded back to float32 (``decode``) or left as uint8."""
    from kdtrack.data.uint8_canvas import CANVAS_KEYS

    sample = pickle.loads(blob)
    if decode and isinstance(sample, dict):
        for key in CANVAS_KEYS:
            if isinstance(sample.get(key), Uint8Canvas):
                sample[key] = sample[key].decode()
    return sample


class SampleMaker:
    """``map_batches`` actor: rows -> pickled samples of the recipe's ``EpochSeededDataset``."""

    def __init__(self, dataset_factory: Callable[[], Any], state: Any = None, seed: int = 0,
                 uint8_canvases: bool = True) -> None:
        self.dataset = dataset_factory()
        self.state = state
        self.seed = seed
        self.uint8_canvases = uint8_canvases

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples, bad, examples = [], 0, []
        n = len(self.dataset)
        for epoch, item in zip(batch["epoch"].tolist(), batch["item"].tolist()):
            order = None
            for attempt in range(MAX_SUBSTITUTES + 1):
                try:
                    sample = self.dataset.sample_at(epoch, item)
                    break
                except BAD_ITEM_ERRORS as exc:
                    bad += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(f"{type(exc).__name__}: {exc}"[:500])
                    if order is None:
                        order = epoch_order(n, self.seed, epoch)
                        where = int(np.flatnonzero(order == item)[0])
                    item = int(order[(where + attempt + 1) % n])
            else:
                raise BadDataError(f"{MAX_SUBSTITUTES + 1} items in a row could not be read, e.g. "
                                   + "; ".join(examples))
            samples.append(dump_sample(sample, self.uint8_canvases))
        if self.state is not None:  # waited for: the counts are complete when the batch is delivered
            ray.get(self.state.add.remote(len(samples) + bad, bad, examples))
        column = np.empty(len(samples), dtype=object)
        column[:] = samples
        return {"position": batch["position"], SAMPLE_COLUMN: column}


class SampleCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate (Ray's class API; a plain function is deprecated since Ray 2.47): unpickle
    the samples, then ``kdtrack.data.dataset.feed_collate`` (canvases stay uint8: the train step makes them
    float32 on its device). Its output is a dict of tensors, so Ray pins it and moves it to the device."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from kdtrack.data.dataset import feed_collate

        return feed_collate([load_sample(blob, decode=False) for blob in batch[SAMPLE_COLUMN]])


class BatchCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate of a stream whose row is a whole batch (the teacher's P x K crops)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        (blob,) = batch[SAMPLE_COLUMN]
        return load_sample(blob)


@dataclasses.dataclass
class TrainingStream:
    """What the driver hands Ray Train: the dataset, and the plan + state actor for the workers."""

    dataset: Any
    plan: StreamPlan
    state: Any

    workers: int = 1

    def worker_args(self) -> dict[str, Any]:
        return {"plan": dataclasses.asdict(self.plan), "state": self.state, "workers": self.workers}


def training_stream(cfg: Config, dataset_factory: Callable[[], Any], num_items: int, *,
                    rows_per_batch: int | None = None, shuffle: bool = True) -> TrainingStream:
    """The run's Ray Data stream: rows -> ``SampleMaker`` actor pool. ``dataset_factory`` builds the
    recipe's items inside each actor (the items travel once, as its argument): an ``EpochSeededDataset``,
    or anything with ``len`` and ``sample_at(epoch, item)`` (``kdtrack.data.reid_data.PKBatches``: one row per
    P x K batch, ``rows_per_batch=1, shuffle=False``)."""
    plan = plan_stream(num_items, cfg, rows_per_batch=rows_per_batch, shuffle=shuffle)
    state = PipelineState.remote()
    dc = cfg.data
    ray.data.DataContext.get_current().enable_progress_bars = False  # a redrawn bar per second in the job log
    throttle_scheduling_loop(dc.scheduling_min_step_s)  # before the dataset copies the context
    # reading rows is arithmetic: no CPU reserved for it (the decode actors hold the data budget)
    ds = ray.data.read_datasource(TrainingRowsDatasource(plan, state), num_cpus=0, concurrency=1).map_batches(
        SampleMaker, fn_constructor_kwargs={"dataset_factory": dataset_factory, "state": state, "seed": plan.seed,
                                            "uint8_canvases": dc.stream_uint8},
        batch_size=plan.global_batch // cfg.train.num_workers, num_cpus=dc.map_num_cpus,
        compute=ray.data.ActorPoolStrategy(size=dc.map_actors))
    return TrainingStream(dataset=ds, plan=plan, state=state, workers=cfg.train.num_workers)


def stream_execution_options(cfg: Config) -> Any:
    """The stream's Ray Data ``ExecutionOptions``: its order kept (a resume skips exactly the consumed rows)
    and, with ``data.stream_buffer_mb``, a cap on the object store it fills ahead of the step."""
    from ray.data import ExecutionOptions, ExecutionResources

    options = ExecutionOptions(preserve_order=cfg.data.preserve_order)
    if cfg.data.stream_buffer_mb > 0:
        options.resource_limits = ExecutionResources.for_limits(object_store_memory=cfg.data.stream_buffer_mb * 2**20)
    return options


def data_config(cfg: Config) -> Any:
    """Ray Train's ``DataConfig``: split the train stream with :func:`stream_execution_options`."""
    import ray.train

    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=stream_execution_options(cfg))


class WorkerStream:
    """A worker's view of the stream (a ``kdtrack.data.dataset.Feed``): ``epoch_batches(epoch, iteration, skip)`` yields
    the rest of an epoch's batches. ``start(iteration)`` (else the first ``epoch_batches``) tells ``PipelineState`` where the stream
    starts (``iteration x global batch``: what the restored checkpoint consumed) and opens this rank's shard
    once for the whole run."""

    def __init__(self, shard: Any, worker_args: dict[str, Any], prefetch_batches: int,
                 collate: NumpyBatchCollateFn | None = None, device: Any = "cpu") -> None:
        import torch

        self.shard = shard
        self.device = torch.device(device)
        self.plan = StreamPlan(**worker_args["plan"])
        self.state = worker_args["state"]
        self.batch_size = self.plan.global_batch // worker_args["workers"]
        self.prefetch_batches = prefetch_batches
        self.collate = collate if collate is not None else SampleCollate()
        self._batches: Iterator[Any] | None = None
        self._warmup: tuple[threading.Thread, list[Any], Iterator[Any]] | None = None

    def start(self, iteration: int) -> None:
        """Open the stream at the row after ``iteration`` iterations and fetch its first batch in a thread:
        the decode actors start (seconds: a process, torch, OpenCV) while the worker builds its network."""
        ray.get(self.state.set_start_row.remote(iteration * self.plan.global_batch))
        batches = iter(self.shard.iter_torch_batches(  # pinned for (and moved to) a GPU in Ray's fetch threads
            batch_size=self.batch_size, collate_fn=self.collate, drop_last=True, device=self.device,
            pin_memory=self.device.type == "cuda", prefetch_batches=self.prefetch_batches))
        first: list[Any] = []

        def fetch_first() -> None:
            try:
                first.append(next(batches, None))
            except BaseException as exc:  # noqa: BLE001  (re-raised in the training thread)
                first.append(exc)

        thread = threading.Thread(target=fetch_first, name="kdtrack-stream-warmup", daemon=True)
        thread.start()
        self._warmup = (thread, first, batches)

    def _open(self) -> Iterator[Any]:
        thread, first, batches = self._warmup
        thread.join()
        head = first[0] if first else None
        if isinstance(head, BaseException):
            raise head
        return itertools.chain([] if head is None else [head], batches)

    @property
    def per_epoch(self) -> int:
        return self.plan.per_epoch

    def epoch_batches(self, epoch: int, iteration: int, skip: int) -> Iterator[Any]:
        """The batches left in ``epoch`` after ``skip`` done (``kdtrack.data.dataset.TorchFeed``'s interface)."""
        if self._batches is None:
            if self._warmup is None:
                self.start(iteration)
            self._batches = self._open()
        return itertools.islice(self._batches, self.plan.per_epoch - skip)

    def bad_counts(self) -> dict[str, Any]:
        return ray.get(self.state.counts.remote())


def check_bad_fraction(counts: dict[str, Any], max_fraction: float, *, final: bool = False) -> None:
    """Stop the run when more than ``max_fraction`` of the items read were bad (judged once
    ``MIN_ITEMS_FOR_FRACTION`` items were read, and at the end of the run)."""
    items, bad = counts["items"], counts["bad"]
    if items == 0 or (items < MIN_ITEMS_FOR_FRACTION and not final):
        return
    if bad / items > max_fraction:
        raise BadDataError(f"{bad} of {items} training items could not be read ({bad / items:.1%} > "
                           f"data.max_bad_fraction {max_fraction:.1%}), e.g. " + "; ".join(counts["examples"]))
