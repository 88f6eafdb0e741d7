"""The model-driven MOT path: letterbox -> network -> decode -> tracker -> MOTChallenge files -> metrics.

An *oracle* network that emits the CenterNet encoding of each frame's ground
truth (and a one-hot identity embedding per track) must track the synthetic
sequence almost perfectly: this checks that letterbox, targets, decode, the
tracker and the metrics agree on coordinates and frame numbering end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from kdtrack.config import load_config
from kdtrack.formats.mot import list_sequences, read_gt, read_seqinfo, slice_rows_half, split_frames
from kdtrack.inference import Detector, track_sequence
from kdtrack.data.letterbox import letterbox_transform
from kdtrack.metrics.mot import evaluate_sequence, summarize_sequences
from kdtrack.data.targets import encode_targets

EMBED_DIM = 64


class OracleNet(nn.Module):
    """Replays precomputed head outputs, one frame per forward call."""

    def __init__(self, outputs: list[dict[str, torch.Tensor]]):
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.outputs[self.calls]
        self.calls += 1
        assert tuple(images.shape[-2:]) == tuple(4 * d for d in out["heatmap"].shape[-2:])
        return out


def oracle_outputs(gt_rows: np.ndarray, frames, orig_wh, input_hw) -> list[dict[str, torch.Tensor]]:
    """CenterNet-encoded gt per frame: logits from the gaussian heatmap, exact size/offset maps."""
    tf = letterbox_transform(orig_wh[0], orig_wh[1], input_hw[1], input_hw[0])
    h, w = input_hw[0] // 4, input_hw[1] // 4
    outputs = []
    for frame in frames:
        rows = gt_rows[(gt_rows[:, 0] == frame) & (gt_rows[:, 7] == 1) & (gt_rows[:, 6] != 0)]
        boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], 1) if len(rows) else np.zeros((0, 4))
        ids = rows[:, 1].astype(np.int64)
        t = encode_targets(tf.boxes_to_letterbox(boxes), ids, None, input_hw, size_channels=4)
        heat = t["heatmap"].clamp(1e-4, 1 - 1e-4)
        size = torch.zeros(1, 4, h * w)
        offset = torch.zeros(1, 2, h * w)
        emb = torch.full((1, EMBED_DIM, h * w), 1e-3)
        m = t["mask"]
        idx = t["index"][m]
        size[0, :, idx] = t["size"][m].T
        offset[0, :, idx] = t["offset"][m].T
        emb[0, t["ids"][m] % EMBED_DIM, idx] = 1.0
        outputs.append({
            "heatmap": torch.logit(heat)[None],
            "size": size.reshape(1, 4, h, w),
            "offset": offset.reshape(1, 2, h, w),
            "embedding": emb.reshape(1, EMBED_DIM, h, w),
        })
    return outputs


@pytest.mark.parametrize("split", ["all", "val_half"])
def test_oracle_network_tracks_synthetic_sequence(tiny_world: Path, split: str):
    seq_dir = list_sequences(tiny_world / "MOT17" / "train")[0]
    info = read_seqinfo(seq_dir)
    gt = read_gt(seq_dir / "gt" / "gt.txt")
    frames = list(split_frames(info.seq_length, split))
    cfg = load_config("tiny")
    input_hw = (cfg.model.input_height, cfg.model.input_width)
    net = OracleNet(oracle_outputs(gt, frames, (info.im_width, info.im_height), input_hw))
    run = track_sequence(Detector(net, cfg, torch.device("cpu")), seq_dir, cfg.tracker, split=split)
    assert net.calls == len(frames) == run.num_frames
    assert run.rows[:, 0].min() == 1 and run.rows[:, 0].max() <= len(frames)

    half = "val" if split == "val_half" else "full"
    gt_split = slice_rows_half(gt, info.seq_length, "val_half") if half == "val" else gt
    ev = evaluate_sequence(info.name, gt_split, run.rows, len(frames), benchmark="MOT17")
    m = summarize_sequences([ev])["combined"]
    # Perfect detections and identities: the only misses are the tracker's one-frame
    # confirmation delay for tracks born after the first frame and boxes that the
    # output filter (w/h > 1.6, area <= 100) drops, so MOTA stays high and no id switches.
    assert m["MOTA"] > 0.93, m
    assert m["IDs"] == 0, m
    assert m["FP"] <= 2, m
    assert m["MOTP"] > 0.9, m  # boxes come back through letterbox + decode almost exactly


def test_evaluate_mot_job_from_shell(tiny_world: Path, tmp_path: Path, mlflow_uri: str):
    """`python -m jobs.evaluate mot --checkpoint ...` writes results, metrics.json and logs to MLflow."""
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_student

    torch.manual_seed(0)
    cfg = load_config("tiny")
    ckpt = save_checkpoint(tmp_path / "ckpt", model=build_student(cfg.model), config=cfg)
    out = tmp_path / "eval" / "metrics.json"
    cmd = [sys.executable, "-m", "jobs.evaluate", "mot", "--checkpoint", str(ckpt),
           "--data-root", str(tiny_world / "MOT17" / "train"), "--half", "val", "--no-ray",
           "--out", str(out), "--mlflow-uri", mlflow_uri, "--experiment", "eval-test",
           "--set", "eval.render_frames=2", "--association", "boxes"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "COMBINED" in proc.stdout and "association" in proc.stdout
    metrics = json.loads(out.read_text())
    seqs = [d.name for d in list_sequences(tiny_world / "MOT17" / "train")]
    assert sorted(metrics["sequences"]) == sorted(seqs)
    for seq in seqs:
        assert (out.parent / "results" / f"{seq}.txt").exists()
    # an untrained network still gets every gt box counted as a miss: nothing skipped
    num_gt = sum(metrics["sequences"][s]["num_gt"] for s in seqs)
    assert metrics["combined"]["num_gt"] == num_gt > 0
    assert metrics["combined"]["network_fps"] > 0 and metrics["combined"]["association_fps"] > 0
    assert len(list((out.parent / "frames").glob("*.jpg"))) == 2 * len(seqs)

    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["eval-test"])
    assert len(runs) == 1
    assert "metrics.MOT17-val/MOTA" in runs.columns
    assert runs["metrics.MOT17-val/num_gt"].iloc[0] == num_gt
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    run_id = runs["run_id"].iloc[0]
    logged = {a.path for a in client.list_artifacts(run_id, "eval/MOT17-val")}
    assert {"eval/MOT17-val/metrics.json", "eval/MOT17-val/results", "eval/MOT17-val/frames"} <= logged
    frames = client.list_artifacts(run_id, "eval/MOT17-val/frames")
    assert len(frames) == 2 * len(seqs)


def test_two_step_tracking_embeds_detections_with_the_teacher(tiny_world: Path, tmp_path: Path):
    """KDMOT 'two-step': detected boxes are embedded by the Re-ID teacher, not the student head."""
    from jobs._inference_pool import InferenceWorker, ModelHandle
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.config import config_to_dict
    from kdtrack.models import build_student, build_teacher

    torch.manual_seed(0)
    cfg = load_config("tiny", ["decode.score_threshold=0.0", "decode.top_k=5", "tracker.min_score=0.0",
                               "tracker.det_thresh=0.0", "tracker.min_box_area=0.0",
                               "tracker.max_aspect_ratio=100.0"])
    model = build_student(cfg.model)
    model.heads["size"][-1].bias.data.fill_(8.0)  # untrained: give every peak a valid 16x16 box
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=cfg)
    teacher_path = tmp_path / "teacher.pt"
    torch.save(build_teacher(cfg.teacher).state_dict(), teacher_path)
    seq_dir = list_sequences(tiny_world / "MOT17" / "train")[0]
    calls = []

    import kdtrack.inference as inference

    original = inference.teacher_embeddings

    def spy(teacher, images, boxes_list, **kw):
        out = original(teacher, images, boxes_list, **kw)
        calls.append((len(boxes_list[0]), out[0].shape))
        return out

    inference.teacher_embeddings = spy
    try:
        worker = InferenceWorker(config_to_dict(cfg), embedder="teacher", teacher_checkpoint=str(teacher_path),
                                 device="cpu")
        run = worker.track(ModelHandle(str(ckpt)), str(seq_dir), "val", 0)
    finally:
        inference.teacher_embeddings = original
    # the teacher embedded the (up to 5) detections of every frame with its own feature size
    teacher_dim = build_teacher(cfg.teacher).eval().embed(torch.zeros(1, 3, cfg.teacher.crop_height,
                                                               cfg.teacher.crop_width)).shape[1]
    assert len(calls) == run["frames"] > 0
    assert all(shape == (n, teacher_dim) for n, shape in calls) and teacher_dim != cfg.model.embedding_dim
    assert len(run["rows"]) > 0 and run["evaluation"].name == seq_dir.name  # tracked and scored, no file written
    assert run["model_builds"] == 1 and not list(tmp_path.glob("*.txt"))


def test_person_search_inputs_from_checkpoint(tiny_world: Path, tmp_path: Path):
    """Model-driven person search: every test image detected and embedded, one embedding per query."""
    from jobs.evaluate import person_search_inputs_from_checkpoint, score_person_search
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.models import build_student

    torch.manual_seed(0)
    cfg = load_config("tiny", ["decode.score_threshold=0.0", "decode.top_k=20"])
    model = build_student(cfg.model)
    model.heads["size"][-1].bias.data.fill_(8.0)  # untrained: give every peak a valid 16x16 box
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=cfg)
    manifest_path = tiny_world / "person_search" / "manifest.json"
    queries, gallery = person_search_inputs_from_checkpoint(ckpt, manifest_path, cfg, use_ray=False)
    manifest = read_manifest(manifest_path)
    assert set(gallery) == {im.file_name for im in manifest.images if im.split == "test"}
    assert len(queries) == len(manifest.queries)
    for q in queries:
        assert np.linalg.norm(q.embedding) == pytest.approx(1.0, abs=1e-5)
        assert q.embedding.shape == (cfg.model.embedding_dim,)
    some = next(iter(gallery.values()))
    assert len(some.boxes_xyxy) == 20 and some.embeddings.shape == (20, cfg.model.embedding_dim)
    size = int(next(iter(manifest.queries[0].galleries)))
    metrics = score_person_search(queries, gallery, size, cfg.eval)
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["num_queries"] == len(queries)


def test_inference_gpus_auto_and_explicit():
    from dataclasses import replace

    from jobs._inference_pool import inference_gpus
    from kdtrack.config import EvalConfig

    assert inference_gpus(replace(EvalConfig(), gpus_per_sequence=0.5), use_ray=False) == 0.5
    # auto (-1) in-process: one GPU exactly when torch sees CUDA (never required)
    expected = 1.0 if torch.cuda.is_available() else 0.0
    assert inference_gpus(EvalConfig(), use_ray=False) == expected


def test_bad_inputs_name_the_path(tiny_world: Path, tmp_path: Path):
    """No sequences under --data-root, a missing frame, a manifest-less person search: clear errors."""
    import shutil

    from jobs.evaluate import InputError, run_mot_checkpoint
    from jobs.evaluate import main as evaluate_main

    cfg = load_config("tiny")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        run_mot_checkpoint(tmp_path / "ckpt.pt", tmp_path, tmp_path / "res", cfg, use_ray=False)

    seq_dir = tmp_path / "SEQ"
    shutil.copytree(list_sequences(tiny_world / "MOT17" / "train")[0], seq_dir)
    missing = seq_dir / "img1" / "000003.jpg"
    missing.unlink()
    info = read_seqinfo(seq_dir)
    gt = read_gt(seq_dir / "gt" / "gt.txt")
    frames = list(split_frames(info.seq_length, "all"))
    net = OracleNet(oracle_outputs(gt, frames, (info.im_width, info.im_height),
                                   (cfg.model.input_height, cfg.model.input_width)))
    with pytest.raises(OSError, match="000003.jpg"):
        track_sequence(Detector(net, cfg, torch.device("cpu")), seq_dir, cfg.tracker)

    with pytest.raises(InputError, match="needs --manifest"):
        evaluate_main(["person-search", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.json")])


def test_batched_detection_and_query_embedding_equal_the_per_image_passes(tiny_world: Path):
    """``detect_and_embed_images`` (batches of 3, gallery and queries from one pass) = one forward per call."""
    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.data.dataset import read_image_rgb
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.inference import detect_and_embed_images, detect_images, student_embedding_at_boxes
    from kdtrack.models import build_student

    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16",
                               "decode.score_threshold=0.0", "decode.top_k=10"])
    model = build_student(cfg.model).eval()
    model.heads["size"][-1].bias.data.fill_(8.0)  # untrained: every peak gets a valid 16x16 box
    detector = Detector(model, cfg, torch.device("cpu"))
    manifest = read_manifest(tiny_world / "person_search" / "manifest.json")
    queries = manifest.queries[:4]
    paths = [manifest.image_path(q.file_name) for q in queries] + [manifest.image_path(manifest.images[0].file_name)]
    boxes = [xywh_to_xyxy(np.asarray(q.box_xywh, np.float32)).reshape(1, 4) for q in queries] + [np.zeros((0, 4))]
    batched = detect_and_embed_images(detector, paths, boxes, batch_size=3)
    assert len(batched) == 5 and batched[-1][1].shape == (0, 16)
    for path, box, (dets, query_emb) in zip(paths, boxes, batched):
        (single,) = detect_images(detector, [path])
        np.testing.assert_allclose(dets.boxes_xyxy, single.boxes_xyxy, atol=1e-3)
        np.testing.assert_allclose(dets.scores, single.scores, atol=1e-5)
        np.testing.assert_allclose(dets.embeddings, single.embeddings, atol=1e-5)
        if len(box):
            expected = student_embedding_at_boxes(detector, read_image_rgb(path), box)
            np.testing.assert_allclose(query_emb, expected, atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(query_emb, axis=1), 1.0, atol=1e-5)


def test_teacher_query_person_search_embeds_queries_with_the_teacher_and_the_gallery_with_the_student(
        tiny_world: Path, tmp_path: Path):
    """KDMOT's person-search protocol (METHOD.md section 3): query crop -> teacher, gallery -> student."""
    from jobs.evaluate import InputError, person_search_inputs_from_checkpoint
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.inference import load_teacher, teacher_embed_fn
    from kdtrack.models import build_student, build_teacher

    torch.manual_seed(0)
    cfg = load_config("tiny", ["decode.score_threshold=0.0", "decode.top_k=6"])
    teacher_path = tmp_path / "teacher.pt"
    torch.save(build_teacher(cfg.teacher).state_dict(), teacher_path)
    manifest_path = tiny_world / "person_search" / "manifest.json"
    small = save_checkpoint(tmp_path / "small", model=build_student(cfg.model), config=cfg)
    with pytest.raises(InputError, match="needs a KD student"):  # 64-d student, 128-d teacher
        person_search_inputs_from_checkpoint(small, manifest_path, cfg, use_ray=False, embedder="teacher_query",
                                             teacher_checkpoint=str(teacher_path))
    cfg = load_config("tiny", ["decode.score_threshold=0.0", "decode.top_k=6", "model.embedding_dim=128",
                               "model.normalize_embedding=false"])  # a KD student: the teacher's feature size
    model = build_student(cfg.model)
    model.heads["size"][-1].bias.data.fill_(8.0)
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=cfg)
    student = person_search_inputs_from_checkpoint(ckpt, manifest_path, cfg, use_ray=False)
    mixed = person_search_inputs_from_checkpoint(ckpt, manifest_path, cfg, use_ray=False, embedder="teacher_query",
                                                 teacher_checkpoint=str(teacher_path))
    for name, image in student[1].items():  # the gallery is the student's, detection for detection
        np.testing.assert_allclose(mixed[1][name].embeddings, image.embeddings, atol=1e-6)
    manifest = read_manifest(manifest_path)
    embed = teacher_embed_fn(load_teacher(cfg.teacher, teacher_path), (cfg.teacher.crop_height, cfg.teacher.crop_width),
                             torch.device("cpu"))
    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.data.dataset import read_image_rgb

    q = manifest.queries[0]
    expected = embed(read_image_rgb(manifest.image_path(q.file_name)),
                     xywh_to_xyxy(np.asarray(q.box_xywh, np.float32)).reshape(1, 4))[0]
    np.testing.assert_allclose(mixed[0][0].embedding, expected, atol=1e-5)
    assert not np.allclose(mixed[0][0].embedding, student[0][0].embedding, atol=1e-3)


