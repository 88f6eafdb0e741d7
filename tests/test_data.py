"""Training samples from a hand-written CrowdHuman odgt + JPEG; collate; records; bad images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kdtrack.config import load_config
from kdtrack.data import collate, image_uid, load_records, read_image_rgb, training_sample
from kdtrack.targets import person_keys

IMG_W, IMG_H = 160, 96  # letterboxed x2 onto the tiny preset's 320x192 canvas, no padding


def _world(tmp_path: Path) -> Path:
    root = tmp_path / "world"
    (root / "crowdhuman" / "Images").mkdir(parents=True)
    image = np.full((IMG_H, IMG_W, 3), 90, np.uint8)
    cv2.imwrite(str(root / "crowdhuman" / "Images" / "img1.jpg"), image)
    boxes = [
        {"tag": "person", "fbox": [10, 20, 40, 60], "vbox": [10, 20, 40, 60], "extra": {"box_id": 0}},
        {"tag": "person", "fbox": [100, 10, 20, 50], "vbox": [100, 10, 20, 50], "extra": {"box_id": 1}},
        {"tag": "mask", "fbox": [60, 0, 10, 10], "vbox": [60, 0, 10, 10], "extra": {"box_id": 2}},
    ]
    (root / "crowdhuman" / "annotation_train.odgt").write_text(json.dumps({"ID": "img1", "gtboxes": boxes}) + "\n")
    return root


def _cfg(root: Path, *extra: str):
    return load_config("tiny", [f"data.root={root}", "data.augment=none", *extra])


def test_training_sample_from_odgt(tmp_path):
    cfg = _cfg(_world(tmp_path))
    (record,) = load_records(cfg)
    s = training_sample(record, cfg, np.random.default_rng(0), views=2)
    assert s["image"].shape == (2, 3, 192, 320) and s["image"].dtype == np.float32
    assert s["heatmap"].shape == (2, 1, 48, 80)
    # box 0: xywh [10,20,40,60] -> xyxy [10,20,50,80] -> x2 on the canvas [20,40,100,160];
    # centre (60,100) / 4 = (15,25) -> index 25*80+15 = 2015; ltrb = (40,60,40,60); offset 0.
    assert s["index"][0, 0] == 2015
    np.testing.assert_allclose(s["size"][0, 0], [40, 60, 40, 60])
    np.testing.assert_allclose(s["offset"][0, 0], [0, 0])
    assert s["mask"][0].sum() == 2 and s["box_index"][0, :3].tolist() == [0, 1, -1]
    # person keys: the same in both views, derived from the image uid and the original row
    keys = person_keys(image_uid(record), 2)
    assert s["ids"][0, :2].tolist() == keys.tolist() == s["ids"][1, :2].tolist()
    # the mask box (60,0)-(70,10) -> canvas (120,0)-(140,20) -> cells x 30..34, y 0..4 are ignored
    assert s["ignore"][0, 0, 0:5, 30:35].all() and s["ignore"][0].sum() == 25


def test_with_original_aligns_teacher_boxes(tmp_path):
    cfg = _cfg(_world(tmp_path), "loss.id_mode=kd", "data.augment=detection")
    (record,) = load_records(cfg)
    s = training_sample(record, cfg, np.random.default_rng(5), with_original=True)
    canvas_boxes = record.boxes_xyxy * 2.0  # letterbox scale 2, no padding
    filled = s["mask"][0]
    np.testing.assert_allclose(s["teacher_boxes_xyxy"][0][filled], canvas_boxes[s["box_index"][0][filled]])
    assert s["orig_image"].shape == (1, 3, 192, 320)
    # KD keeps dataset ids (unknown for CrowdHuman), not person keys
    assert (s["ids"][0][filled] == -1).all()


def test_collate_puts_views_in_two_halves(tmp_path):
    cfg = _cfg(_world(tmp_path))
    (record,) = load_records(cfg)
    samples = [training_sample(record, cfg, np.random.default_rng(i), views=2) for i in range(3)]
    batch = collate(samples)
    assert batch["image"].shape == (6, 3, 192, 320)
    assert batch["ids"].shape == (6, 2)  # slot axis trimmed to the 2 people
    assert batch["ids"][:3].tolist() == batch["ids"][3:].tolist()


def test_bad_image_names_the_path(tmp_path):
    root = _world(tmp_path)
    cfg = _cfg(root)
    (record,) = load_records(cfg)
    Path(record.image_path).write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="img1.jpg: cannot read image"):
        training_sample(record, cfg, np.random.default_rng(0))


def test_image_size_mismatch_is_an_error(tmp_path):
    root = _world(tmp_path)
    path = root / "crowdhuman" / "Images" / "img1.jpg"
    with pytest.raises(ValueError, match="img1.jpg: image is 160x96 but its annotation says 10x10"):
        read_image_rgb(path, (10, 10))


def test_unknown_source_and_empty_root(tmp_path):
    with pytest.raises(ValueError, match="data.root is empty"):
        load_records(load_config("tiny"))
    with pytest.raises(ValueError, match="'kinetics' has no boxes"):
        load_records(_cfg(_world(tmp_path), "data.sources=[kinetics]"))
