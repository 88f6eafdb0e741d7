"""IDF stage 2 pseudo-labels: per-video DBSCAN (Ray Data vs scikit-learn), ids, quality, the job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from jobs import pseudo_label
from kdtrack.checkpoint import save_checkpoint
from kdtrack.config import load_config
from kdtrack.models import build_student
from kdtrack.pseudo_labels import (
    VideoDetections,
    clip_frame_indices,
    clustering_quality,
    global_pseudo_ids,
    match_to_truth,
    valid_trajectories,
)


def _synthetic_videos(rng: np.random.Generator, n_videos: int = 5, k: int = 16) -> list[VideoDetections]:
    """Videos with 2-4 tight clusters of unit vectors each plus a few scattered outliers."""
    videos = []
    for v in range(n_videos):
        centres = rng.normal(size=(int(rng.integers(2, 5)), k))
        points = [c + 0.05 * rng.normal(size=(int(rng.integers(5, 12)), k)) for c in centres]
        points.append(rng.normal(size=(3, k)))  # outliers
        emb = np.concatenate(points).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        n = len(emb)
        videos.append(VideoDetections(f"train/x/v{v}", rng.integers(1, 30, n), np.zeros((n, 4), np.float32),
                                      np.ones(n, np.float32), emb, 30))
    return videos


@pytest.mark.parametrize("engine", ["tasks", "ray_data"])
def test_ray_clustering_matches_sklearn_per_video(ray_session, engine: str) -> None:
    rng = np.random.default_rng(0)
    videos = _synthetic_videos(rng)
    cfg = load_config("tiny", ["pseudo.eps=0.1", "pseudo.min_samples=3", "pseudo.cluster_cpus=0.5",
                               f"pseudo.cluster_engine={engine}"])
    local = pseudo_label.cluster_videos(videos, cfg, use_ray=True)
    assert sorted(local) == sorted(v.video for v in videos)
    for v in videos:
        ref = DBSCAN(eps=0.1, min_samples=3, metric="cosine").fit_predict(v.embeddings)
        assert adjusted_rand_score(ref, local[v.video]) == 1.0 and ((ref < 0) == (local[v.video] < 0)).all()
        assert len(np.unique(ref[ref >= 0])) >= 2 and (ref < 0).any()  # the data really has clusters and outliers
    ids = global_pseudo_ids(local)
    seen: set[int] = set()
    for v in videos:
        mine = set(ids[v.video][ids[v.video] >= 0].tolist())
        assert not mine & seen  # a pseudo id never spans two videos
        seen |= mine
        assert ((ids[v.video] < 0) == (local[v.video] < 0)).all()
    assert seen == set(range(len(seen)))  # dense numbering
    assert pseudo_label.cluster_videos(videos, cfg, use_ray=False).keys() == local.keys()


def test_balanced_chunks_hand_example() -> None:
    # by hand: 9 -> A, 7 -> B, 5 -> C, 4 -> C (lightest, 5), 1 -> B (lightest, 7): A=9, C=9, B=8
    chunks = pseudo_label.balanced_chunks([4, 9, 5, 7, 1], 3)
    assert chunks == [[1], [2, 0], [3, 4]]  # totals 9, 9, 8: heaviest chunk first, every index once
    assert pseudo_label.balanced_chunks([3, 1], 5) == [[0], [1]]  # never an empty chunk
    assert pseudo_label.balanced_chunks([], 4) == []


def test_global_ids_hand_example() -> None:
    ids = global_pseudo_ids({"b": np.array([1, 0, -1]), "a": np.array([0, 0, 1, 2]), "c": np.array([-1, -1])})
    assert ids["a"].tolist() == [0, 0, 1, 2]  # sorted video order: a first
    assert ids["b"].tolist() == [4, 3, -1]
    assert ids["c"].tolist() == [-1, -1]


def test_match_to_truth_and_quality_hand_example() -> None:
    truth = np.array([  # frame, id, x, y, w, h, conf, class, vis
        [1, 7, 0, 0, 10, 20, 1, 1, 1], [1, 8, 50, 0, 10, 20, 1, 1, 1],
        [2, 7, 2, 0, 10, 20, 1, 1, 1], [2, 8, 52, 0, 10, 20, 1, 1, 1],
    ], np.float64)
    frames = np.array([1, 1, 2, 2, 2])
    boxes = np.array([[51, 0, 61, 20], [0, 0, 10, 20], [2, 1, 12, 21], [52, 0, 62, 20], [100, 0, 110, 20]], np.float32)
    matched = match_to_truth(frames, boxes, truth, 0.5)
    assert matched.tolist() == [8, 7, 7, 8, -1]  # the last box overlaps nobody
    # track 7 -> clusters {0, 0}, track 8 -> {1, -1}: purity 1, ARI with the outlier as a singleton
    q = clustering_quality(["v/7", "v/8", "v/7", "v/8"], [0, 1, 0, -1])
    true_codes = [0, 1, 0, 1]
    assert q["ari"] == pytest.approx(adjusted_rand_score(true_codes, [0, 1, 0, -100]))
    assert q["purity"] == 1.0 and q["outlier_fraction"] == 0.25
    # track 7: cluster 0 holds 2 of its 2 boxes and is all 7 -> recovered; track 8: cluster 1 holds 1 of 2 -> not
    assert q["trajectories_recovered"] == 0.5
    mixed = clustering_quality(["v/7", "v/8", "v/7", "v/8"], [1, 0, 0, -1])  # cluster 0 = {8, 7}: majority 1 of 2
    assert mixed["purity"] == pytest.approx(2 / 3)


def test_valid_trajectories_and_frame_sampling() -> None:
    frames = np.array([1, 2, 9, 10, 3, 4, 8])
    labels = np.array([0, 0, 0, 1, 1, 1, -1])  # cluster 0 spans both halves of 10 frames; cluster 1 too
    assert valid_trajectories(frames, labels, 10, 2) == 2
    assert valid_trajectories(frames[:3], labels[:3], 10, 2) == 1
    assert valid_trajectories(np.array([1, 2, 3]), np.array([0, 0, 0]), 10, 2) == 0  # first half only
    assert clip_frame_indices(10, 3) == [0, 3, 6, 9]
    assert clip_frame_indices(10, 1, max_frames=3) == [0, 4, 9]
    with pytest.raises(ValueError):
        clip_frame_indices(10, 0)


# --------------------------------------------------------------------------- the job

FAST = ["model.width=8", "model.head_conv=16", "model.embedding_dim=16", "decode.top_k=4"]
JOB = ["--set", "pseudo.score_threshold=0.0", "--set", "pseudo.max_frames=6", "--set", "pseudo.cpus_per_actor=0.5",
       "--set", "pseudo.eps=0.5", "--set", "pseudo.min_samples=2", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config("tiny", FAST)
    torch.manual_seed(0)
    model = build_student(cfg.model)
    model.heads["size"][-1].bias.data.fill_(8.0)  # untrained: every peak gets a valid 16x16 box
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model=model, config=cfg, iteration=5)


def _videos_with_bad_clips(tiny_world: Path, tmp_path: Path) -> Path:
    """A copy of the tiny world's Kinetics train split (clips linked) with one clip corrupt and one absent."""
    src = tiny_world / "kinetics"
    root = tmp_path / "kinetics"
    shutil.copytree(src, root, symlinks=True)
    clips = sorted((root / "train").rglob("*.mp4"))
    assert len(clips) >= 4
    clips[0].write_bytes(b"not a video")  # undecodable
    clips[1].unlink()  # listed in train.csv, missing (a dead link)
    return root


