"""Market-1501 crop names: build/parse, junk and distractor filtering, malformed names."""

import cv2
import numpy as np
import pytest

from kdtrack.formats import FormatError, crop_name, parse_crop_name, read_market1501


def test_name_round_trip():
    assert crop_name(2, 1, 1, 451, 3) == "0002_c1s1_000451_03.jpg"
    assert crop_name(-1, 6, 2, 5, 0) == "-1_c6s2_000005_00.jpg"  # junk as written by Market
    crop = parse_crop_name("bounding_box_train/1501_c6s4_001902_01.jpg")
    assert (crop.pid, crop.camera, crop.sequence, crop.frame, crop.index) == (1501, 6, 4, 1902, 1)
    assert crop.path == "bounding_box_train/1501_c6s4_001902_01.jpg"
    assert parse_crop_name("-1_c1s1_000401_03.jpg").is_junk
    assert parse_crop_name("0000_c1s1_000151_01.jpg").is_distractor
    with pytest.raises(FormatError, match="0002_c1_000451_03.jpg: not a Market-1501 crop name"):
        parse_crop_name("0002_c1_000451_03.jpg")


def test_read_split_filters_and_errors(tmp_path):
    folder = tmp_path / "bounding_box_test"
    folder.mkdir()
    names = ["0002_c1s1_000451_03.jpg", "-1_c1s1_000401_03.jpg", "0000_c2s1_000151_01.jpg",
             "0002_c3s1_000551_01.jpg"]
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros((16, 8, 3), np.uint8))
    (folder / "Thumbs.db").write_bytes(b"x")  # shipped in the real zip: ignored
    crops, stats = read_market1501(tmp_path, "bounding_box_test")
    # sorted by name: "-1_..." < "0000_..." < "0002_c1" < "0002_c3"; junk filtered by default
    assert [c.pid for c in crops] == [0, 2, 2] and stats.filtered_records == 1 and stats.records == 3
    crops, _ = read_market1501(tmp_path, "bounding_box_test", keep_junk=True, keep_distractors=False)
    assert [c.pid for c in crops] == [-1, 2, 2]
    (folder / "bad_name.jpg").write_bytes(b"x")
    with pytest.raises(FormatError, match=r"bad_name\.jpg"):
        read_market1501(tmp_path, "bounding_box_test")
    crops, stats = read_market1501(tmp_path, "bounding_box_test", on_error="skip")
    assert len(crops) == 3 and stats.skipped_records == 1
    with pytest.raises(ValueError, match="split"):
        read_market1501(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="query"):
        read_market1501(tmp_path, "query")
