"""MOT17 layout: seqinfo, gt/det/results round trips, half split, training records, bad lines."""

import cv2
import numpy as np
import pytest

from kdtrack.formats import (
    FormatError,
    MissingFileError,
    ReadStats,
    SeqInfo,
    half_split,
    list_sequences,
    read_det,
    read_gt,
    read_mot_sequence,
    read_results,
    read_seqinfo,
    slice_rows_half,
    write_det,
    write_gt,
    write_results,
    write_seqinfo,
)
from kdtrack.formats.mot import read_mot_sequence_with_stats

# MOT17 (FRCNN) val-half lengths from FORMATS.md and the sequence lengths N they come from:
# val = N - N//2 - 1, e.g. 600 - 300 - 1 = 299.
MOT17_LENGTHS = {"02": (600, 299), "04": (1050, 524), "05": (837, 418), "09": (525, 262),
                 "10": (654, 326), "11": (900, 449), "13": (750, 374)}


@pytest.mark.parametrize("seq", sorted(MOT17_LENGTHS))
def test_half_split_matches_mot17_val_lengths(seq):
    n, val_len = MOT17_LENGTHS[seq]
    train, val = half_split(n)
    assert len(val) == val_len
    assert train[0] == 1 and train[-1] == n // 2 + 1 and val[0] == n // 2 + 2 and val[-1] == n
    assert len(train) + len(val) == n


def test_half_split_small_and_renumbering():
    # N = 5: train 1..3 (5//2+1 = 3), val 4..5 renumbered 1..2
    assert (list(half_split(5)[0]), list(half_split(5)[1])) == ([1, 2, 3], [4, 5])
    rows = np.array([[f, 1, 0, 0, 1, 1, 1, 1, 1] for f in range(1, 6)], np.float64)
    val = slice_rows_half(rows, 5, "val_half")
    assert val[:, 0].tolist() == [1, 2]
    assert slice_rows_half(rows, 5, "train_half")[:, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        half_split(1)


def test_seqinfo_round_trip_and_missing_key(tmp_path):
    info = SeqInfo("MOT17-02-FRCNN", 30, 600, 1920, 1080)
    write_seqinfo(tmp_path, info)
    assert "[Sequence]\nname=MOT17-02-FRCNN\nimDir=img1\nframeRate=30\nseqLength=600" in \
        (tmp_path / "seqinfo.ini").read_text()
    assert read_seqinfo(tmp_path) == info
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=x\nframeRate=30\nimWidth=10\nimHeight=10\n")
    with pytest.raises(FormatError, match=r"seqinfo\.ini: \[Sequence\] missing key 'seqLength'"):
        read_seqinfo(tmp_path)
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=x\nframeRate=30\nseqLength=ten\nimWidth=1\nimHeight=1\n")
    with pytest.raises(FormatError, match="seqLength='ten' is not a int"):
        read_seqinfo(tmp_path)


def test_text_round_trips(tmp_path):
    gt = np.array([[1, 3, 912, 484, 97, 109, 0, 7, 1], [2, 3, 10.5, 20.25, 30, 40, 1, 1, 0.86957]])
    det = np.array([[1, -1, 1359.1, 413.27, 120.26, 362.77, 2.3092, -1, -1, -1]])
    res = np.array([[1, 5, 1.5, 2, 3, 4, 0.9, -1, -1, -1], [3, 6, 0, 0, 1, 1, 1, -1, -1, -1]])
    write_gt(tmp_path / "gt.txt", gt)
    write_det(tmp_path / "det.txt", det)
    write_results(tmp_path / "MOT17-02-FRCNN.txt", res)
    assert (tmp_path / "gt.txt").read_text().splitlines()[0] == "1,3,912,484,97,109,0,7,1"
    assert (tmp_path / "det.txt").read_text() == "1,-1,1359.1,413.27,120.26,362.77,2.3092,-1,-1,-1\n"
    np.testing.assert_allclose(read_gt(tmp_path / "gt.txt"), gt)
    np.testing.assert_allclose(read_det(tmp_path / "det.txt"), det)
    np.testing.assert_allclose(read_results(tmp_path / "MOT17-02-FRCNN.txt"), res)
    write_results(tmp_path / "empty.txt", np.zeros((0, 10)))
    assert read_results(tmp_path / "empty.txt").shape == (0, 10)
    with pytest.raises(ValueError, match=r"\(N, 9\)"):
        write_gt(tmp_path / "x.txt", det)
    with pytest.raises(ValueError, match="integers"):
        write_gt(tmp_path / "x.txt", np.array([[1.5, 3, 0, 0, 1, 1, 1, 1, 1]]))


def test_malformed_lines_name_file_and_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,0,0,1,1,1,1,1\n\n1,2,0,0,1,1,1,1\n1,x,0,0,1,1,1,1,1\n0,1,0,0,1,1,1,1,1\n2,1,0,0,1,1,1,1,1\n")
    with pytest.raises(FormatError, match=r"gt\.txt:3: 8 columns, expected 9"):
        read_gt(path)
    stats = ReadStats()
    rows = read_gt(path, on_error="skip", stats=stats)
    assert rows[:, 0].tolist() == [1, 2] and stats.skipped_records == 3
    assert ["gt.txt:4: non-numeric" in m for m in stats.messages] == [False, True, False]
    assert "gt.txt:5: frame must be an integer >= 1" in stats.messages[2]
    with pytest.raises(FormatError, match="9 columns, expected 10"):
        read_results(tmp_path / "gt.txt")
    with pytest.raises(MissingFileError, match="nope.txt"):
        read_det(tmp_path / "nope.txt")


def _sequence(root, name="MOT17-02-FRCNN", n=5, width=64, height=32):
    seq = root / name
    write_seqinfo(seq, SeqInfo(name, 30, n, width, height))
    for f in range(1, n + 1):
        (seq / "img1").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(seq / "img1" / f"{f:06d}.jpg"), np.zeros((height, width, 3), np.uint8))
    gt = np.array([
        # frame, id, x, y, w, h, consider, class, visibility
        [1, 1, 2, 2, 10, 20, 1, 1, 0.9],     # box, id 1
        [1, 2, 50, 10, 20, 30, 1, 1, 0.5],   # box, id 2, clipped to xyxy [50,10,64,32]
        [1, 3, 0, 0, 5, 5, 1, 1, 0.1],       # visibility 0.1 < 0.25 -> ignore
        [1, 4, 30, 0, 5, 5, 0, 1, 1.0],      # consider 0 -> ignore
        [1, 5, 20, 0, 5, 5, 1, 7, 1.0],      # static person (distractor) -> ignore
        [1, 6, 10, 0, 5, 5, 1, 3, 1.0],      # car -> dropped
        [4, 1, 3, 2, 10, 20, 1, 1, 0.8],
        [5, 1, 4, 2, 10, 20, 1, 1, 0.7],
        [5, 2, 70, 0, 5, 5, 1, 1, 1.0],      # outside the image -> dropped
    ], np.float64)
    write_gt(seq / "gt" / "gt.txt", gt)
    return seq


