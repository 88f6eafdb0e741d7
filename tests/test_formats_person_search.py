"""Person-search manifest round trip/validation and the CUHK-SYSU / PRW .mat converters.

The converter tests write tiny .mat files with scipy.io.savemat in the real nested
layout (struct arrays inside cells) and check the resulting pids box by box.
"""

import json

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from kdtrack.formats import (
    FormatError,
    MissingFileError,
    PersonSearchImage,
    PersonSearchManifest,
    PersonSearchQuery,
    convert_cuhk_sysu,
    convert_prw,
    read_manifest,
    write_manifest,
)
from kdtrack.formats.common import ReadStats

W, H = 64, 32


def _jpg(path, width=W, height=H):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))


def _manifest():
    images = [
        PersonSearchImage("a.jpg", W, H, 1, "train", [[2, 2, 10, 20], [30, 4, 10, 20]], [0, -1]),
        PersonSearchImage("q.jpg", W, H, 1, "test", [[1, 1, 10, 20]], [5]),
        PersonSearchImage("g1.jpg", W, H, 2, "test", [[3, 3, 10, 20], [50, 0, 20, 10]], [5, -1]),
        PersonSearchImage("g2.jpg", W, H, 3, "test", [], []),
    ]
    queries = [PersonSearchQuery(5, "q.jpg", [1, 1, 10, 20], {"2": ["g1.jpg", "g2.jpg"]})]
    return PersonSearchManifest("synthetic", images, queries, "cuhk")


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest())
    data = json.loads(path.read_text())
    assert data["format"] == "kdtrack-person-search-v1" and "image_dir" not in data
    assert "val_queries" not in data  # no val split: the file is as before
    assert set(data["images"][0]) == {"file_name", "width", "height", "camera", "split", "boxes_xywh", "pids"}
    for name in ("a.jpg", "q.jpg", "g1.jpg", "g2.jpg"):
        _jpg(tmp_path / "images" / name)
    m = read_manifest(path)
    assert (m.name, m.protocol, m.root) == ("synthetic", "cuhk", str(tmp_path))
    assert [i.file_name for i in m.images] == ["a.jpg", "q.jpg", "g1.jpg", "g2.jpg"]
    np.testing.assert_allclose(m.image("g1.jpg").boxes_xywh, [[3, 3, 10, 20], [50, 0, 20, 10]])
    assert m.image("g1.jpg").pids.tolist() == [5, -1] and m.images[3].boxes_xywh.shape == (0, 4)
    assert m.gallery(m.queries[0], 2) == ["g1.jpg", "g2.jpg"]
    stats = ReadStats()
    records = m.image_records("test", stats)
    assert [r.image_id for r in records] == ["q.jpg", "g1.jpg", "g2.jpg"]
    # g1 box 2: xywh [50,0,20,10] -> xyxy [50,0,70,10] clipped to [50,0,64,10]
    np.testing.assert_allclose(records[1].boxes_xyxy, [[3, 3, 13, 23], [50, 0, 64, 10]])
    assert records[1].ids.tolist() == [5, -1] and stats.boxes_clipped == 1
    assert records[0].image_path == str(tmp_path / "images" / "q.jpg")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="v0"), "format 'v0'"),
    (lambda d: d["queries"][0].update(box_xywh=[60, 1, 10, 20]), r"queries\[0\]: query box .* not inside"),
    (lambda d: d["queries"][0]["galleries"]["2"].append("zz.jpg"), r"queries\[0\]: gallery '2' image 'zz.jpg'"),
    (lambda d: d["queries"][0].update(pid=7), r"queries\[0\]: pid 7 has no box"),
    (lambda d: d["images"][2].update(pids=[5]), r"images\[2\]: 2 boxes but 1 pids"),
    (lambda d: d["images"][1].update(split="dev"), r"images\[1\]: split 'dev'"),
    (lambda d: d["images"][1].update(split="val"), r"queries\[0\]: test query on val image 'q.jpg'"),
    (lambda d: d["images"][2].update(split="train"), r"queries\[0\]: gallery '2' image 'g1.jpg' is a train image"),
    (lambda d: d["images"][0].update(boxes_xywh=[[1, 1, 0, 5], [1, 1, 2, 2]]), r"images\[0\]: boxes_xywh\[0\]"),
    (lambda d: d["images"][0].pop("camera"), r"images\[0\]: missing camera"),
])
def test_manifest_validation_names_the_record(tmp_path, edit, message):
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message):
        read_manifest(path, check_images=False)


