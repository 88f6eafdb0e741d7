"""Readers and writers of the real on-disk dataset formats (one module per format).

Every reader returns plain records plus a :class:`ReadStats`, raises
:class:`FormatError` naming ``file:line`` (or the record index) on malformed
input, or skips and counts it under ``on_error="skip"``.
"""

from kdtrack.formats.coco import read_coco_persons, write_coco
from kdtrack.formats.common import FormatError, MissingFileError, ReadStats, sanitize_boxes_xyxy
from kdtrack.formats.crowdhuman import odgt_box, read_crowdhuman, write_odgt
from kdtrack.formats.kinetics import KineticsClip, clip_relpath, read_kinetics, write_kinetics_csv
from kdtrack.formats.market1501 import ReidCrop, crop_name, parse_crop_name, read_market1501
from kdtrack.formats.mot import (
    SeqInfo,
    half_split,
    list_sequences,
    read_det,
    read_gt,
    read_mot_sequence,
    read_mot_sequence_with_stats,
    read_results,
    read_seqinfo,
    slice_rows_half,
    write_det,
    write_gt,
    write_results,
    write_seqinfo,
)
from kdtrack.formats.person_search import (
    PersonSearchImage,
    PersonSearchManifest,
    PersonSearchQuery,
    convert_cuhk_sysu,
    convert_prw,
    read_manifest,
    write_manifest,
)
from kdtrack.formats.video import VideoError, read_video_frames, read_video_info, write_video

__all__ = [
    "FormatError", "MissingFileError", "ReadStats", "sanitize_boxes_xyxy",
    "read_crowdhuman", "write_odgt", "odgt_box",
    "read_coco_persons", "write_coco",
    "KineticsClip", "clip_relpath", "read_kinetics", "write_kinetics_csv",
    "VideoError", "read_video_frames", "read_video_info", "write_video",
    "SeqInfo", "half_split", "list_sequences", "read_det", "read_gt", "read_mot_sequence",
    "read_mot_sequence_with_stats", "read_results", "read_seqinfo", "slice_rows_half",
    "write_det", "write_gt", "write_results", "write_seqinfo",
    "PersonSearchImage", "PersonSearchManifest", "PersonSearchQuery", "convert_cuhk_sysu",
    "convert_prw", "read_manifest", "write_manifest",
    "ReidCrop", "crop_name", "parse_crop_name", "read_market1501",
]
