"""The Ray Data training stream (data_pipelines.training): the run's row plan, samples identical to the torch
path's, two views that share exactly the people visible in both, unreadable images skipped and counted, a
restarted stream starting where the checkpoint stopped, the bad-fraction stop, and canvases that travel as uint8
and come back bit for bit."""

from __future__ import annotations

import functools
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.training import (
    SAMPLE_COLUMN,
    BadDataError,
    PipelineState,
    StreamPlan,
    check_bad_fraction,
    SampleCollate,
    WorkerStream,
    dump_sample,
    epoch_order,
    load_sample,
    plan_stream,
    stream_execution_options,
    training_stream,
)
from kdtrack.config import load_config
from kdtrack.data.dataset import TorchFeed, TrainingDataset, collate, load_records
from kdtrack.engine import total_iterations
from kdtrack.data.letterbox import Uint8Canvas, letterbox, resize_pad
from kdtrack.data.uint8_canvas import float_canvases


def _cfg(world: Path, *extra: str):
    return load_config("tiny", [f"data.root={world}", "data.sources=[crowdhuman]", "train.batch_size_per_worker=2",
                                "train.recipe=contrastive", "loss.id_mode=contrastive", "model.input_width=160",
                                "model.input_height=96", *extra])


def test_plan_cuts_each_epoch_to_whole_batches_in_its_own_order():
    plan = StreamPlan(num_items=11, global_batch=4, per_epoch=2, total_iterations=5, seed=3)
    assert plan.rows_per_epoch == 8 and plan.total_rows == 20
    rows = plan.rows(0, plan.total_rows)
    assert rows["position"].tolist() == list(range(20))
    assert rows["epoch"].tolist() == [0] * 8 + [1] * 8 + [2] * 4
    for epoch in (0, 1):
        items = rows["item"][rows["epoch"] == epoch]
        assert items.tolist() == epoch_order(11, 3, epoch)[:8].tolist()
        assert len(set(items.tolist())) == 8  # no item twice in an epoch
    assert rows["item"][:8].tolist() != rows["item"][8:16].tolist()  # reshuffled every epoch
    tail = plan.rows(13, 20)  # a resumed stream: the same rows from position 13 on
    assert tail["item"].tolist() == rows["item"][13:].tolist() and tail["epoch"].tolist() == rows["epoch"][13:].tolist()


def test_canvases_travel_as_uint8_levels_and_decode_bit_for_bit():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (250, 600, 3), dtype=np.uint8)
    boxed, _ = letterbox(image, 320, 192)  # grey bands top and bottom (127.5 / 255, no uint8 level)
    multiscale, _ = resize_pad(image, 224, 400)  # grey at the right (padded to a multiple of 32)
    for canvas in (boxed, multiscale):
        assert (canvas == np.float32(0.5)).any()
        packed = Uint8Canvas.encode(canvas)
        assert packed.levels.dtype == np.uint8
        np.testing.assert_array_equal(packed.decode(), canvas)
        assert packed.decode().dtype == np.float32
        assert packed.levels.nbytes + packed.grey_bits.nbytes < 0.3 * canvas.nbytes
    # a canvas it could not give back exactly (a value between two levels, or float64) stays float
    off = boxed.copy()
    off[0, 100, 100] += 1e-3
    assert Uint8Canvas.encode(off) is None and Uint8Canvas.encode(boxed.astype(np.float64)) is None
    sample = {"image": np.stack([boxed, boxed]), "orig_image": boxed[None], "heatmap": np.zeros((1, 1, 2, 2))}
    mixed = dict(sample, orig_image=off[None])
    for s in (sample, mixed):
        back = load_sample(dump_sample(s))
        assert back.keys() == s.keys()
        for key in s:
            assert back[key].dtype == s[key].dtype
            np.testing.assert_array_equal(back[key], s[key])
    assert len(dump_sample(sample)) < 0.3 * len(dump_sample(sample, uint8_canvases=False))
    raw = pickle.loads(dump_sample(mixed))
    assert isinstance(raw["image"], Uint8Canvas) and isinstance(raw["orig_image"], np.ndarray)


@pytest.mark.parametrize("extra", [["train.epochs=3", "train.max_iterations=0"],
                                   ["train.epochs=0", "train.max_iterations=7"],
                                   ["train.epochs=5", "train.max_iterations=4"]])