def test_job_end_to_end_resume_and_bad_clips(ray_session, tiny_world: Path, tmp_path: Path, checkpoint: Path,
                                             mlflow_uri: str, capsys) -> None:
    videos = _videos_with_bad_clips(tiny_world, tmp_path)
    out = tmp_path / "labels"
    args = ["--checkpoint", str(checkpoint), "--videos", str(videos), "--out", str(out),
            "--truth", str(tiny_world / "kinetics_truth"), "--mlflow-uri", mlflow_uri, *JOB]
    summary = pseudo_label.main(args)
    n_listed = sum(1 for _ in open(videos / "train.csv")) - 1
    assert summary["videos"] == n_listed - 1 and summary["videos_missing"] == 1
    assert summary["videos_bad"] == 1 and summary["bad_examples"][0]["status"] == "undecodable"
    assert summary["videos_clustered"] == n_listed - 2 and summary["boxes"] > 0
    labels = pq.read_table(out / "labels.parquet").to_pandas()
    assert list(labels.columns) == ["video", "frame", "x1", "y1", "x2", "y2", "score", "pseudo_id"]
    assert len(labels) == summary["boxes"] and labels["frame"].min() >= 1
    per_id_videos = labels[labels.pseudo_id >= 0].groupby("pseudo_id")["video"].nunique()
    assert (per_id_videos == 1).all()  # unique across videos
    rows = pq.read_table(out / "videos.parquet").to_pylist()
    assert {r["status"] for r in rows} == {"ok", "undecodable"}
    assert json.loads((out / "summary.json").read_text())["quality"]["truth_boxes"] > 0
    assert summary["mlflow_run_id"]

    # resume: finished clips are not run again (their parts stay untouched); the bad one is retried
    parts = sorted((out / "parts").rglob("*.npz"))
    assert len(parts) == n_listed - 2
    stamps = [p.stat().st_mtime_ns for p in parts]
    capsys.readouterr()
    again = pseudo_label.main(args[:-1] + ["--set", "pseudo.eps=0.2", "--no-ray", "--no-progress"])
    assert f"{n_listed - 2} done before (resumed), 1 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in sorted((out / "parts").rglob("*.npz"))] == stamps
    assert again["boxes"] == summary["boxes"] and again["pseudo"]["eps"] == 0.2

    # another frame sampling over the same parts is refused, naming the part
    with pytest.raises(pseudo_label.InputError, match="parts"):
        pseudo_label.main(args + ["--set", "pseudo.frame_stride=2", "--no-ray"])


