"""``bench/supervised_probe.py --mot-classes world``: MOT17 tracks classed by the synthetic world's person
(docs/results/identity-learning.md, "What the supervised data holds"), through ``dataset_wide_ids``' key."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from kdtrack.data.dataset import dataset_wide_ids
from kdtrack.structures import ImageRecord

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("supervised_probe_bench", ROOT / "bench" / "supervised_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(source: str, sequence: str, ids: list[int]) -> ImageRecord:
    boxes = np.array([[0, 0, 10, 20]] * len(ids), np.float32)
    return ImageRecord(f"{sequence}.jpg", 64, 64, boxes, np.array(ids), source=source,
                       extra={"sequence": sequence} if sequence else {})


RECORDS = [_record("mot17", "SEQ-A", [1, 2, -1]), _record("mot17", "SEQ-B", [1, 3]),
           _record("person_search", "", [1, 7])]


def test_one_class_per_source_sequence_and_track():
    out, classes = dataset_wide_ids(RECORDS)
    assert classes == 6  # A1 A2 B1 B3, ps 1, ps 7: track 1 of two sequences is two classes
    assert [r.ids.tolist() for r in out] == [[0, 1, -1], [2, 3], [4, 5]]


def test_world_classes_merge_tracks_of_one_person(probe, tmp_path):
    # SEQ-A track 2 and SEQ-B track 1 are the same person (pid 40) in the world
    (tmp_path / "world.json").write_text(json.dumps(
        {"mot17_track_pids": {"SEQ-A": {"1": 10, "2": 40}, "SEQ-B": {"1": 40, "3": 50}}}))
    out, classes = probe.classes_by_world_person(tmp_path)(RECORDS)
    assert classes == 5
    assert [r.ids.tolist() for r in out] == [[0, 1, -1], [1, 2], [3, 4]]


def test_world_classes_need_the_worlds_track_table(probe, tmp_path):
    with pytest.raises(SystemExit, match=r"world.json holds no mot17_track_pids"):
        probe.classes_by_world_person(tmp_path)
    (tmp_path / "world.json").write_text(json.dumps({"mot17_track_pids": {"SEQ-A": {"1": 10}}}))
    with pytest.raises(SystemExit, match=r"has no person for SEQ-A track 2"):
        probe.classes_by_world_person(tmp_path)(RECORDS)