def _manifest_with_val(protocol="cuhk"):
    m = _manifest()
    m.protocol = protocol
    m.images += [
        PersonSearchImage("vq.jpg", W, H, 1, "val", [[1, 1, 10, 20]], [8]),
        PersonSearchImage("v1.jpg", W, H, 2, "val", [[3, 3, 10, 20]], [8]),
        PersonSearchImage("v2.jpg", W, H, 3, "val", [[5, 5, 10, 20]], [9]),
    ]
    galleries = {"2": ["v1.jpg", "v2.jpg"]} if protocol == "cuhk" else {}
    m.val_queries = [PersonSearchQuery(8, "vq.jpg", [1, 1, 10, 20], galleries)]
    if protocol == "prw":
        m.queries[0].galleries = {}
    return m


@pytest.mark.parametrize("protocol", ["cuhk", "prw"])
def test_manifest_val_split(tmp_path, protocol):
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest_with_val(protocol))
    data = json.loads(path.read_text())
    assert [q["file_name"] for q in data["queries"]] == ["q.jpg"]  # "queries" stay the test queries
    assert [q["file_name"] for q in data["val_queries"]] == ["vq.jpg"]
    m = read_manifest(path, check_images=False)
    assert [q.file_name for q in m.queries_of("val")] == ["vq.jpg"] and m.queries_of("test") == m.queries
    assert m.queries_of("train") == []
    with pytest.raises(ValueError, match="split 'dev'"):
        m.queries_of("dev")
    (vq,), (tq,) = m.val_queries, m.queries
    assert (m.query_split(vq), m.query_split(tq)) == ("val", "test")
    # galleries never cross splits, listed (cuhk) or by the PRW rule (every image of the split but the query's)
    assert m.gallery(vq) == ["v1.jpg", "v2.jpg"]
    assert m.gallery(tq) == ["g1.jpg", "g2.jpg"]
    assert [r.image_id for r in m.image_records("val")] == ["vq.jpg", "v1.jpg", "v2.jpg"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["val_queries"][0].update(file_name="q.jpg", pid=5), r"val_queries\[0\]: val query on test image"),
    (lambda d: d["val_queries"][0]["galleries"]["2"].append("g1.jpg"),
     r"val_queries\[0\]: gallery '2' image 'g1.jpg' is a test image, not val"),
    (lambda d: d["val_queries"][0].update(pid=9), r"val_queries\[0\]: pid 9 has no box"),
    (lambda d: d.update(val_queries={}), "val_queries must be a list"),
])
def test_manifest_val_validation_names_the_record(tmp_path, edit, message):
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest_with_val())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message):
        read_manifest(path, check_images=False)


def test_manifest_missing_image(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest())
    with pytest.raises(MissingFileError, match=r"manifest\.json:images\[0\]: image not found: .*images/a\.jpg"):
        read_manifest(path)


# --------------------------------------------------------------------------- CUHK-SYSU


