"""Shared reader pieces: box sanitising counts, ReadStats bookkeeping, error policy."""

import numpy as np
import pytest

from kdtrack.formats.common import (
    MAX_MESSAGES,
    FormatError,
    MissingFileError,
    ReadStats,
    check_on_error,
    image_size,
    sanitize_boxes_xyxy,
)


def test_sanitize_clips_and_drops_with_counts():
    # image 64 x 32 (w x h)
    boxes = np.array([
        [10, 5, 20, 15],    # inside: kept as is
        [-5, 2, 10, 40],    # outside left and bottom: clipped to [0, 2, 10, 32]
        [30, 10, 30, 20],   # zero width: dropped
        [70, 0, 80, 10],    # entirely right of the image: zero width after clipping -> dropped
        [5, 5, 1, np.nan],  # non-finite: dropped
    ], np.float32)
    stats = ReadStats()
    clipped, keep = sanitize_boxes_xyxy(boxes, 64, 32, stats)
    assert keep.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(clipped[1], [0, 2, 10, 32])
    np.testing.assert_allclose(clipped[0], [10, 5, 20, 15])
    assert stats.boxes_clipped == 1 and stats.boxes_dropped == 3


def test_sanitize_empty():
    stats = ReadStats()
    clipped, keep = sanitize_boxes_xyxy(np.zeros((0, 4)), 10, 10, stats)
    assert clipped.shape == (0, 4) and keep.shape == (0,)
    assert stats.boxes_clipped == 0 and stats.boxes_dropped == 0


def test_stats_merge_and_skip_policy():
    a, b = ReadStats(records=2, boxes_clipped=1), ReadStats(records=3, boxes_dropped=4)
    b.skip(FormatError("f.txt:3: bad"), "skip")
    b.missing(MissingFileError("f.txt:4: image not found: x.jpg"), "skip")
    a.merge(b)
    assert (a.records, a.boxes_clipped, a.boxes_dropped, a.skipped_records, a.missing_images) == (5, 1, 4, 1, 1)
    assert a.messages == ["f.txt:3: bad", "f.txt:4: image not found: x.jpg"]
    with pytest.raises(FormatError, match="f.txt:9"):
        a.skip(FormatError("f.txt:9: bad"), "raise")
    for i in range(MAX_MESSAGES + 5):
        a.note(str(i))
    assert len(a.messages) == MAX_MESSAGES


def test_missing_file_error_is_both_kinds():
    err = MissingFileError("x")
    assert isinstance(err, FormatError) and isinstance(err, FileNotFoundError)


def test_on_error_choices():
    check_on_error("skip")
    with pytest.raises(ValueError, match="on_error"):
        check_on_error("ignore")


def test_image_size_reads_header(tmp_path):
    import cv2

    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.zeros((32, 64, 3), np.uint8))
    assert image_size(path) == (64, 32)
