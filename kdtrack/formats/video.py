"""Video files (Kinetics clips, synthetic videos) through OpenCV.

Frames are BGR ``uint8`` ``(H, W, 3)`` arrays, as OpenCV gives them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

FOURCC = "mp4v"  # MPEG-4 Part 2: encodable by every OpenCV build with FFmpeg


class VideoError(OSError):
    """A video that cannot be opened, written or decoded (the message names the file)."""


def write_video(path: str | os.PathLike, frames_bgr: Iterable[np.ndarray], fps: float) -> Path:
    """Encode BGR frames (all the same size) with ``mp4v``; temp file in the same folder, then rename."""
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name keeps the real extension: OpenCV picks the container from it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".mp4", dir=path.parent)
    os.close(fd)
    writer = None
    try:
        size = None
        count = 0
        for i, frame in enumerate(frames_bgr):
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"{path}: frame {i} must be uint8 (H, W, 3) BGR, got {frame.dtype} {frame.shape}")
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC), float(fps), size)
                if not writer.isOpened():
                    raise VideoError(f"{path}: OpenCV cannot open a {FOURCC} writer")
            elif (frame.shape[1], frame.shape[0]) != size:
                raise ValueError(f"{path}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"expected {size[0]}x{size[1]}")
            writer.write(np.ascontiguousarray(frame))
            count += 1
        if writer is None:
            raise ValueError(f"{path}: no frames to write")
        writer.release()
        writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _open(path: str | os.PathLike) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise VideoError(f"{path}: video file not found")
    capture = cv2.VideoCapture(os.fspath(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path}: OpenCV cannot open this video")
    return capture


def read_video_info(path: str | os.PathLike) -> tuple[int, float, int, int]:
    """``(num_frames, fps, width, height)`` from the container header (frame count as OpenCV reports it)."""
    capture = _open(path)
    try:
        num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    return num_frames, fps, width, height


def read_video_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Decode the frames at ``indices`` (0-based, any order, repeats allowed) or all frames.

    Consecutive indices are read sequentially; a jump seeks with
    ``CAP_PROP_POS_FRAMES``. An index past the end raises ``VideoError``.
    """
    capture = _open(path)
    try:
        if indices is None:
            frames = []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
            if not frames:
                raise VideoError(f"{path}: no decodable frames")
            return frames
        wanted = [int(i) for i in indices]
        if any(i < 0 for i in wanted):
            raise ValueError(f"{path}: negative frame index in {wanted}")
        decoded: dict[int, np.ndarray] = {}
        position = 0  # index of the frame the next read() returns
        for index in sorted(set(wanted)):
            if index != position:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                raise VideoError(f"{path}: cannot decode frame {index} (video too short or corrupt)")
            decoded[index] = frame
            position = index + 1
        return [decoded[i] for i in wanted]
    finally:
        capture.release()
