"""MLflow as its users use it, through a real store (SQLite + an artifact folder) read back with MLflow's
client, as the UI reads it: a training run's final checkpoint is a logged model of the run (registered on
request), fetchable from elsewhere by ``runs:/`` and ``models:/`` URIs; evaluation tables are MLflow tables;
the experiment says it is a model-training experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs._cli import InputError
from jobs._mlflow_eval import log_evaluation_to_mlflow
from jobs._mlflow_train import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MODEL_TAG, create_mlflow_run,
                                log_trained_model, mlflow_experiment_id)
from jobs._model_uri import fetch_checkpoint, is_model_uri, resolve_checkpoints
from jobs.evaluate import reid_tables
from kdtrack.config import load_config


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (creating a SQLite store's tables costs seconds); each test makes its runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def trained_run(store: str, tmp_path: Path) -> tuple[str, Path, bytes]:
    """A finished training run of the tiny preset with a stand-in checkpoint file (any bytes: what is tested
    is that the very file comes back)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    cfg = load_config("tiny")
    run_id = create_mlflow_run(client, mlflow_experiment_id(client, cfg.mlflow.experiment, store), cfg, "t", {})
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    payload = b"kdtrack checkpoint bytes \x00\x01"
    checkpoint.write_bytes(payload)
    return run_id, checkpoint, payload


def test_experiment_is_marked_model_training(store: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment_id = mlflow_experiment_id(client, "kdtrack", store)
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment made before the tag existed gets it on its next training run
    old = client.create_experiment("older")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert mlflow_experiment_id(client, "older", store) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_trained_model_is_logged_registered_and_fetchable_elsewhere(store: str, trained_run, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    run_id, checkpoint, payload = trained_run
    cfg = load_config("tiny")
    model_uri = log_trained_model(store, run_id, checkpoint, cfg, iteration=12, register_as="kdtrack-test")
    assert model_uri.startswith("models:/m-")

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.data.tags[MODEL_TAG] == model_uri
    # what the run page's "Logged models" lists: the run's model outputs and its models by source run
    assert [o.model_id for o in run.outputs.model_outputs] == [model_uri[len("models:/"):]]
    (model,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert (model.name, str(model.status)) == ("student", "READY")
    assert model.params["iteration"] == "12"
    version = client.get_model_version("kdtrack-test", "1")
    assert version.run_id == run_id
    assert version.model_id == model.model_id or version.source == model.artifact_location

    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing relative to the training run's folder
    for uri in (f"runs:/{run_id}/student", model_uri, "models:/kdtrack-test/1"):
        fetched = fetch_checkpoint(uri, store, dst=elsewhere / uri.replace(":", "").replace("/", "_"))
        assert fetched.name == "checkpoint.pt" and fetched.read_bytes() == payload, uri
        assert load_config(fetched.parent / "config.yaml") == cfg  # the resolved config, a preset as it is
    # a second registration is the next version
    log_trained_model(store, run_id, checkpoint, cfg, register_as="kdtrack-test")
    assert fetch_checkpoint("models:/kdtrack-test/2", store, dst=elsewhere / "v2").read_bytes() == payload


def test_model_uris_need_a_server_that_knows_them(store: str, trained_run, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="needs the tracking server"):
        fetch_checkpoint("models:/kdtrack-test/1", None)
    with pytest.raises(InputError, match="kdtrack-missing"):
        fetch_checkpoint("models:/kdtrack-missing/1", store)
    with pytest.raises(InputError, match="expected runs:/<run_id>/<model name>"):
        fetch_checkpoint(f"runs:/{trained_run[0]}", store)


def test_paths_pass_through_and_uris_are_fetched(store: str, trained_run):
    run_id, checkpoint, payload = trained_run
    log_trained_model(store, run_id, checkpoint, load_config("tiny"))
    assert is_model_uri(Path("runs:/x/student")) and is_model_uri("models:/a/1") and not is_model_uri("runs/x")
    assert resolve_checkpoints(None, store) is None
    assert resolve_checkpoints(checkpoint, store) == checkpoint
    local, remote = resolve_checkpoints([checkpoint, Path(f"runs:/{run_id}/student")], store)
    assert local == checkpoint and remote.read_bytes() == payload


def test_a_fetched_copy_is_removed_when_the_job_exits(store: str, trained_run):
    """A job that reads ``runs:/...`` fetches it into a temporary folder; the folder goes when the process ends."""
    import subprocess
    import sys

    run_id, checkpoint, payload = trained_run
    log_trained_model(store, run_id, checkpoint, load_config("tiny"))
    code = ("import sys; from jobs._model_uri import resolve_checkpoints; "
            "p = resolve_checkpoints(sys.argv[1], sys.argv[2]); assert p.is_file(); print(p)")
    done = subprocess.run([sys.executable, "-c", code, f"runs:/{run_id}/student", store], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    fetched = Path(done.stdout.strip().splitlines()[-1])
    assert fetched.name == "checkpoint.pt" and fetched.is_absolute()
    scratch = next(p for p in fetched.parents if p.name.startswith("kdtrack-model-"))
    assert not scratch.exists()


def test_logging_a_model_is_best_effort(trained_run, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    run_id, checkpoint, _ = trained_run
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of MLflow's backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    # a tracking server that does not answer: a warning, no exception (the checkpoint file is there)
    assert log_trained_model("http://127.0.0.1:9", run_id, checkpoint, load_config("tiny")) == ""
    assert "did not log the trained model" in capsys.readouterr().out


def test_evaluation_tables_are_mlflow_tables(store: str, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    metrics = {"sequences": {"SEQ-A": {"MOTA": 0.5, "IDs": 2}, "SEQ-B": {"MOTA": float("nan"), "IDs": 0}},
               "combined": {"MOTA": 0.25, "IDs": 2}}
    reid = {"person_search": {"student": {"mAP": 0.12, "rank1": 0.2}, "chance": {"mAP": 0.07}},
            "mot": {"student": {"mAP": 0.5, "rank1": 0.4}}}
    run_id = log_evaluation_to_mlflow(metrics, dataset="MOT17-val", tracking_uri=store, tables=reid_tables(reid))
    client = MlflowClient(tracking_uri=store)
    names = {a.path for a in client.list_artifacts(run_id, "eval/MOT17-val")}
    assert {"eval/MOT17-val/sequences.json", "eval/MOT17-val/reid_person_search.json",
            "eval/MOT17-val/reid_mot.json"} <= names

    def table(name: str) -> dict:
        # MLflow's table format (what mlflow.load_table and the UI read): {"columns": [...], "data": [rows]}
        local = client.download_artifacts(run_id, f"eval/MOT17-val/{name}.json", str(tmp_path))
        data = json.loads(Path(local).read_text())
        return {"columns": data["columns"], "rows": data["data"]}

    sequences = table("sequences")
    assert sequences["columns"] == ["sequence", "MOTA", "IDs"]
    assert sequences["rows"] == [["SEQ-A", 0.5, 2], ["SEQ-B", None, 0], ["COMBINED", 0.25, 2]]
    person_search = table("reid_person_search")
    assert person_search["columns"] == ["embedder", "mAP", "rank1"]
    assert person_search["rows"] == [["student", 0.12, 0.2], ["chance", 0.07, None]]
