"""Ray storage on a path or an object store (``jobs._storage``), against a moto S3 server on 127.0.0.1.

- a misspelled scheme, a missing bucket, an endpoint that does not answer: one line naming the URI, exit 2,
  before Ray or any worker starts;
- a good bucket passes the check and keeps nothing of it (the probe object is deleted);
- a checkpoint in the bucket is fetched for ``--checkpoint s3://...`` (the folder or the file);
- training to ``s3://``: checkpoints in the bucket, a rerun resumes from them, one MLflow run, and the
  evaluation job reads a checkpoint straight from the bucket.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pytest

import jobs._ray
import jobs.train
from jobs._storage import StorageError, as_uri, check_storage, is_storage_uri, resolve_storage
from kdtrack.checkpoint import load_checkpoint, save_checkpoint
from kdtrack.config import load_config


def _bucket_fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                             region="us-east-1")


def _no_ray(monkeypatch) -> None:
    """Starting Ray (or reading training data) now fails the test: bad storage is refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the storage was checked")

    monkeypatch.setattr(jobs._ray, "ensure_ray", refuse)
    monkeypatch.setattr(jobs.train, "training_data", refuse)


def test_uri_text_survives_pathlib_and_model_uris_are_not_storage():
    assert as_uri(Path("s3://bucket/runs/checkpoint_1")) == "s3://bucket/runs/checkpoint_1"
    assert is_storage_uri(Path("s3://b/k")) and is_storage_uri("gs://b/k")
    assert not is_storage_uri("runs:/abc/student") and not is_storage_uri("/tmp/x") and not is_storage_uri(None)


def test_misspelled_scheme_is_refused_naming_it():
    with pytest.raises(StorageError, match=r"--storage s4://bucket/runs: pyarrow cannot open it"):
        resolve_storage("s4://bucket/runs")


def test_missing_bucket_and_dead_endpoint_are_refused_naming_them(s3_bucket, monkeypatch):
    storage = resolve_storage(f"s3://{s3_bucket}-typo/runs")
    with pytest.raises(StorageError, match=rf"s3://{s3_bucket}-typo/runs: bucket '{s3_bucket}-typo' does not exist"):
        check_storage(storage)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/runs: cannot reach it"):
        check_storage(resolve_storage(f"s3://{s3_bucket}/runs"))


def test_a_good_bucket_passes_and_keeps_nothing_of_the_check(s3_bucket, s3_server, tmp_path):
    storage = resolve_storage(f"s3://{s3_bucket}/kdtrack/runs/")
    assert storage.uri == f"s3://{s3_bucket}/kdtrack/runs" and storage.path == f"{s3_bucket}/kdtrack/runs"
    assert storage.ray_kwargs()["storage_filesystem"] is storage.filesystem  # what Ray pickles to the workers
    assert storage.uri_of(f"{s3_bucket}/kdtrack/runs/r/checkpoint_1") == f"s3://{s3_bucket}/kdtrack/runs/r/checkpoint_1"
    check_storage(storage)
    left = _bucket_fs(s3_server).get_file_info(pafs.FileSelector(s3_bucket, recursive=True, allow_not_found=True))
    assert [i.path for i in left if i.type == pafs.FileType.File] == []
    local = resolve_storage(str(tmp_path / "new" / "runs"))
    check_storage(local)  # a creatable local folder passes; Ray Train creates it when the run starts
    assert local.is_local and not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match=r"--storage .*file/runs: .*file is a file, not a folder"):
        check_storage(resolve_storage(str(tmp_path / "file" / "runs")))


