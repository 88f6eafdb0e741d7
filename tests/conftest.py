"""Shared fixtures: one local Ray cluster per test session, temp MLflow stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's controller polls its workers every 2 s by default: each fit's end (and each checkpoint's
# registration) waited up to that long. Set before ray.init; Train hands it to its controllers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# one actor process fewer per fit: nothing in a one-machine test cluster is preempted
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def start_session_ray() -> None:
    """The session cluster's ``ray.init``: one place, so tests/test_multinode.py (which stops it to run its
    own multi-node cluster: two Ray instances on 2 cores starve each other) restarts it as it was."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=400 * 1024 * 1024,
            log_to_driver=False,
            ignore_reinit_error=True,
        )


@pytest.fixture(scope="session")
def ray_session():
    """A real 2-CPU local Ray cluster shared by every test that needs one."""
    import ray

    start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A new sqlite MLflow store with its tables made: MLflow's schema migrations cost seconds per new store."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, empty_mlflow_db: Path) -> str:
    """An absolute sqlite MLflow store in this test's temp dir: a copy of the empty store, nothing logged yet."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny synthetic world (``SynthConfig()`` defaults, seed 0), generated once per session; its root."""
    from kdtrack.config import SynthConfig
    from kdtrack.synth.world import generate_world

    root = tmp_path_factory.mktemp("tiny_world")
    generate_world(SynthConfig(), root, preset="tiny")
    return root


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1 at a free port, for the object-storage tests; its endpoint
    URL. A separate process: the Ray workers reach it over HTTP as they would a real bucket."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("moto", reason="moto[server] (pyproject dev extras) runs the test S3 server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint} (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request) -> str:
    """A new empty bucket on the test S3 server, and the usual AWS variables pointing at it (this process
    only: jobs hand the storage to Ray workers themselves); its name."""
    import re

    import pyarrow.fs as pafs

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + os.urandom(3).hex()
    pafs.S3FileSystem(endpoint_override=s3_server, access_key="testing", secret_key="testing",
                      region="us-east-1", allow_bucket_creation=True).create_dir(bucket)
    return bucket
