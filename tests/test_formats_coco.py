"""COCO instances: person-only reading, crowd -> ignore, images without persons dropped, bad input."""

import json

import cv2
import numpy as np
import pytest

from kdtrack.formats import FormatError, MissingFileError, read_coco_persons, write_coco
from kdtrack.formats.coco import PERSON_CATEGORY

CATEGORIES = [PERSON_CATEGORY, {"supercategory": "vehicle", "id": 3, "name": "car"}]


def _jpg(path, width=64, height=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))


def _dataset():
    images = [
        {"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 32},
        {"id": 8, "file_name": "000000000008.jpg", "width": 64, "height": 32},  # only a car -> dropped
        {"id": 9, "file_name": "000000000009.jpg", "width": 64, "height": 32},  # only a crowd -> dropped
    ]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [4, 2, 10, 20], "area": 200.0, "iscrowd": 0,
         "segmentation": []},
        # x+w = 70 > 64: clipped to xyxy [50, 0, 64, 12]
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 0, 20, 12], "area": 240.0, "iscrowd": 0,
         "segmentation": []},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [20, 0, 30, 30], "area": 900.0, "iscrowd": 1,
         "segmentation": {"counts": [], "size": [32, 64]}},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 5], "area": 0.0, "iscrowd": 0,
         "segmentation": []},  # zero width -> dropped
        {"id": 5, "image_id": 8, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0,
         "segmentation": []},
        {"id": 6, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 1,
         "segmentation": []},
    ]
    return images, annotations


def test_round_trip(tmp_path):
    images, annotations = _dataset()
    path = tmp_path / "annotations" / "instances_val2017.json"
    write_coco(path, images, annotations, CATEGORIES)
    data = json.loads(path.read_text())
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    for img in images:
        _jpg(tmp_path / "val2017" / img["file_name"])
    records, stats = read_coco_persons(path, tmp_path / "val2017")
    assert len(records) == 1
    rec = records[0]
    assert (rec.image_id, rec.width, rec.height, rec.source) == ("7", 64, 32, "coco")
    np.testing.assert_allclose(rec.boxes_xyxy, [[4, 2, 14, 22], [50, 0, 64, 12]])
    np.testing.assert_allclose(rec.ignore_boxes_xyxy, [[20, 0, 50, 30]])
    assert rec.ids.tolist() == [-1, -1] and rec.visibility.tolist() == [1.0, 1.0]
    assert (stats.records, stats.filtered_records, stats.boxes_clipped, stats.boxes_dropped) == (1, 2, 1, 1)


def test_missing_image_and_unknown_image_id(tmp_path):
    images, annotations = _dataset()
    path = tmp_path / "inst.json"
    write_coco(path, images, annotations, CATEGORIES)
    with pytest.raises(MissingFileError, match=r"inst\.json:images\[0\]: image not found: .*000000000007\.jpg"):
        read_coco_persons(path, tmp_path)
    records, stats = read_coco_persons(path, tmp_path, on_error="skip")
    assert records == [] and stats.missing_images == 1
    assert len(read_coco_persons(path, tmp_path, check_images=False)[0]) == 1

    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["bbox"] = [1, 2, "x", 4]
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"inst\.json:annotations\[0\]: image_id 99 not in images"):
        read_coco_persons(path, tmp_path, check_images=False)
    records, stats = read_coco_persons(path, tmp_path, on_error="skip", check_images=False)
    assert stats.skipped_records == 2 and records == []  # image 7 keeps only its zero-width box


def test_invalid_json_and_missing_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(FormatError, match=r"bad\.json:2: invalid JSON"):
        read_coco_persons(path, tmp_path)
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}')
    with pytest.raises(FormatError, match=r"bad\.json:images\[0\]: missing width, height"):
        read_coco_persons(path, tmp_path)
    path.write_text('{"images": []}')
    with pytest.raises(FormatError, match="missing annotations"):
        read_coco_persons(path, tmp_path)


def test_writer_checks_references(tmp_path):
    images, annotations = _dataset()
    annotations[0]["image_id"] = 123
    with pytest.raises(ValueError, match=r"annotations\[0\]"):
        write_coco(tmp_path / "x.json", images, annotations, CATEGORIES)


def test_person_polygons_are_kept_per_box_and_a_bad_one_names_the_record(tmp_path):
    from kdtrack.data.dataset import instance_map
    from kdtrack.structures import POLYGONS_KEY, ImageRecord

    images, annotations = _dataset()
    annotations[1]["segmentation"] = [[52, 1, 60, 1, 60, 10, 52, 10]]  # person 2: a square outline
    path = tmp_path / "annotations" / "instances_val2017.json"
    write_coco(path, images, annotations, CATEGORIES)
    for img in images:
        _jpg(tmp_path / "val2017" / img["file_name"])
    rec = read_coco_persons(path, tmp_path / "val2017")[0][0]
    polygons = rec.extra[POLYGONS_KEY]
    assert len(polygons) == rec.num_boxes == 2 and polygons[0] is None  # an empty segmentation: no outline
    np.testing.assert_allclose(polygons[1][0], [[52, 1], [60, 1], [60, 10], [52, 10]])
    again = ImageRecord.from_dict(rec.to_dict())  # the outlines travel with the record to the workers
    np.testing.assert_allclose(again.extra[POLYGONS_KEY][1][0], polygons[1][0])
    assert again.select(np.array([False, True])).extra[POLYGONS_KEY][0] is polygons[1]
    instances = instance_map(polygons, rec.height, rec.width)
    assert set(np.unique(instances)) == {0, 2} and (instances[1:11, 52:61] == 2).all() and instances[20, 5] == 0

    annotations[0]["segmentation"] = [[1, 2, 3]]
    write_coco(path, images, annotations, CATEGORIES)
    with pytest.raises(FormatError, match=r"instances_val2017.json:annotations\[0\]: segmentation\[0\]"):
        read_coco_persons(path, tmp_path / "val2017")
