"""The identity-disjoint validation carve-out of a person-search manifest (CUHK-SYSU / PRW have no val split)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import carve_val
from jobs._cli import InputError
from kdtrack.config import load_config
from kdtrack.data.dataset import load_records_with_stats
from kdtrack.formats.common import FormatError
from kdtrack.formats.person_search import read_manifest, write_manifest
from kdtrack.formats.person_search_val import carve_validation
from kdtrack.metrics.reid_probe import load_reid_box_sets

ROOT = Path(__file__).resolve().parents[1]


def _train_test_only(tiny_world: Path, out: Path) -> Path:
    """The tiny world's manifest as the CUHK-SYSU converter writes it: train and test, no val split (its val
    images join train), images read from the world's folder."""
    m = read_manifest(tiny_world / "person_search" / "manifest.json")
    images = [dataclasses.replace(img, split="train") if img.split == "val" else img for img in m.images]
    m = dataclasses.replace(m, images=images, val_queries=[],
                            image_dir=str(tiny_world / "person_search" / m.image_dir))
    path = out / "manifest.json"
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(path, m)
    return path


def _labelled(m, split):
    return {int(p) for img in m.images if img.split == split for p in img.pids if p >= 0}


def test_carved_people_never_reach_training(tiny_world, tmp_path):
    source = _train_test_only(tiny_world, tmp_path / "src")
    before = read_manifest(source)
    data = tmp_path / "data"
    counts = carve_val.main(["--manifest", str(source), "--out", str(data / "person_search" / "manifest.json"),
                             "--identities", "5", "--seed", "3", "--gallery-sizes", "4,100"])
    carved = read_manifest(data / "person_search" / "manifest.json")  # images found through the absolute dir
    val_ids = _labelled(carved, "val")
    assert len(val_ids) == counts["val_identities"] == 5 and not val_ids & _labelled(carved, "train")
    assert {q.pid for q in carved.val_queries} == val_ids and counts["val_queries"] == 5
    assert _labelled(carved, "test") == _labelled(before, "test")  # the test split is untouched
    # every image that shows a picked person left training, and only those
    shows = {img.file_name for img in before.images if img.split == "train" and val_ids & set(img.pids.tolist())}
    assert {img.file_name for img in carved.images if img.split == "val"} == shows
    assert counts["train_images"] == sum(img.split == "train" for img in before.images) - len(shows)
    # the other labelled people of those images are unlabelled there, still trained on through other images
    assert counts["boxes_unlabelled_in_val"] == sum(
        int(((img.pids >= 0) & ~np.isin(img.pids, sorted(val_ids))).sum())
        for img in before.images if img.file_name in shows)

    # what the trainer reads: no record of the person-search source carries a val person
    cfg = load_config("sup_cpu", [f"data.root={data}", "data.sources=[person_search]"])
    records, _ = load_records_with_stats(cfg)
    assert len(records) == counts["train_images"]
    assert not val_ids & {int(i) for r in records for i in r.ids}

    # what the sweep objective reads: the val queries, galleries of val images (the size that fits)
    (box_set,) = load_reid_box_sets(data, cfg.eval, split="val", protocols=["person_search"]).values()
    assert len({int(i) for i in box_set.ids}) >= 5
    assert all(set(q.galleries) == {"4"} for q in carved.val_queries)

    # same seed, same carve-out; another seed, other people
    again, _ = carve_validation(before, 5, seed=3, gallery_sizes=(4, 100))
    assert _labelled(again, "val") == val_ids
    assert _labelled(carve_validation(before, 5, seed=4)[0], "val") != val_ids