def _struct_array(rows, names):
    """A 1 x n MATLAB struct array (numpy record array of object fields) as savemat writes it."""
    arr = np.zeros((1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        for n in names:
            arr[n][0, i] = row[n]
    return arr


def _cell_column(items):
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


def _box(xywh):
    return np.asarray([xywh], dtype=np.float64)  # MATLAB 1x4 double


EMPTY = np.zeros((0, 0))
CUHK_IMAGES = {  # name -> boxes xywh as in Images.mat (s1 holds a zero-width annotation error)
    "s1.jpg": [[2, 2, 10, 20], [30, 4, 10, 20], [50, 0, 0, 10]],
    "s2.jpg": [[5, 5, 10, 20], [40, 2, 10, 20]],
    "s3.jpg": [[1, 1, 10, 20], [20, 2, 10, 20]],
    "s4.jpg": [[3, 3, 10, 20]],
    "s5.jpg": [[50, 5, 20, 20]],  # right edge 70 > 64: clipped to w = 14
}


def _write_cuhk(root):
    ann = root / "annotation"
    (ann / "test" / "train_test").mkdir(parents=True)
    img = _struct_array([
        {"imname": name, "nAppear": np.array([[len(boxes)]], np.float64),
         "box": _struct_array([{"idlocate": _box(b), "ishard": np.array([[0]], np.float64)} for b in boxes],
                              ["idlocate", "ishard"])}
        for name, boxes in CUHK_IMAGES.items()], ["imname", "nAppear", "box"])
    savemat(ann / "Images.mat", {"Img": img})
    savemat(ann / "pool.mat", {"pool": _cell_column(["s3.jpg", "s4.jpg", "s5.jpg"])})

    def person(idname, scenes):
        return _struct_array([{"idname": idname, "nAppear": np.array([[len(scenes)]], np.float64),
                               "scene": _struct_array([{"imname": n, "idlocate": _box(b),
                                                        "ishard": np.array([[0]], np.float64)} for n, b in scenes],
                                                      ["imname", "idlocate", "ishard"])}],
                             ["idname", "nAppear", "scene"])

    train = _cell_column([person("p1", [("s1.jpg", [2, 2, 10, 20]), ("s2.jpg", [5, 5, 10, 20])]),
                          person("p2", [("s1.jpg", [30, 4, 10, 20])])])
    savemat(ann / "test" / "train_test" / "Train.mat", {"Train": train})
    query = _struct_array([{"imname": "s3.jpg", "idlocate": _box([1, 1, 10, 20]),
                            "ishard": np.array([[0]], np.float64), "idname": "p9"}],
                          ["imname", "idlocate", "ishard", "idname"])
    for size, gallery in ((50, [("s4.jpg", _box([3, 3, 10, 20]))]),
                          (100, [("s4.jpg", _box([3, 3, 10, 20])), ("s5.jpg", EMPTY)])):
        g = _struct_array([{"imname": n, "idlocate": b, "ishard": np.array([[0]], np.float64)} for n, b in gallery],
                          ["imname", "idlocate", "ishard"])
        test = _struct_array([{"Query": query, "Gallery": g}], ["Query", "Gallery"])
        savemat(ann / "test" / "train_test" / f"TestG{size}.mat", {f"TestG{size}": test})
    for name in CUHK_IMAGES:
        _jpg(root / "Image" / "SSM" / name)


def test_convert_cuhk_sysu(tmp_path):
    _write_cuhk(tmp_path)
    stats = ReadStats()
    m = convert_cuhk_sysu(tmp_path, gallery_size=(50, 100), stats=stats)
    assert m.protocol == "cuhk" and m.image_dir == str((tmp_path / "Image" / "SSM").resolve())
    split = {img.file_name: img.split for img in m.images}
    assert split == {"s1.jpg": "train", "s2.jpg": "train", "s3.jpg": "test", "s4.jpg": "test", "s5.jpg": "test"}
    # train identities: Train.mat row k -> pid k; the test query j -> len(Train) + j + 1 = 3
    assert m.image("s1.jpg").pids.tolist() == [1, 2]  # the zero-width box is dropped
    assert m.image("s2.jpg").pids.tolist() == [1, -1]
    assert m.image("s3.jpg").pids.tolist() == [3, -1]
    assert m.image("s4.jpg").pids.tolist() == [3]
    np.testing.assert_allclose(m.image("s5.jpg").boxes_xywh, [[50, 5, 14, 20]])
    assert (stats.boxes_dropped, stats.boxes_clipped) == (1, 1)
    (q,) = m.queries
    assert (q.pid, q.file_name) == (3, "s3.jpg")
    np.testing.assert_allclose(q.box_xywh, [1, 1, 10, 20])
    assert q.galleries == {"50": ["s4.jpg"], "100": ["s4.jpg", "s5.jpg"]}
    assert m.gallery(q, 100) == ["s4.jpg", "s5.jpg"]
    # converted manifests survive write -> read (images found through the absolute image_dir)
    write_manifest(tmp_path / "out" / "manifest.json", m)
    again = read_manifest(tmp_path / "out" / "manifest.json")
    assert again.image_path("s1.jpg") == tmp_path.resolve() / "Image" / "SSM" / "s1.jpg"
    with pytest.raises(ValueError, match="gallery_size"):
        convert_cuhk_sysu(tmp_path, gallery_size=30)


def test_convert_cuhk_sysu_box_not_found(tmp_path):
    _write_cuhk(tmp_path)
    ann = tmp_path / "annotation" / "test" / "train_test"
    bad = _struct_array([{"idname": "p1", "nAppear": np.array([[1.0]]),
                          "scene": _struct_array([{"imname": "s1.jpg", "idlocate": _box([9, 9, 9, 9]),
                                                   "ishard": np.array([[0.0]])}], ["imname", "idlocate", "ishard"])}],
                        ["idname", "nAppear", "scene"])
    savemat(ann / "Train.mat", {"Train": _cell_column([bad])})
    with pytest.raises(FormatError, match=r"Train\.mat:Train\[0\]\.scene\[0\]: box \[9.0, 9.0, 9.0, 9.0\]"):
        convert_cuhk_sysu(tmp_path)


# --------------------------------------------------------------------------- PRW


def _write_prw(root):
    frames = {"c1s1_000151.jpg": ("box_new", [[1, 2, 2, 10, 20], [-2, 30, 4, 10, 20]]),
              # x = -1.5: clipped to x = 0, w = 8.5
              "c2s1_000201.jpg": ("anno_file", [[479, -1.5, 3, 10, 20], [-2, 40, 2, 10, 20]]),
              "c3s2_000301.jpg": ("anno_previous", [[479, 5, 5, 10, 20]])}
    (root / "annotations").mkdir(parents=True)
    for name, (key, rows) in frames.items():
        savemat(root / "annotations" / f"{name}.mat", {key: np.asarray(rows, np.float64)})
        _jpg(root / "frames" / name)
    savemat(root / "frame_train.mat", {"img_index_train": _cell_column(["c1s1_000151"])})
    savemat(root / "frame_test.mat", {"img_index_test": _cell_column(["c2s1_000201", "c3s2_000301"])})
    (root / "query_info.txt").write_bytes(b"479 -1.5 3 10 20 c2s1_000201\r\n")


def test_convert_prw(tmp_path):
    _write_prw(tmp_path)
    m = convert_prw(tmp_path)
    assert m.protocol == "prw" and [img.split for img in m.images] == ["train", "test", "test"]
    assert [img.camera for img in m.images] == [1, 2, 3]
    assert m.image("c1s1_000151.jpg").pids.tolist() == [1, -1]  # pid -2 (unlabeled) -> -1
    np.testing.assert_allclose(m.image("c2s1_000201.jpg").boxes_xywh, [[0, 3, 8.5, 20], [40, 2, 10, 20]])
    (q,) = m.queries
    assert (q.pid, q.file_name, q.galleries) == (479, "c2s1_000201.jpg", {})
    np.testing.assert_allclose(q.box_xywh, [0, 3, 8.5, 20])
    assert m.gallery(q) == ["c3s2_000301.jpg"]  # every test frame except the query's own
    write_manifest(tmp_path / "manifest.json", m)
    assert read_manifest(tmp_path / "manifest.json").queries[0].pid == 479


def test_convert_prw_bad_inputs(tmp_path):
    _write_prw(tmp_path)
    (tmp_path / "query_info.txt").write_text("479 1 2 3 c2s1_000201\n")
    with pytest.raises(FormatError, match=r"query_info\.txt:1: expected 'pid x y w h imname'"):
        convert_prw(tmp_path)
    savemat(tmp_path / "annotations" / "c1s1_000151.jpg.mat", {"boxes": np.zeros((1, 5))})
    with pytest.raises(FormatError, match=r"c1s1_000151\.jpg\.mat: none of the box variables"):
        convert_prw(tmp_path)


def test_convert_cuhk_sysu_wrong_layout_names_the_record(tmp_path):
    _write_cuhk(tmp_path)
    ann = tmp_path / "annotation" / "test" / "train_test"
    no_scene = _struct_array([{"idname": "p1", "nAppear": np.array([[1.0]])}], ["idname", "nAppear"])
    savemat(ann / "Train.mat", {"Train": _cell_column([no_scene])})
    with pytest.raises(FormatError, match=r"Train\.mat:Train\[0\]: unexpected \.mat layout"):
        convert_cuhk_sysu(tmp_path)
