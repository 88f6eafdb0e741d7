"""Kinetics csv + clip layout: round trip, test csv without labels, dead links, bad rows."""

import numpy as np
import pytest

from kdtrack.formats import (
    FormatError,
    KineticsClip,
    MissingFileError,
    clip_relpath,
    read_kinetics,
    write_kinetics_csv,
    write_video,
)


def test_clip_relpath():
    assert clip_relpath("train", "abseiling", "0347ZoDXyP0", 5, 15) == "train/abseiling/0347ZoDXyP0_000005_000015.mp4"
    assert clip_relpath("test", "", "abc", 0, 10) == "test/abc_000000_000010.mp4"


def test_round_trip_with_real_clips(tmp_path):
    clips = [KineticsClip("air drumming", "yt-a_B", 12, 22, "train", ""),
             KineticsClip("abseiling", "yt2", 0, 10, "train", "")]
    csv_path = tmp_path / "train.csv"
    write_kinetics_csv(csv_path, clips)
    assert csv_path.read_text().splitlines()[0] == "label,youtube_id,time_start,time_end,split"
    for c in clips:
        write_video(tmp_path / clip_relpath(c.split, c.label, c.youtube_id, c.time_start, c.time_end),
                    [np.zeros((32, 64, 3), np.uint8)] * 2, fps=5)
    read, stats = read_kinetics(csv_path, tmp_path)
    assert [(c.label, c.youtube_id, c.time_start, c.time_end, c.split) for c in read] == \
        [(c.label, c.youtube_id, c.time_start, c.time_end, c.split) for c in clips]
    assert read[0].path == str(tmp_path / "train/air drumming/yt-a_B_000012_000022.mp4")
    assert stats.records == 2


def test_test_csv_without_label_and_extra_column(tmp_path):
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("youtube_id,time_start,time_end,split,is_cc\nabc,3,13,test,0\n")
    clips, _ = read_kinetics(csv_path, tmp_path, check_files=False)
    assert clips[0].label == "" and clips[0].path == str(tmp_path / "test/abc_000003_000013.mp4")


def test_dead_links_reported_or_counted(tmp_path):
    csv_path = tmp_path / "val.csv"
    write_kinetics_csv(csv_path, [KineticsClip("x", "gone", 1, 11, "val", "")])
    with pytest.raises(MissingFileError, match=r"val\.csv:2: clip not found: .*val/x/gone_000001_000011\.mp4"):
        read_kinetics(csv_path, tmp_path)
    clips, stats = read_kinetics(csv_path, tmp_path, on_error="skip")
    assert clips == [] and stats.missing_images == 1


def test_bad_rows_and_missing_columns(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n"
                        "a,id1,0,10,train\n"
                        "a,id2,zero,10,train\n"   # line 3: non-numeric
                        "a,id3,10,5,train\n"      # line 4: end before start
                        "a,id4,0,10\n")           # line 5: missing a field
    with pytest.raises(FormatError, match=r"bad\.csv:3: time_start must be a number"):
        read_kinetics(csv_path, tmp_path, check_files=False)
    clips, stats = read_kinetics(csv_path, tmp_path, check_files=False, on_error="skip")
    assert [c.youtube_id for c in clips] == ["id1"] and stats.skipped_records == 3
    assert [m.split(":")[1] for m in stats.messages] == ["3", "4", "5"]
    csv_path.write_text("label,youtube_id,start,end,split\n")
    with pytest.raises(FormatError, match=r"bad\.csv:1: missing column\(s\) time_start, time_end"):
        read_kinetics(csv_path, tmp_path)