def test_read_sequence_all_and_halves(tmp_path):
    seq = _sequence(tmp_path)
    info, records, stats = read_mot_sequence_with_stats(seq)
    assert info.seq_length == 5 and len(records) == 5
    r1 = records[0]
    assert r1.image_path.endswith("MOT17-02-FRCNN/img1/000001.jpg") and r1.extra["frame"] == 1
    np.testing.assert_allclose(r1.boxes_xyxy, [[2, 2, 12, 22], [50, 10, 64, 32]])
    assert r1.ids.tolist() == [1, 2]
    np.testing.assert_allclose(r1.visibility, [0.9, 0.5])
    np.testing.assert_allclose(r1.ignore_boxes_xyxy, [[0, 0, 5, 5], [30, 0, 35, 5], [20, 0, 25, 5]])
    assert records[1].num_boxes == 0 and records[4].ids.tolist() == [1]
    assert (stats.boxes_clipped, stats.boxes_dropped, stats.records) == (1, 1, 5)
    # N = 5: val-half = frames 4, 5 renumbered 1, 2
    _, val = read_mot_sequence(seq, split="val_half")
    assert [(r.extra["frame"], r.extra["split_frame"]) for r in val] == [(4, 1), (5, 2)]
    np.testing.assert_allclose(val[0].boxes_xyxy, [[3, 2, 13, 22]])
    _, train = read_mot_sequence(seq, split="train_half", min_visibility=0.0)
    assert [r.extra["frame"] for r in train] == [1, 2, 3] and train[0].ids.tolist() == [1, 2, 3]


def test_sequence_missing_image_and_listing(tmp_path):
    seq = _sequence(tmp_path / "train")
    _sequence(tmp_path / "train", name="MOT17-02-DPM", n=2)
    (tmp_path / "train" / "notaseq").mkdir()
    assert [p.name for p in list_sequences(tmp_path / "train")] == ["MOT17-02-DPM", "MOT17-02-FRCNN"]
    assert [p.name for p in list_sequences(tmp_path / "train", detector="FRCNN")] == ["MOT17-02-FRCNN"]
    (seq / "img1" / "000003.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"frame 3: image not found: .*img1/000003\.jpg"):
        read_mot_sequence(seq)
    _, records = read_mot_sequence(seq, on_error="skip")
    assert [r.extra["frame"] for r in records] == [1, 2, 4, 5]
    _, records = read_mot_sequence(seq, check_images=False)
    assert len(records) == 5
    with pytest.raises(ValueError, match="split"):
        read_mot_sequence(seq, split="val")


def test_sequence_without_gt_has_no_boxes(tmp_path):
    seq = _sequence(tmp_path, n=2)
    (seq / "gt" / "gt.txt").unlink()
    _, records = read_mot_sequence(seq)
    assert [r.num_boxes for r in records] == [0, 0]


def test_dedupe_detector_copies(tmp_path):
    """MOT17's three per-detector copies of a sequence -> one; other names untouched; the data.py alias agrees."""
    from kdtrack.data.dataset import _dedupe_mot_copies
    from kdtrack.formats.mot import dedupe_detector_copies, sequence_base_name

    names = ["MOT17-02-DPM", "MOT17-02-FRCNN", "MOT17-02-SDP", "MOT17-04-DPM", "MOT17-04-FRCNN", "MOT17-04-SDP",
             "MOT20-01", "MY-SEQ-XYZ"]
    dirs = [tmp_path / n for n in names]
    assert sequence_base_name("MOT17-02-FRCNN") == "MOT17-02" and sequence_base_name("MOT20-01") == "MOT20-01"
    assert [d.name for d in dedupe_detector_copies(dirs)] == ["MOT17-02-DPM", "MOT17-04-DPM", "MOT20-01",
                                                                "MY-SEQ-XYZ"]
    assert [d.name for d in dedupe_detector_copies(dirs, "FRCNN")] == ["MOT17-02-FRCNN", "MOT17-04-FRCNN",
                                                                       "MOT20-01", "MY-SEQ-XYZ"]
    assert _dedupe_mot_copies(dirs) == dedupe_detector_copies(dirs)
    with pytest.raises(MissingFileError, match="MOT17-04 has no -SDP copy"):
        dedupe_detector_copies([d for d in dirs if d.name != "MOT17-04-SDP"], "SDP")
    with pytest.raises(ValueError, match="detector must be one of"):
        dedupe_detector_copies(dirs, "YOLO")
