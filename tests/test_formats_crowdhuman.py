"""CrowdHuman .odgt: write-then-read round trip, visibility, ignore regions, bad input."""

import json

import cv2
import numpy as np
import pytest

from kdtrack.formats import FormatError, MissingFileError, odgt_box, read_crowdhuman, write_odgt
from kdtrack.formats.crowdhuman import visible_fraction

W, H = 64, 32


def _jpg(path, width=W, height=H):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))


def _entries():
    return [
        {"ID": "273271,c9db000d5146c15", "gtboxes": [
            # fbox xyxy [10,2,30,22] area 400; vbox [10,2,30,12] -> visibility 200/400 = 0.5
            odgt_box([10, 2, 20, 20], [10, 2, 20, 10], [15, 2, 6, 6], box_id=0),
            # amodal fbox xyxy [-10,0,20,40] area 1200, vbox [0,0,20,32]: 640/1200 = 0.5333;
            # clipped to [0,0,20,32]
            odgt_box([-10, 0, 30, 40], [0, 0, 20, 32], [0, 0, 5, 5], box_id=1),
            odgt_box([40, 0, 10, 10], [40, 0, 10, 10], [40, 0, 10, 10], tag="mask"),  # ignore region
            odgt_box([50, 0, 10, 30], [50, 0, 10, 30], [50, 0, 4, 4], ignore=True),  # crowd -> ignore
            odgt_box([5, 5, 0, 10], [5, 5, 0, 10], [5, 5, 0, 3]),  # zero width -> dropped
        ]},
        {"ID": "empty", "gtboxes": []},
    ]


def test_round_trip(tmp_path):
    path = tmp_path / "annotation_train.odgt"
    write_odgt(path, _entries())
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["gtboxes"][0]["extra"] == {"box_id": 0, "occ": 0, "ignore": 0}
    assert set(json.loads(lines[0])["gtboxes"][0]) == {"tag", "fbox", "vbox", "hbox", "head_attr", "extra"}
    for image_id in ("273271,c9db000d5146c15", "empty"):
        _jpg(tmp_path / "Images" / f"{image_id}.jpg")
    records, stats = read_crowdhuman(path, tmp_path / "Images")
    assert [r.image_id for r in records] == ["273271,c9db000d5146c15", "empty"]
    rec = records[0]
    assert (rec.width, rec.height, rec.source) == (W, H, "crowdhuman")
    assert rec.image_path.endswith("Images/273271,c9db000d5146c15.jpg")
    np.testing.assert_allclose(rec.boxes_xyxy, [[10, 2, 30, 22], [0, 0, 20, 32]])
    np.testing.assert_allclose(rec.visibility, [0.5, 640 / 1200], rtol=1e-6)
    np.testing.assert_allclose(rec.ignore_boxes_xyxy, [[40, 0, 50, 10], [50, 0, 60, 30]])
    assert rec.ids.tolist() == [-1, -1]
    np.testing.assert_allclose(rec.extra["vboxes_xyxy"], [[10, 2, 30, 12], [0, 0, 20, 32]])
    np.testing.assert_allclose(rec.extra["hboxes_xyxy"], [[15, 2, 21, 8], [0, 0, 5, 5]])
    assert records[1].num_boxes == 0
    assert (stats.records, stats.boxes_clipped, stats.boxes_dropped) == (2, 1, 1)
    # aligned extras survive select()
    one = rec.select(np.array([False, True]))
    np.testing.assert_allclose(one.extra["vboxes_xyxy"], [[0, 0, 20, 32]])


def test_box_choice_and_sizes_without_images(tmp_path):
    path = tmp_path / "a.odgt"
    write_odgt(path, _entries()[:1])
    records, stats = read_crowdhuman(path, tmp_path / "nowhere", box="vbox", check_images=False,
                                     image_sizes={"273271,c9db000d5146c15": (W, H)})
    np.testing.assert_allclose(records[0].boxes_xyxy, [[10, 2, 30, 12], [0, 0, 20, 32]])
    assert stats.missing_images == 0
    with pytest.raises(ValueError, match="box must be"):
        read_crowdhuman(path, tmp_path, box="body")


def test_visible_fraction_hand_values():
    # fbox [0,0,10,10] area 100; vbox [5,5,20,20] -> intersection 5x5 = 25 -> 0.25; NaN vbox -> 1
    frac = visible_fraction(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]),
                            np.array([[5, 5, 20, 20], [np.nan] * 4]))
    np.testing.assert_allclose(frac, [0.25, 1.0])


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.odgt"
    good = json.dumps(_entries()[1])
    path.write_text(good + "\n" + '{"ID": "x", "gtboxes": [\n' + good + "\n")
    _jpg(tmp_path / "empty.jpg")
    with pytest.raises(FormatError, match=r"bad\.odgt:2: invalid JSON"):
        read_crowdhuman(path, tmp_path)
    records, stats = read_crowdhuman(path, tmp_path, on_error="skip")
    assert len(records) == 2 and stats.skipped_records == 1 and "bad.odgt:2" in stats.messages[0]


@pytest.mark.parametrize("line, message", [
    ('{"gtboxes": []}', "missing or empty 'ID'"),
    ('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3]}]}', "fbox must be 4 numbers"),
    ('{"ID": "a", "gtboxes": [{"tag": "person", "vbox": [1, 2, 3, 4]}]}', "missing 'fbox'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_records(tmp_path, line, message):
    path = tmp_path / "x.odgt"
    path.write_text(line + "\n")
    with pytest.raises(FormatError, match=rf"x\.odgt:1: .*{message}"):
        read_crowdhuman(path, tmp_path)


def test_missing_image(tmp_path):
    path = tmp_path / "a.odgt"
    write_odgt(path, _entries())
    _jpg(tmp_path / "Images" / "empty.jpg")
    with pytest.raises(MissingFileError, match=r"a\.odgt:1: image not found: .*273271,c9db000d5146c15\.jpg"):
        read_crowdhuman(path, tmp_path / "Images")
    records, stats = read_crowdhuman(path, tmp_path / "Images", on_error="skip")
    assert [r.image_id for r in records] == ["empty"] and stats.missing_images == 1


def test_writer_rejects_bad_entry(tmp_path):
    with pytest.raises(ValueError, match="entry 0"):
        write_odgt(tmp_path / "a.odgt", [{"gtboxes": []}])
    assert not (tmp_path / "a.odgt").exists()


def test_bad_ignore_flag(tmp_path):
    path = tmp_path / "x.odgt"
    path.write_text('{"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 2, 3, 4], "extra": {"ignore": "y"}}]}\n')
    with pytest.raises(FormatError, match=r"x\.odgt:1: gtboxes\[0\]: extra.ignore must be 0 or 1"):
        read_crowdhuman(path, tmp_path)
