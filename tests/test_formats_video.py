"""OpenCV video writing/reading: frame count, fps, size, seeking, clear errors."""

import numpy as np
import pytest

from kdtrack.formats import VideoError, read_video_frames, read_video_info, write_video


def _frames(n=6, width=64, height=32):
    # frame i is a flat grey of level 40*i: easy to recognise after lossy mp4v coding
    return [np.full((height, width, 3), 40 * i, np.uint8) for i in range(n)]


def test_round_trip_and_seek(tmp_path):
    path = tmp_path / "clips" / "a.mp4"
    write_video(path, iter(_frames()), fps=12.5)
    assert [p.name for p in path.parent.iterdir()] == ["a.mp4"]  # no temp file left
    assert read_video_info(path) == (6, 12.5, 64, 32)
    frames = read_video_frames(path)
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3)
    levels = [float(f.mean()) for f in read_video_frames(path, [4, 1, 1, 5])]
    np.testing.assert_allclose(levels, [160, 40, 40, 200], atol=6)  # lossy coding: a few grey levels


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path, _frames(3), fps=10)
    with pytest.raises(VideoError, match=r"a\.mp4: cannot decode frame 7"):
        read_video_frames(path, [0, 7])
    with pytest.raises(VideoError, match=r"missing\.mp4: video file not found"):
        read_video_info(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        read_video_frames(broken)
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "b.mp4", [np.zeros((32, 64, 3), np.uint8), np.zeros((16, 64, 3), np.uint8)], fps=10)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "c.mp4", [], fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "broken.mp4"]