def test_teacher_embed_fn_on_the_student_canvas():
    """canvas=(w, h) crops from the frame letterboxed to the student's input, as KD's targets are cut."""
    from kdtrack.inference import teacher_embed_fn
    from kdtrack.models import build_teacher, freeze_teacher
    from kdtrack.models.teacher_targets import teacher_embeddings

    torch.manual_seed(0)
    cfg = load_config("tiny")
    teacher = freeze_teacher(build_teacher(cfg.teacher))
    crop = (cfg.teacher.crop_height, cfg.teacher.crop_width)
    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 50, 90], [100, 20, 130, 80]], np.float32)
    frame = teacher_embed_fn(teacher, crop, torch.device("cpu"))
    # a canvas of the frame's own size is the frame itself
    np.testing.assert_allclose(teacher_embed_fn(teacher, crop, torch.device("cpu"), canvas=(160, 96))(image, boxes),
                               frame(image, boxes), atol=1e-5)
    # a 320x192 canvas: the frame scaled by 2 (no padding), boxes with it: the teacher's crops of that canvas
    canvas = cv2.resize(image, (320, 192), interpolation=cv2.INTER_AREA)
    (expected,) = teacher_embeddings(teacher, torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255,
                                     [torch.from_numpy(boxes * 2)], out_size=crop)
    got = teacher_embed_fn(teacher, crop, torch.device("cpu"), canvas=(320, 192))(image, boxes)
    np.testing.assert_allclose(got, torch.nn.functional.normalize(expected, dim=1).numpy(), atol=1e-5)


def test_a_teacher_checkpoint_brings_its_own_architecture(tmp_path: Path):
    """An evaluation whose config has another teacher size still loads a trained teacher checkpoint:
    its own teacher section (size, crop) is used; a bare state dict falls back to the job's config."""
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.config import TeacherConfig
    from kdtrack.inference import load_teacher, teacher_config_of
    from kdtrack.models import build_teacher

    trained_cfg = load_config("teacher_cpu")
    path = save_checkpoint(tmp_path / "T", model=build_teacher(trained_cfg.teacher, num_classes=3), config=trained_cfg)
    other = TeacherConfig(feature_dim=0)  # the default preset's teacher: 256-d
    assert teacher_config_of(path, other) == trained_cfg.teacher
    teacher = load_teacher(other, path)
    assert teacher.embed(torch.rand(1, 3, 128, 64)).shape == (1, 128)
    bare = tmp_path / "bare.pt"
    torch.save(build_teacher(other).state_dict(), bare)
    assert teacher_config_of(bare, other) is other