def test_cli_bad_storage_exits_2_before_ray_starts(s3_bucket, tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    assert jobs.train.cli(["--out", str(tmp_path / "o"), "--storage", f"s3://{s3_bucket}-gone/runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train: --storage s3://{s3_bucket}-gone/runs: bucket '{s3_bucket}-gone' does not exist "
                   f"(endpoint {os.environ['AWS_ENDPOINT_URL']})"]
    assert jobs.train.cli(["--out", str(tmp_path / "o"), "--storage", "sftp://host/runs"]) == 2
    assert "--storage sftp://host/runs: pyarrow cannot open it" in capsys.readouterr().err


def test_checkpoint_fetched_from_the_bucket(s3_bucket, s3_server, tmp_path):
    from jobs._cli import InputError
    from jobs._model_uri import resolve_checkpoints

    from kdtrack.models import build_student

    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16"])
    local = save_checkpoint(tmp_path / "ckpt", model=build_student(cfg.model), config=cfg, iteration=7)
    fs = _bucket_fs(s3_server)
    pafs.copy_files(str(local), f"{s3_bucket}/runs/r/checkpoint_1/checkpoint.pt",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    for ref in (Path(f"s3://{s3_bucket}/runs/r/checkpoint_1"), f"s3://{s3_bucket}/runs/r/checkpoint_1/checkpoint.pt"):
        fetched = resolve_checkpoints(ref, None)
        assert Path(fetched).read_bytes() == local.read_bytes()
    with pytest.raises(InputError, match=rf"s3://{s3_bucket}/runs/r/checkpoint_9: no such object"):
        resolve_checkpoints(f"s3://{s3_bucket}/runs/r/checkpoint_9", None)


@pytest.mark.ray
@pytest.mark.slow
def test_training_to_a_bucket_resumes_from_it_and_a_checkpoint_there_is_evaluated(
        ray_session, tiny_world, mlflow_uri, s3_bucket, s3_server, tmp_path):
    """The S3 settings live in this process's environment only: the session cluster's workers (started
    before) get them through the storage filesystem Ray pickles, as workers on other nodes would."""
    import mlflow

    import jobs.evaluate
    from test_train_job import _args

    storage = f"s3://{s3_bucket}/kdtrack/runs"
    fast = ["train.keep_checkpoints=2", "data.loader=torch"]  # no Ray Data actors: the storage is what is tested
    first = jobs.train.main(_args(tiny_world, tmp_path / "first", mlflow_uri, *fast, storage=storage))
    assert first["ray_checkpoint"].startswith(f"{storage}/")
    assert not (tmp_path / "first" / "ray_results").exists()  # nothing of the run on the local disk
    in_bucket = _stored_checkpoints(s3_server, f"{s3_bucket}/kdtrack/runs")
    assert [it for it, _ in in_bucket] == [2], in_bucket  # 2 iterations of the smoke test, one checkpoint

    # Another --out (another machine: nothing local): the run resumes from the bucket, its MLflow run reopened.
    second = jobs.train.main(_args(tiny_world, tmp_path / "second", mlflow_uri, "train.smoke_iterations=4",
                              "train.resume_policy=force", *fast, storage=storage))
    assert second["metrics"]["resumed_from_iteration"] == 2 and second["metrics"]["iteration"] == 4
    assert second["mlflow_run_id"] == first["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    in_bucket = _stored_checkpoints(s3_server, f"{s3_bucket}/kdtrack/runs")
    assert [it for it, _ in in_bucket] == [2, 4], in_bucket  # the first run's checkpoint is kept beside the new one
    tag = client.get_run(second["mlflow_run_id"]).data.tags["kdtrack.ray_checkpoint"]
    assert tag == second["ray_checkpoint"]

    # The evaluation job reads the checkpoint straight from the bucket (its Ray checkpoint folder's URI).
    out = tmp_path / "eval" / "reid.json"
    jobs.evaluate.main(["reid", "--checkpoint", second["ray_checkpoint"], "--world", str(tiny_world), "--split",
                        "val", "--protocols", "person_search", "--baselines", "none", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["person_search"]["student"]["queries"] > 0
    assert math.isfinite(record["person_search"]["student"]["mAP"])
    fetched = Path(record["settings"]["checkpoint"])
    assert load_checkpoint(fetched)["iteration"] == 4
    assert fetched.read_bytes() == (tmp_path / "second" / "checkpoint.pt").read_bytes()


def _stored_checkpoints(endpoint: str, root: str) -> list[tuple[int, str]]:
    """``[(iteration, folder)]`` of every ``checkpoint.pt`` under ``root`` in the bucket, loaded (a truncated
    one raises), oldest first."""
    import tempfile

    fs = _bucket_fs(endpoint)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.base_name != "checkpoint.pt":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint.pt"
            pafs.copy_files(info.path, str(local), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            found.append((int(load_checkpoint(local)["iteration"]), info.path.rsplit("/", 1)[0]))
    return sorted(found)


def test_a_bucket_gone_mid_run_fails_the_run_naming_it(s3_bucket, s3_server, tiny_world, mlflow_uri, tmp_path,
                                                       monkeypatch):
    """The fit is a stand-in that deletes the bucket and fails as Ray does (a wrapped upload error): the
    run fails with the storage named, and its MLflow run is FAILED. Nothing of Ray runs."""
    from mlflow.tracking import MlflowClient

    from jobs._storage import StorageLost
    from test_train_job import _args

    class Cluster:
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    class GoneBucketTrainer:
        def fit(self):
            fs = pafs.S3FileSystem(endpoint_override=s3_server, access_key="testing", secret_key="testing",
                                   region="us-east-1", allow_bucket_deletion=True)
            fs.delete_dir(s3_bucket)  # the bucket and everything in it
            raise RuntimeError("TrainingFailedError: ... OSError: When uploading part for key 'runs/...'")

    monkeypatch.setattr(jobs._ray, "ensure_ray", lambda: Cluster)
    monkeypatch.setattr(jobs.train, "build_trainer", lambda *a, **k: GoneBucketTrainer())
    with pytest.raises(StorageLost, match=rf"--storage s3://{s3_bucket}/runs: bucket '{s3_bucket}' does not exist"):
        jobs.train.main(_args(tiny_world, tmp_path / "o", mlflow_uri, storage=f"s3://{s3_bucket}/runs"))
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"


def test_pseudo_labels_through_a_bucket_feed_video_training(s3_bucket, s3_server, tiny_world, tmp_path, capsys,
                                                            monkeypatch):
    """``jobs.pseudo_label --storage s3://...`` copies its finished files into the bucket; ``jobs.train``'s
    driver reads ``data.pseudo_labels=s3://.../labels.parquet`` into the same clips as the local file; a bad
    storage or a missing object ends either job with one line naming it (exit 2), before any work."""
    from jobs import pseudo_label
    from jobs.pseudo_label import LABELS_FILE, SUMMARY_FILE, VIDEOS_FILE

    monkeypatch.setattr(jobs._ray, "ensure_ray", lambda: (_ for _ in ()).throw(AssertionError("Ray started")))
    out, prefix = tmp_path / "labels", f"{s3_bucket}/idf/labels"
    summary = pseudo_label.main(["--oracle-truth", "--videos", str(tiny_world / "kinetics"), "--out", str(out),
                                 "--storage", f"s3://{prefix}", "--no-progress"])
    names = [VIDEOS_FILE, SUMMARY_FILE, LABELS_FILE]  # the labels last: whoever finds them finds the rest
    assert summary["storage"] == [f"s3://{prefix}/{name}" for name in names] and summary["boxes"] > 0
    fs = _bucket_fs(s3_server)
    for name in names:
        with fs.open_input_stream(f"{prefix}/{name}") as handle:
            assert handle.read() == (out / name).read_bytes(), name

    def clips(labels: str) -> list[dict]:
        import dataclasses

        cfg = load_config("idf_video_cpu", [f"data.root={tiny_world}", f"data.pseudo_labels={labels}"])
        return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dataclasses.asdict(c).items()}
                for c in jobs.train.clip_labels(cfg)]

    from_bucket = clips(f"s3://{prefix}/{LABELS_FILE}")
    assert from_bucket and repr(from_bucket) == repr(clips(str(out / LABELS_FILE)))

    capsys.readouterr()
    missing = f"s3://{s3_bucket}/idf/nothing/{LABELS_FILE}"
    assert jobs.train.cli(["--config", "idf_video_cpu", "--data-root", str(tiny_world), "--out", str(tmp_path / "t"),
                           "--set", f"data.pseudo_labels={missing}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"data.pseudo_labels: {missing}: no such object" in err[0], err
    assert pseudo_label.cli(["--oracle-truth", "--videos", str(tiny_world / "kinetics"), "--out", str(tmp_path / "o"),
                             "--storage", f"s3://{s3_bucket}-gone/labels"]) == 2
    assert f"--storage s3://{s3_bucket}-gone/labels: bucket '{s3_bucket}-gone' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_mlflow_artifacts_go_to_the_bucket_and_come_back_by_run_uri(s3_bucket, s3_server, mlflow_uri, tmp_path,
                                                                     tiny_world, capsys, monkeypatch):
    """``mlflow.artifact_location=s3://bucket/mlflow``: a new experiment keeps its artifacts there (MLflow
    uploads with boto3 from the AWS_* variables alone); the run's config.yaml and trained model land in the
    bucket and ``runs:/<run>/student`` is fetched back from it. A missing bucket is refused at start-up."""
    from mlflow.tracking import MlflowClient

    from jobs._mlflow_train import create_driver_run, log_trained_model
    from jobs._model_uri import resolve_checkpoints
    from kdtrack.models import build_student

    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    location = f"s3://{s3_bucket}/mlflow"
    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16",
                               f"mlflow.artifact_location={location}", "mlflow.experiment=bucketed"])
    run_id = create_driver_run(cfg, mlflow_uri)
    assert run_id
    local = save_checkpoint(tmp_path / "ckpt", model=build_student(cfg.model), config=cfg, iteration=3)
    assert log_trained_model(mlflow_uri, run_id, local, cfg, iteration=3).startswith("models:/")
    experiment = MlflowClient(mlflow_uri).get_experiment_by_name("bucketed")
    assert experiment.artifact_location == location
    # what a Tune trial or a rank 0 on another node gets to upload with boto3 (pyarrow's filesystem is pickled)
    from jobs._storage import s3_env

    assert s3_env(location)["AWS_ENDPOINT_URL"] == s3_server and s3_env(str(tmp_path)) == {}

    fs = _bucket_fs(s3_server)
    stored = {i.path: i.size for i in fs.get_file_info(pafs.FileSelector(f"{s3_bucket}/mlflow", recursive=True))
              if i.type == pafs.FileType.File}
    by_name = {}
    for path, size in stored.items():
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(size)
    assert by_name["config.yaml"] and by_name["checkpoint.pt"] == [local.stat().st_size], stored
    fetched = resolve_checkpoints(f"runs:/{run_id}/student", mlflow_uri)
    assert Path(fetched).read_bytes() == local.read_bytes()

    _no_ray(monkeypatch)
    capsys.readouterr()
    assert jobs.train.cli(["--out", str(tmp_path / "o"), "--data-root", str(tiny_world), "--mlflow-uri", mlflow_uri,
                           "--set", f"mlflow.artifact_location=s3://{s3_bucket}-gone/mlflow"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train: mlflow.artifact_location s3://{s3_bucket}-gone/mlflow: bucket '{s3_bucket}-gone' does not exist "
        f"(endpoint {os.environ['AWS_ENDPOINT_URL']})"]