def test_plan_has_the_torch_paths_epoch_length_and_budget(tiny_world, extra):
    cfg = _cfg(tiny_world, *extra)
    records = load_records(cfg)
    feed = TorchFeed(TrainingDataset(records, cfg, views=2), cfg, rank=0, world=1)
    plan = plan_stream(len(records), cfg)
    assert plan.per_epoch == feed.per_epoch
    assert plan.total_iterations == total_iterations(cfg.train, feed.per_epoch)


def _rows(ds) -> list[dict]:
    return sorted(ds.take_all(), key=lambda row: row["position"])


def test_stream_samples_equal_the_torch_paths_and_pair_the_same_people(ray_session, tiny_world):
    cfg = _cfg(tiny_world, "train.epochs=0", "train.max_iterations=3")
    records = load_records(cfg)
    factory = functools.partial(TrainingDataset, records, cfg, views=2)
    stream = training_stream(cfg, factory, len(records))
    rows = _rows(stream.dataset)
    assert [r["position"] for r in rows] == list(range(stream.plan.total_rows))
    reference = factory()
    plan_rows = stream.plan.rows(0, stream.plan.total_rows)
    for row, epoch, item in zip(rows, plan_rows["epoch"], plan_rows["item"]):
        assert isinstance(pickle.loads(row[SAMPLE_COLUMN])["image"], Uint8Canvas)  # travelled as uint8 levels
        sample = load_sample(row[SAMPLE_COLUMN])  # ... and decoded bit for bit (below)
        expected = reference.sample_at(int(epoch), int(item))
        assert sample.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(sample[key], expected[key], err_msg=key)
        # the two views: a person's key is the same in both, and a key is in both views only when its
        # original box survived the augmentation of both
        keys = [set(sample["ids"][v][sample["mask"][v]].tolist()) for v in (0, 1)]
        rows_in = [set(sample["box_index"][v][sample["mask"][v]].tolist()) for v in (0, 1)]
        key_of = {}
        for v in (0, 1):
            for slot in np.flatnonzero(sample["mask"][v]):
                key_of.setdefault(int(sample["box_index"][v][slot]), set()).add(int(sample["ids"][v][slot]))
        assert all(len(k) == 1 for k in key_of.values())  # one key per person, across views
        assert len({next(iter(k)) for k in key_of.values()}) == len(key_of)  # different people, different keys
        assert keys[0] & keys[1] == {next(iter(key_of[r])) for r in rows_in[0] & rows_in[1]}
    batch = SampleCollate()({SAMPLE_COLUMN: np.array([r[SAMPLE_COLUMN] for r in rows[:2]], dtype=object)})
    assert batch["image"].shape[0] == 4  # two samples x two views, view 0 first
    # the canvases stay uint8 to the device, where the train step's conversion gives the float32 canvas bit
    # for bit (the torch feed's samples, collated as float32 on the host)
    assert batch["image"].dtype == torch.uint8 and batch["image_grey"].dtype == torch.uint8
    assert batch["image_grey"].shape[-1] == -(-batch["image"].shape[-1] // 8)  # grey bits packed along the width
    expected = collate([reference.sample_at(int(e), int(i)) for e, i in zip(plan_rows["epoch"][:2], plan_rows["item"][:2])])
    on_device = float_canvases(batch)
    assert on_device.keys() == expected.keys()
    for key in expected:
        assert torch.equal(on_device[key], expected[key]), key
    assert ray_session.get(stream.state.counts.remote())["bad"] == 0


def test_a_stream_buffer_keeps_the_decoders_from_running_ahead(ray_session, tiny_world):
    # Ray's default lets the decode actor fill the object store with the whole run while the step waits
    # for the cores (docs/train.md, "How samples reach the workers"); data.stream_buffer_mb caps it.
    import time

    cfg = _cfg(tiny_world, "train.epochs=0", "train.max_iterations=150", "data.stream_buffer_mb=1")
    records = load_records(cfg)
    stream = training_stream(cfg, functools.partial(TrainingDataset, records, cfg, views=2), len(records))
    assert stream_execution_options(cfg).resource_limits.object_store_memory == 2**20
    assert stream_execution_options(_cfg(tiny_world)).resource_limits.object_store_memory == float("inf")
    stream.dataset.context.execution_options = stream_execution_options(cfg)
    batches = iter(stream.dataset.iter_batches(batch_size=stream.plan.global_batch, prefetch_batches=1))
    try:
        next(batches)  # the actor is up and decoding
        produced = []
        for _ in range(12):
            time.sleep(0.5)
            produced.append(ray_session.get(stream.state.counts.remote())["items"])
    finally:
        for _ in batches:  # drain: an abandoned stream keeps a thread that outlives the session's Ray
            pass
    # without the cap the actor decodes the whole 300-row stream within seconds; with it, a dozen rows
    assert produced[-1] <= stream.plan.total_rows // 10, produced


def test_unreadable_images_are_skipped_and_counted(ray_session, tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world / "crowdhuman", world / "crowdhuman")
    cfg = _cfg(world, "train.epochs=1", "train.max_iterations=0")
    records = load_records(cfg)
    broken = {records[i].image_path for i in (0, 3)}
    for path in broken:
        Path(path).write_bytes(b"not a jpeg")
    stream = training_stream(cfg, functools.partial(TrainingDataset, records, cfg, views=2), len(records))
    rows = _rows(stream.dataset)
    assert len(rows) == stream.plan.total_rows  # every row still filled (by the next item of the epoch order)
    counts = ray_session.get(stream.state.counts.remote())
    used = stream.plan.rows(0, stream.plan.total_rows)["item"].tolist()
    assert counts["bad"] >= sum(records[i].image_path in broken for i in used) > 0  # (+ broken substitutes)
    assert counts["items"] == len(rows) + counts["bad"]
    assert all(any(p in e for p in broken) for e in counts["examples"])
    for row in rows:
        assert load_sample(row[SAMPLE_COLUMN])["image"].shape[0] == 2
    with pytest.raises(BadDataError, match="could not be read"):
        check_bad_fraction(counts, 0.01, final=True)


def test_a_restarted_stream_starts_at_the_checkpointed_row(ray_session, tiny_world):
    cfg = _cfg(tiny_world, "train.epochs=0", "train.max_iterations=4")
    records = load_records(cfg)
    factory = functools.partial(TrainingDataset, records, cfg, views=2)
    stream = training_stream(cfg, factory, len(records))
    # a worker's stream (iter_torch_batches with Ray's collate class: no deprecation warning) told to start
    # after 3 iterations (its PipelineState start row) delivers rows 6 and 7, canvases as uint8
    feed = WorkerStream(stream.dataset, stream.worker_args(), prefetch_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feed.start(3)
    assert not [w for w in caught if "collate" in str(w.message)], [str(w.message) for w in caught]
    batches = feed.epoch_batches(1, 3, 0)
    batch = next(batches)
    for _ in batches:  # drain: an abandoned stream keeps a thread that outlives the session's Ray
        pass
    assert ray_session.get(stream.state.get_start_row.remote()) == 6
    assert batch["image"].dtype == torch.uint8
    reference = factory()
    expected = collate([reference.sample_at(0, int(i)) for i in stream.plan.rows(6, 8)["item"]])
    assert torch.equal(float_canvases(batch)["image"], expected["image"])


def test_bad_fraction_waits_for_enough_items_then_stops():
    few = {"items": 10, "bad": 5, "examples": ["OSError: a.jpg"]}
    check_bad_fraction(few, 0.01)  # too few read to judge mid-run
    with pytest.raises(BadDataError, match="a.jpg"):
        check_bad_fraction(few, 0.01, final=True)
    check_bad_fraction({"items": 1000, "bad": 10, "examples": []}, 0.01)  # exactly the limit is allowed
    with pytest.raises(BadDataError, match="11 of 1000"):
        check_bad_fraction({"items": 1000, "bad": 11, "examples": []}, 0.01)


def test_pipeline_state_keeps_a_few_examples(ray_session):
    state = PipelineState.remote()
    for i in range(4):
        state.add.remote(10, 2, [f"bad {i}a", f"bad {i}b"])
    counts = ray_session.get(state.counts.remote())
    assert counts["items"] == 40 and counts["bad"] == 8 and len(counts["examples"]) == 5


FAST_RUN = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
            "model.deformable=false", "loss.queue_size=256", "train.batch_size_per_worker=2", "train.epochs=0",
            "train.max_iterations=4", "train.log_every=2", "train.max_failures=0", "data.sources=[coco]"]


def _broken_world(tiny_world: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """COCO (the reader checks that images exist, not that they decode) with a third of its images corrupt."""
    world = tmp_path / "world"
    shutil.copytree(tiny_world / "coco", world / "coco")
    images = sorted((world / "coco" / "train2017").iterdir())
    broken = images[::3]
    for path in broken:
        path.write_bytes(b"\xff\xd8 truncated")
    return world, [p.name for p in broken]


def _train_args(world: Path, out: Path, uri: str, *extra: str):
    from jobs.train import get_args_parser

    argv = ["--config", "tiny", "--data-root", str(world), "--out", str(out), "--mlflow-uri", uri]
    for item in FAST_RUN + list(extra):
        argv += ["--set", item]
    return get_args_parser().parse_args(argv)


def test_training_skips_bad_images_into_mlflow_and_stops_past_the_bad_fraction(ray_session, tiny_world, tmp_path,
                                                                               mlflow_uri):
    from mlflow.tracking import MlflowClient

    from jobs.train import main

    world, broken = _broken_world(tiny_world, tmp_path)
    result = main(_train_args(world, tmp_path / "tolerant", mlflow_uri, "data.max_bad_fraction=0.9"))
    assert result["metrics"]["iteration"] == 4
    client = MlflowClient(tracking_uri=mlflow_uri)
    bad = client.get_metric_history(result["mlflow_run_id"], "data/bad_items")
    read = client.get_metric_history(result["mlflow_run_id"], "data/items_read")
    assert bad and bad[-1].value > 0 and read[-1].value >= 4 * 2 + bad[-1].value

    with pytest.raises(Exception) as failure:  # Ray Train's TrainingFailedError, with the worker's error
        main(_train_args(world, tmp_path / "strict", mlflow_uri, "data.max_bad_fraction=0.0"))
    message = str(failure.value)
    assert "BadDataError" in message and "data.max_bad_fraction" in message
    assert any(name in message for name in broken)
    failed = client.search_runs([client.get_experiment_by_name("kdtrack").experiment_id],
                                filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 1  # a crashed run is FAILED in MLflow, with its root cause as kdtrack.error
    assert failed[0].data.tags["kdtrack.error"].startswith("BadDataError"), failed[0].data.tags


def test_teacher_pk_batches_equal_the_dataloader_over_the_pk_sampler(tiny_world):
    import torch

    from kdtrack.data.reid_data import PKBatches, PKSampler, ReidCropDataset, contiguous_labels, read_training_crops

    teach = load_config("teacher_cpu").teacher
    crops, _ = read_training_crops(tiny_world)
    labels, _ = contiguous_labels([c.pid for c in crops])
    paths = [c.path for c in crops]
    batches = PKBatches(paths, labels, teach, p=teach.train_p, k=teach.train_k, seed=5, world_size=2)
    for rank in (0, 1):  # rank r of 2 takes batches r, r + 2, ... of every epoch
        dataset = ReidCropDataset(paths, labels, teach, augment=True, seed=5)
        sampler = PKSampler(labels, teach.train_p, teach.train_k, seed=5, rank=rank, world_size=2)
        assert len(batches) == 2 * len(sampler)
        sampler.set_epoch(1)
        dataset.set_epoch(1)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
        for j, expected in enumerate(loader):
            got = batches.sample_at(1, rank + 2 * j)
            assert got.keys() == expected.keys()
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
            if j == 1:
                break
    plan = plan_stream(len(batches), load_config("teacher_cpu", ["train.num_workers=2", "train.epochs=3"]),
                       rows_per_batch=1, shuffle=False)
    assert plan.per_epoch == len(batches) // 2 and plan.total_iterations == 3 * plan.per_epoch
    assert plan.rows(0, plan.total_rows)["item"].tolist() == list(range(len(batches))) * 3  # the sampler's order


def test_a_run_that_cannot_fit_a_local_cluster_is_refused(monkeypatch):
    from jobs.train import check_cluster_cpus
    from kdtrack.config import ConfigError

    class TwoCpus:
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_cluster_cpus(load_config("demo"), TwoCpus)  # 1.5 + the 0.5-CPU decode actor
    with pytest.raises(ConfigError, match="data.map_actors 2 x data.map_num_cpus 0.5"):
        check_cluster_cpus(load_config("demo", ["data.map_actors=2"]), TwoCpus)
    check_cluster_cpus(load_config("demo", ["data.map_actors=2", "data.loader=torch"]), TwoCpus)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # joining a cluster that may autoscale: a warning
    check_cluster_cpus(load_config("demo", ["data.map_actors=2"]), TwoCpus)
