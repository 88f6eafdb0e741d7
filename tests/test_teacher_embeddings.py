"""Offline KD teacher embeddings: the store (kdtrack.data.teacher_store), the Ray Data job
(jobs.teacher_embeddings) and a KD run that reads it (teacher.embeddings)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from jobs._cli import InputError
from kdtrack.config import ConfigError, load_config
from kdtrack.structures import ImageRecord

CANVAS = ["model.input_width=160", "model.input_height=96"]  # the KD run's canvas, small for speed


def _teacher_checkpoint(path, seed=0, iteration=0):
    """A tiny teacher saved as train.recipe=teacher saves it (classifier included)."""
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_teacher

    torch.manual_seed(seed)
    cfg = load_config("teacher_cpu")
    return save_checkpoint(path, model=build_teacher(cfg.teacher, num_classes=5), config=cfg, iteration=iteration)


def _job(teacher, world, out, *extra, sources="crowdhuman,mot17"):
    from jobs.teacher_embeddings import main

    argv = ["--teacher", str(teacher), "--data-root", str(world), "--sources", sources, "--out", str(out),
            "--config", "kd_cpu", "--batch-images", "3", "--part-images", "4"]
    for item in CANVAS:
        argv += ["--set", item]
    return main(argv + list(extra))


def _kd_config(world, *extra):
    return load_config("kd_cpu", [f"data.root={world}", *CANVAS, *extra])


def test_stored_targets_follow_each_slots_original_box_row(tmp_path):
    """The join: slot k gets the stored vector of ITS box's original row (boxes dropped or reordered by
    augmentation keep their own vector); a store that lacks an image or a box names it."""
    import pyarrow.parquet as pq

    from kdtrack.data.teacher_store import (
        MissingTeacherEmbedding,
        attach_stored_targets,
        read_teacher_table,
        rows_table,
    )

    meta = {"teacher_checkpoint": "T", "teacher_iteration": 3, "feature_dim": 4, "crop_height": 8, "crop_width": 4,
            "canvas_width": 32, "canvas_height": 32}
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    boxes = np.array([[0, 0, 4, 8], [4, 0, 8, 8], [8, 0, 12, 8]], np.float32)
    rows = [{"source": "coco", "image_id": "7", "boxes_xyxy": boxes, "embeddings": vectors},
            {"source": "coco", "image_id": "8", "boxes_xyxy": boxes[:1], "embeddings": -vectors[:1]}]
    (tmp_path / "parts").mkdir()
    pq.write_table(rows_table(rows, meta), tmp_path / "parts" / "part-00000.parquet")
    table = read_teacher_table(tmp_path, {"feature_dim": 4})
    record = ImageRecord("x.jpg", 32, 32, boxes, image_id="7", source="coco")
    sample = {"box_index": np.array([[2, 0, -1, -1]])}  # box 1 dropped, box 2 first
    attach_stored_targets(sample, table.image_rows(record))
    np.testing.assert_array_equal(sample["teacher"][0], np.stack([vectors[2], vectors[0], np.zeros(4), np.zeros(4)]))
    np.testing.assert_array_equal(table.image_rows(ImageRecord("y.jpg", 32, 32, boxes[:1], image_id="8",
                                                               source="coco")), -vectors[:1])
    with pytest.raises(MissingTeacherEmbedding, match="no teacher embeddings for image 9 \\(coco"):
        table.image_rows(ImageRecord("z.jpg", 32, 32, boxes, image_id="9", source="coco"))
    with pytest.raises(MissingTeacherEmbedding,
                       match="image 8 \\(coco\\) has 1 stored boxes but 3 annotated: box row 1"):
        table.image_rows(ImageRecord("y.jpg", 32, 32, boxes, image_id="8", source="coco"))
    with pytest.raises(ValueError, match="feature_dim: 4 here, 8 expected"):
        read_teacher_table(tmp_path, {"feature_dim": 8})


def test_offline_targets_give_the_online_kd_loss_on_a_batch(tiny_world, tmp_path):
    """Parity: the same batch gets the same teacher targets and KD loss (1e-5) from the store as from the
    online teacher, boxes dropped by augmentation included; a bad image is skipped, named, exit code 1."""
    from jobs.teacher_embeddings import SomeImagesFailed
    from kdtrack.data.dataset import TrainingDataset, collate, load_records
    from kdtrack.engine import attach_teacher_targets
    from kdtrack.losses.kd import KDLoss
    from kdtrack.models import build_teacher, freeze_teacher
    from kdtrack.data.teacher_store import read_teacher_table

    teacher_path = _teacher_checkpoint(tmp_path / "T")
    summary = _job(teacher_path, tiny_world, tmp_path / "E", "--no-ray", "--max-images", "10")
    assert summary["images_embedded"] == 10 and summary["images_bad"] == 0
    # the zooms and occluders of the IDF view transform and a larger minimum box drop boxes
    cfg = _kd_config(tiny_world, f"teacher.checkpoint={teacher_path}", "data.augment=idf_view", "data.min_box_size=6")
    records = load_records(cfg)[:10]
    online = TrainingDataset(records, cfg, with_original=True)
    offline = TrainingDataset(records, cfg, teacher_store=str(tmp_path / "E"))
    teacher = freeze_teacher(build_teacher(cfg.teacher))
    kd = KDLoss(cfg.model.embedding_dim)
    dropped = 0
    for start in (0, 5):
        on = [online.sample_at(1, i) for i in range(start, start + 5)]
        off = [offline.sample_at(1, i) for i in range(start, start + 5)]
        dropped += sum(records[start + j].num_boxes - int((s["box_index"] >= 0).sum()) for j, s in enumerate(off))
        batch_on = attach_teacher_targets(teacher, collate(on), (cfg.teacher.crop_height, cfg.teacher.crop_width))
        batch_off = collate(off)
        assert "orig_image" not in batch_off  # the offline sample carries targets, not the canvas
        torch.testing.assert_close(batch_off["teacher"], batch_on["teacher"], atol=1e-5, rtol=0)
        student = torch.randn(len(on), cfg.model.embedding_dim, *batch_on["heatmap"].shape[-2:])
        loss_on = kd(student, batch_on["index"], batch_on["mask"], batch_on["teacher"])["id"]
        loss_off = kd(student, batch_off["index"], batch_off["mask"], batch_off["teacher"])["id"]
        assert abs(float(loss_on) - float(loss_off)) <= 1e-5 * max(1.0, abs(float(loss_on)))
    assert dropped > 0  # the augmentation dropped boxes: the join was tested where it can go wrong

    world = tmp_path / "w"  # a corrupt COCO image (the COCO reader checks existence only)
    shutil.copytree(tiny_world / "coco", world / "coco")
    bad = next((world / "coco" / "train2017").glob("*.jpg"))
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SomeImagesFailed, match="1 images could not be read"):
        _job(teacher_path, world, tmp_path / "E_coco", "--no-ray", sources="coco")
    import json

    summary = json.loads((tmp_path / "E_coco" / "summary.json").read_text())
    assert summary["images_bad"] == 1 and bad.name in summary["bad_examples"][0]["error"]
    assert summary["images_embedded"] > 0
    assert len(read_teacher_table(tmp_path / "E_coco").index) == summary["images_embedded"]


def test_ray_job_matches_in_process_resumes_and_refuses_another_teacher(ray_session, tiny_world, tmp_path):
    """The Ray Data job writes what the in-process path writes (to 1e-6), a rerun embeds only new images,
    and a store of another teacher is refused naming the field."""
    from kdtrack.data.teacher_store import part_files, read_teacher_table

    teacher_path = _teacher_checkpoint(tmp_path / "T", iteration=7)
    first = _job(teacher_path, tiny_world, tmp_path / "E", "--max-images", "5")  # the Ray Data job
    assert first["images_embedded"] == 5 and len(part_files(tmp_path / "E")) == 2  # parts of 4 images
    # the resume is the driver's (Ray or not): in-process here, one Ray Data start-up is enough for the suite
    second = _job(teacher_path, tiny_world, tmp_path / "E", "--max-images", "9", "--no-ray")
    assert second["images_before"] == 5 and second["images_embedded"] == 4  # resumed: only the new ones
    _job(teacher_path, tiny_world, tmp_path / "local", "--max-images", "9", "--no-ray")
    ray_table, local_table = read_teacher_table(tmp_path / "E"), read_teacher_table(tmp_path / "local")
    assert ray_table.index.keys() == local_table.index.keys() and len(ray_table.index) == 9
    for key, (start, n) in local_table.index.items():
        ray_start, ray_n = ray_table.index[key]
        np.testing.assert_allclose(ray_table.matrix[ray_start:ray_start + ray_n], local_table.matrix[start:start + n],
                                   atol=1e-6)
    assert ray_table.meta["teacher_iteration"] == 7
    other = _teacher_checkpoint(tmp_path / "T2", seed=1, iteration=8)
    with pytest.raises(InputError, match="another teacher or canvas.*teacher_iteration: 7 stored vs 8 now"):
        _job(other, tiny_world, tmp_path / "E", "--max-images", "9")


def test_kd_run_from_the_store_trains_without_the_teacher(ray_session, tiny_world, mlflow_uri, tmp_path):
    """jobs.train kd with teacher.embeddings: a store that misses training images is refused on the driver,
    naming one; the full store trains (no teacher checkpoint anywhere in the run)."""
    from jobs.train import get_args_parser, main
    from kdtrack.checkpoint import load_checkpoint

    teacher_path = _teacher_checkpoint(tmp_path / "T")
    _job(teacher_path, tiny_world, tmp_path / "E_part", "--no-ray", "--max-images", "3")
    # data.loader=torch: the samples come from the same TrainingDataset as in the Ray Data decode actors,
    # without the stream's start-up (tests/test_pipeline_training.py covers the stream itself)
    fast = [*CANVAS, "model.width=16", "model.head_conv=32", "model.deformable=false", "train.batch_size_per_worker=2",
            "data.loader=torch"]

    def run(store):
        argv = ["--config", "kd_cpu", "--data-root", str(tiny_world), "--out", str(tmp_path / "K"), "--mlflow-uri",
                mlflow_uri, "--smoke-test"]
        for item in fast + [f"teacher.embeddings={store}"]:
            argv += ["--set", item]
        return main(get_args_parser().parse_args(argv))

    with pytest.raises(ConfigError, match="teacher.embeddings: .*no teacher embeddings for image"):
        run(tmp_path / "E_part")
    summary = _job(teacher_path, tiny_world, tmp_path / "E", "--no-ray")
    assert summary["images_bad"] == 0
    result = run(tmp_path / "E")
    state = load_checkpoint(result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].teacher.checkpoint == ""
    assert state["config"].teacher.embeddings == str(tmp_path / "E")
    assert math.isfinite(result["metrics"]["train/id"]) and result["metrics"]["train/id"] > 0