def test_cli_exit_codes(tmp_path: Path, checkpoint: Path, tiny_world: Path, capsys) -> None:
    assert pseudo_label.cli(["--checkpoint", str(tmp_path / "nope.pt"), "--videos", str(tiny_world / "kinetics"),
                             "--out", str(tmp_path / "o")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert pseudo_label.cli(["--checkpoint", str(checkpoint), "--videos", str(tiny_world / "kinetics"),
                             "--out", str(tmp_path / "o"), "--set", "pseudo.epsilon=1"]) == 2
    assert "pseudo.epsilon" in capsys.readouterr().err
    empty = tmp_path / "empty_kinetics"
    empty.mkdir()
    (empty / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    assert pseudo_label.cli(["--checkpoint", str(checkpoint), "--videos", str(empty), "--out", str(tmp_path / "o2"),
                             "--no-ray", "--no-progress"]) == 1


def test_a_clip_without_any_detection_is_counted_not_failed(tiny_world: Path, tmp_path: Path, checkpoint: Path) -> None:
    """Nothing above the score threshold in any frame: the clip is 'no_detections' (counted), not a failure."""
    out = tmp_path / "none"
    args = ["--checkpoint", str(checkpoint), "--videos", str(tiny_world / "kinetics"), "--out", str(out),
            "--set", "pseudo.score_threshold=0.99", "--set", "pseudo.max_frames=2", "--max-videos", "2",
            "--no-ray", "--no-progress"]
    assert pseudo_label.cli(args) == 1  # nothing at all to cluster: exit 1, summary written
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos_no_detections"] == 2 and summary["videos_bad"] == 0