def test_refusals(tiny_world, tmp_path):
    source = _train_test_only(tiny_world, tmp_path / "src")
    m = read_manifest(source)
    carved, _ = carve_validation(m, 3)
    with pytest.raises(ValueError, match="already has a val split"):
        carve_validation(carved, 3)
    with pytest.raises(ValueError, match="only .* train people appear in two images"):
        carve_validation(m, 10_000)
    out = tmp_path / "out.json"
    out.write_text("{}")
    with pytest.raises(InputError, match="exists"):
        carve_val.main(["--manifest", str(source), "--out", str(out), "--identities", "3"])

    # a val split that shares a person with training is refused on every read, the file named
    path = tmp_path / "leaky" / "manifest.json"
    path.parent.mkdir()
    write_manifest(path, carved)
    data = json.loads(path.read_text())
    pid = next(iter(_labelled(carved, "val")))
    train_index = next(i for i, img in enumerate(data["images"]) if img["split"] == "train")
    data["images"][train_index]["pids"][0] = pid
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=rf"{path}: 1 identities are labelled in both the train and the val "
                                          rf"split \(pid {pid}: images\[{train_index}\] is train"):
        read_manifest(path, check_images=False)


def test_cli_exit_code_and_message(tiny_world, tmp_path):
    source = _train_test_only(tiny_world, tmp_path / "src")
    done = subprocess.run([sys.executable, "-m", "jobs.carve_val", "--manifest", str(source), "--out",
                           str(source), "--identities", "2"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "exists: a validation split is carved once" in done.stderr


def test_prw_carve_out_needs_two_cameras_and_keeps_prws_gallery_rule():
    from kdtrack.formats.person_search import PersonSearchImage, PersonSearchManifest, validate_manifest

    def image(name, camera, split, pids):
        boxes = [[10.0 + 20 * i, 10.0, 15.0, 40.0] for i in range(len(pids))]
        return PersonSearchImage(name, 200, 100, camera, split, boxes, pids)

    images = [image("c1_a.jpg", 1, "train", [1, 2]), image("c2_a.jpg", 2, "train", [1, 3]),
              image("c1_b.jpg", 1, "train", [2, -1]), image("c1_c.jpg", 1, "train", [2, 3]),
              image("c3_t.jpg", 3, "test", [9])]
    m = PersonSearchManifest("prw-mini", images, [], "prw")
    # person 2 is seen in three images, all from camera 1: PRW's cross-camera rule could never find it
    carved, counts = carve_validation(m, 2, seed=0)
    assert {q.pid for q in carved.val_queries} == {1, 3}  # the two people seen from two cameras
    validate_manifest(carved)
    assert all(q.galleries == {} for q in carved.val_queries)
    val_names = {img.file_name for img in carved.images if img.split == "val"}
    assert val_names == {"c1_a.jpg", "c2_a.jpg", "c1_c.jpg"} and counts["val_images"] == 3
    for q in carved.val_queries:  # PRW's rule: every val image but the query's own
        assert set(carved.gallery(q)) == val_names - {q.file_name}
    # person 2 was on two of the moved images: unlabelled there, still trained on through c1_b.jpg
    assert counts["boxes_unlabelled_in_val"] == 2
    assert [img.pids.tolist() for img in carved.images if img.file_name == "c1_b.jpg"] == [[2, -1]]
    with pytest.raises(ValueError, match="only 2 train people"):
        carve_validation(m, 3)


def test_a_manifest_written_elsewhere_still_finds_its_images(tiny_world, tmp_path):
    """A manifest read with a relative image folder and carved into another folder points at the images."""
    m = read_manifest(tiny_world / "person_search" / "manifest.json")
    m = dataclasses.replace(m, images=[dataclasses.replace(i, split="train") if i.split == "val" else i
                                       for i in m.images], val_queries=[])
    src = tmp_path / "src"
    src.mkdir()
    (src / m.image_dir).symlink_to(tiny_world / "person_search" / m.image_dir)
    write_manifest(src / "manifest.json", m)
    assert not Path(m.image_dir).is_absolute()
    out = tmp_path / "elsewhere" / "manifest.json"
    carve_val.main(["--manifest", str(src / "manifest.json"), "--out", str(out), "--identities", "3"])
    carved = read_manifest(out)  # check_images: every image found from the new folder
    assert Path(carved.image_dir) == (src / m.image_dir).absolute()
