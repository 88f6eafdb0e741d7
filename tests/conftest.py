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


@pytest.fixture(scope="session")
def ray_session():
    """A real 2-CPU local Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=400 * 1024 * 1024,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
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
