"""Batch evaluation at cluster scale (actor pools), on a real 2-CPU Ray cluster and the tiny world.

- a MOT17 root holding every sequence three times (one copy per public detector) is tracked once per sequence;
- a sequence with a corrupt frame fails by name while the other is scored and written, and the job exits 1;
- person search builds the network once per actor (counted), batched numbers equal the per-image ones;
- two checkpoints of a training run are logged as two steps (their iterations) of one MLflow run;
- bad config keys and paths stop with one line and exit code 2;
- inference workers run numpy's BLAS on one thread.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.evaluate import (
    InputError,
    cli,
    main,
    mot_sequence_dirs,
    person_search_inputs_from_checkpoint,
)
from kdtrack.checkpoint import save_checkpoint
from kdtrack.config import load_config
from kdtrack.formats.mot import DETECTOR_SUFFIXES, list_sequences, read_seqinfo, sequence_base_name, write_seqinfo
from kdtrack.models import build_student

REPO = Path(__file__).resolve().parents[1]
# a fast student (as tests/test_evaluate_reid.py) and a cluster-friendly pool: 0.5 CPU per actor on 2 CPUs
FAST = ["model.width=8", "model.head_conv=16", "model.embedding_dim=16", "decode.top_k=50"]
POOL = ["--set", "eval.cpus_per_actor=0.5", "--set", "eval.render_frames=0", "--no-progress"]
SHORT = 12  # frames kept of each 40-frame tiny sequence: val half = frames 8..12, 5 frames
VAL = SHORT - SHORT // 2 - 1


def _fast_checkpoint(path: Path, iteration: int = 0, seed: int = 0) -> Path:
    cfg = load_config("tiny", FAST)
    torch.manual_seed(seed)
    model = build_student(cfg.model)
    model.heads["size"][-1].bias.data.fill_(8.0)  # untrained: every peak gets a valid 16x16 box
    return save_checkpoint(path, model=model, config=cfg, iteration=iteration)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _fast_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _copy_sequence(src: Path, dst: Path, *, copy_images: bool = False) -> Path:
    """``src`` as the sequence ``dst.name``, cut to its first SHORT frames (seqinfo renamed and
    shortened; frames linked unless ``copy_images``). Scored on the val half, gt rows after the
    cut are not read."""
    dst.mkdir(parents=True)
    shutil.copytree(src / "gt", dst / "gt")
    if copy_images:
        shutil.copytree(src / "img1", dst / "img1")
    else:
        (dst / "img1").symlink_to(src / "img1", target_is_directory=True)
    write_seqinfo(dst, replace(read_seqinfo(src), name=dst.name, seq_length=SHORT))
    return dst


@pytest.mark.ray
def test_three_detector_copies_are_tracked_once_per_sequence(tiny_world, tmp_path, checkpoint, ray_session):
    world_seqs = list_sequences(tiny_world / "MOT17" / "train")  # MOT17-SYN01-SDP, MOT17-SYN02-SDP
    root = tmp_path / "MOT17" / "train"
    for seq in world_seqs:
        for detector in DETECTOR_SUFFIXES:
            _copy_sequence(seq, root / f"{sequence_base_name(seq.name)}-{detector}")
    assert len(list_sequences(root)) == 6
    out = tmp_path / "eval" / "metrics.json"
    metrics = main(["mot", "--checkpoint", str(checkpoint), "--data-root", str(root), "--half", "val",
                    "--out", str(out), *POOL, "--set", "eval.num_actors=1"])  # one actor: both sequences, one start
    # default: the first copy of each sequence (sorted: DPM), each tracked once
    expected = ["MOT17-SYN01-DPM", "MOT17-SYN02-DPM"]
    assert sorted(metrics["sequences"]) == expected
    assert metrics["combined"]["num_frames"] == 2 * VAL  # the val halves of two sequences, not six
    assert sorted(p.name for p in (out.parent / "results").iterdir()) == [f"{n}.txt" for n in expected]
    assert json.loads(out.read_text())["combined"]["num_frames"] == 2 * VAL
    # --detector picks that copy of every sequence; a copy that is missing is named
    assert [d.name for d in mot_sequence_dirs(root, detector="FRCNN")] == ["MOT17-SYN01-FRCNN", "MOT17-SYN02-FRCNN"]
    assert len(mot_sequence_dirs(root, detector="all")) == 6
    assert [d.name for d in mot_sequence_dirs(root, ["MOT17-SYN02"], detector="SDP")] == ["MOT17-SYN02-SDP"]
    shutil.rmtree(root / "MOT17-SYN02-FRCNN")
    with pytest.raises(FileNotFoundError, match="MOT17-SYN02 has no -FRCNN copy"):
        mot_sequence_dirs(root, detector="FRCNN")


@pytest.mark.ray
def test_a_corrupt_sequence_fails_by_name_and_the_other_is_written(tiny_world, tmp_path, checkpoint, ray_session,
                                                                   capsys):
    good, bad = list_sequences(tiny_world / "MOT17" / "train")
    root = tmp_path / "train"
    _copy_sequence(good, root / good.name)
    _copy_sequence(bad, root / bad.name, copy_images=True)
    corrupt = root / bad.name / "img1" / "000010.jpg"  # inside the val half (frames 8..12)
    corrupt.write_bytes(b"not a jpeg")
    out = tmp_path / "eval" / "metrics.json"
    code = cli(["mot", "--checkpoint", str(checkpoint), "--data-root", str(root), "--half", "val",
                "--out", str(out), *POOL])
    assert code == 1
    stderr = capsys.readouterr().err
    assert f"FAILED {bad.name}: OSError: {corrupt}: cannot read image" in stderr
    metrics = json.loads(out.read_text())
    assert list(metrics["sequences"]) == [good.name]  # the finished sequence is scored and written
    assert metrics["combined"]["num_frames"] == VAL
    assert str(corrupt) in metrics["failed"][bad.name]
    assert sorted(p.name for p in (out.parent / "results").iterdir()) == [f"{good.name}.txt"]


@pytest.mark.ray
def test_person_search_builds_the_network_once_per_actor(tiny_world, tmp_path, ray_session):
    from jobs._inference_pool import InferenceWorker, ModelHandle
    from kdtrack.boxes import xywh_to_xyxy
    from kdtrack.config import config_to_dict
    from kdtrack.data.dataset import read_image_rgb
    from kdtrack.formats.person_search import read_manifest
    from kdtrack.inference import detect_images, student_embedding_at_boxes

    ckpt = _fast_checkpoint(tmp_path / "ckpt")
    cfg = load_config("tiny", ["decode.score_threshold=0.0", "decode.top_k=20", "eval.num_actors=2",
                               "eval.cpus_per_actor=0.5", "eval.ps_images_per_task=5", "eval.ps_batch_images=3"])
    manifest_path = tiny_world / "person_search" / "manifest.json"
    stats: dict = {}
    queries, gallery = person_search_inputs_from_checkpoint(ckpt, manifest_path, cfg, use_ray=True, stats=stats)
    # 40 test images (the queries are drawn in them) in calls of 5: 8 calls on 2 actors, 2 networks built
    assert (stats["tasks"], stats["workers"], stats["model_builds"]) == (8, 2, 2)
    manifest = read_manifest(manifest_path)
    assert len(gallery) == 40 and len(queries) == len(manifest.queries) == 20
    # batched, one pass per image = what the per-image functions give (each with its own forward)
    worker = InferenceWorker(config_to_dict(cfg), device="cpu")
    detector, _ = worker._network(ModelHandle(str(ckpt)))
    for name in list(gallery)[:3]:
        (dets,) = detect_images(detector, [manifest.image_path(name)])
        np.testing.assert_allclose(gallery[name].boxes_xyxy, dets.boxes_xyxy, atol=1e-3)
        np.testing.assert_allclose(gallery[name].embeddings, dets.embeddings, atol=1e-4)
    for q, mq in list(zip(queries, manifest.queries))[:3]:
        image = read_image_rgb(manifest.image_path(mq.file_name))
        box = xywh_to_xyxy(np.asarray(mq.box_xywh, np.float32))
        np.testing.assert_allclose(q.embedding, student_embedding_at_boxes(detector, image, box)[0], atol=1e-4)


def test_two_checkpoints_of_a_training_run_are_two_steps_of_one_mlflow_run(tiny_world, tmp_path, mlflow_uri,
                                                                            capsys):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "train"  # as jobs.train --out lays it: Ray Train checkpoints + the final copy
    for iteration in (200, 400):
        _fast_checkpoint(run_dir / "ray_results" / "train" / f"checkpoint_{iteration:06d}", iteration, seed=iteration)
    shutil.copy(run_dir / "ray_results" / "train" / "checkpoint_000400" / "checkpoint.pt", run_dir / "checkpoint.pt")
    seq = list_sequences(tiny_world / "MOT17" / "train")[0]
    _copy_sequence(seq, tmp_path / "mot" / seq.name)
    out = tmp_path / "eval" / "metrics.json"
    record = main(["mot", "--checkpoint", str(run_dir), "--data-root", str(tmp_path / "mot"),
                   "--half", "val", "--no-ray", "--out", str(out),
                   "--mlflow-uri", mlflow_uri, "--experiment", "eval-steps", "--set", "eval.render_frames=1",
                   "--no-progress"])
    assert [c["iteration"] for c in record["checkpoints"]] == [200, 400]  # the final copy is not evaluated twice
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    table = capsys.readouterr().out
    assert "checkpoint_000200/checkpoint.pt" in table and "checkpoint_000400/checkpoint.pt" in table
    for label in ("iter_0000200", "iter_0000400"):
        assert (out.parent / "results" / label / f"{seq.name}.txt").is_file()
    client = MlflowClient(mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "eval-steps"]
    (run,) = client.search_runs([experiment.experiment_id])  # one run for both checkpoints
    history = client.get_metric_history(run.info.run_id, "MOT17-val/num_gt")
    assert sorted(m.step for m in history) == [200, 400]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/MOT17-val")}
    assert artifacts == {"eval/MOT17-val/iter_0000200", "eval/MOT17-val/iter_0000400"}
    frames = client.list_artifacts(run.info.run_id, "eval/MOT17-val/iter_0000400/frames")
    assert len(frames) == 1


def test_a_pool_that_mixed_numeric_paths_is_reported_as_mixed(tiny_world, tmp_path, checkpoint, mlflow_uri,
                                                               monkeypatch, capsys):
    # each sequence records the numeric path its actor ran; here the second one came back from a GPU actor
    from mlflow.tracking import MlflowClient

    from jobs._inference_pool import InferenceWorker

    gpu_path = "cuda/fp16-autocast/deform_conv2d"
    first, second = list_sequences(tiny_world / "MOT17" / "train")
    for seq in (first, second):
        _copy_sequence(seq, tmp_path / "mot" / seq.name)
    track = InferenceWorker.track

    def track_as_if_on_a_gpu_actor(self, model, seq_dir, half, num_render):
        run = track(self, model, seq_dir, half, num_render)
        return dict(run, numeric_path=gpu_path) if Path(seq_dir).name == second.name else run

    monkeypatch.setattr(InferenceWorker, "track", track_as_if_on_a_gpu_actor)
    out = tmp_path / "eval" / "metrics.json"
    main(["mot", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path / "mot"), "--half", "val", "--no-ray",
          "--out", str(out), "--mlflow-uri", mlflow_uri, "--experiment", "eval-paths", "--no-progress",
          "--set", "eval.render_frames=0"])
    cpu_path = "cpu/fp32"  # the tiny student has no deformable conv
    assert json.loads(out.read_text())["numeric_paths"] == {cpu_path: [first.name], gpu_path: [second.name]}
    assert "mixed numeric paths" in capsys.readouterr().err
    (experiment,) = [e for e in MlflowClient(mlflow_uri).search_experiments() if e.name == "eval-paths"]
    (run,) = MlflowClient(mlflow_uri).search_runs([experiment.experiment_id])
    assert run.data.params == {"MOT17-val/numeric_paths": f"{cpu_path}, {gpu_path}",
                               "MOT17-val/numeric_path_mixed": "true"}


def test_bad_config_and_paths_exit_2_with_one_line(tiny_world, tmp_path, checkpoint, capsys):
    mot_root = str(tiny_world / "MOT17" / "train")
    out = str(tmp_path / "m.json")
    cases = [
        (["mot", "--checkpoint", str(tmp_path / "nope.pt"), "--data-root", mot_root], str(tmp_path / "nope.pt")),
        (["mot", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path / "none")], str(tmp_path / "none")),
        (["mot", "--checkpoint", str(checkpoint), "--data-root", mot_root, "--set", "eval.nope=1"], "eval.nope"),
        (["mot", "--checkpoint", str(checkpoint), "--data-root", mot_root, "--embedder", "teacher"],
         "--teacher-checkpoint"),
        (["person-search", "--checkpoint", str(checkpoint)], "needs --manifest"),
    ]
    for argv, named in cases:
        assert cli([*argv, "--out", out, "--no-ray"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert named in err and "\n" not in err and "Traceback" not in err, err
    with pytest.raises(InputError):  # in-process callers get the exception itself
        main(["person-search", "--checkpoint", str(checkpoint), "--out", out])
    # from the shell: exit status 2, one line on stderr
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", "mot", "--checkpoint", str(tmp_path / "nope.pt"),
                           "--data-root", mot_root, "--out", out], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope.pt" in proc.stderr


def test_person_search_with_a_failed_batch_names_it_and_exits_1(tiny_world, tmp_path, checkpoint, capsys):
    """No metrics (nothing is scored on a partial gallery): the failed image batch is named, exit 1."""
    import shutil

    root = tmp_path / "person_search"
    shutil.copytree(tiny_world / "person_search", root)
    manifest = json.loads((root / "manifest.json").read_text())
    test_image = next(im["file_name"] for im in manifest["images"] if im["split"] == "test")
    corrupt = next(root.rglob(test_image))
    corrupt.write_bytes(b"not a jpeg")
    out = tmp_path / "ps.json"
    code = cli(["person-search", "--checkpoint", str(checkpoint), "--manifest", str(root / "manifest.json"),
                "--no-ray", "--out", str(out), "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    assert "person search not scored: 1 image batch(es) failed" in captured.out
    assert "cannot read image" in captured.err and corrupt.name in captured.err


def test_inference_workers_run_numpy_blas_on_one_thread():
    # two spinning BLAS threads beside torch's made `evaluate mot --no-ray` 4.5x slower on 2 cores (kdtrack.threads)
    from threadpoolctl import threadpool_info, threadpool_limits

    from jobs._inference_pool import InferenceWorker
    from kdtrack.config import config_to_dict

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # restored when the test ends
        assert blas_threads() == {2}
        InferenceWorker(config_to_dict(load_config("tiny")), device="cpu")
        assert blas_threads() == {1}
