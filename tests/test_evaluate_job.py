"""``python -m jobs.evaluate``: TUD devkit numbers from the shell, Ray fan-out, MLflow logging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs._mlflow_eval import CHECKPOINT_TAG, log_evaluation_to_mlflow
from jobs.evaluate import get_args_parser, main
from kdtrack.formats import mot as mot_format
from kdtrack.metrics._motmetrics_compat import import_motmetrics
from kdtrack.metrics.person_search import GalleryImage, Query, save_person_search_npz

REPO = Path(__file__).resolve().parents[1]
MOTMETRICS_DATA = Path(import_motmetrics().__file__).parent / "data"
# The wheel ships gt.txt + test.txt only; seqinfo.ini is written here: seqLength = last gt frame
# (= last tracker frame), TUD images are 640x480.
TUD = {"TUD-Campus": 71, "TUD-Stadtmitte": 179}


@pytest.fixture
def tud_root(tmp_path: Path) -> tuple[Path, Path]:
    gt_root, results = tmp_path / "gt", tmp_path / "results"
    results.mkdir()
    for name, length in TUD.items():
        (gt_root / name / "gt").mkdir(parents=True)
        shutil.copy(MOTMETRICS_DATA / name / "gt.txt", gt_root / name / "gt" / "gt.txt")
        shutil.copy(MOTMETRICS_DATA / name / "test.txt", results / f"{name}.txt")
        mot_format.write_seqinfo(gt_root / name, mot_format.SeqInfo(name, 25.0, length, 640, 480))
    return gt_root, results


def run_job(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.ray
@pytest.mark.slow
def test_mot_files_job_from_shell_reproduces_tud(tud_root, tmp_path, ray_session):
    gt_root, results = tud_root
    out = tmp_path / "out" / "metrics.json"
    address = ray_session.get_runtime_context().gcs_address  # the job joins this cluster via RAY_ADDRESS
    proc = run_job(
        ["mot-files", "--gt-root", str(gt_root), "--results", str(results), "--benchmark", "MOT15", "--out", str(out)],
        {"RAY_ADDRESS": address},
    )
    assert "Connecting to existing Ray cluster" in proc.stderr  # two sequences -> scored as Ray tasks
    campus_line = next(line for line in proc.stdout.splitlines() if line.startswith("TUD-Campus"))
    assert campus_line.split()[1:3] == ["52.6", "55.8"]  # printed percent, one decimal
    metrics = json.loads(out.read_text())
    campus, stadt = metrics["sequences"]["TUD-Campus"], metrics["sequences"]["TUD-Stadtmitte"]
    assert (round(100 * campus["MOTA"], 1), round(100 * campus["IDF1"], 1)) == (52.6, 55.8)
    assert (campus["FP"], campus["FN"], campus["IDs"], campus["FM"]) == (13, 150, 7, 7)
    assert (campus["MT"], campus["PT"], campus["ML"]) == (1, 6, 1)
    assert (round(100 * stadt["MOTA"], 1), round(100 * stadt["IDF1"], 1)) == (56.4, 64.5)
    assert (stadt["FP"], stadt["FN"], stadt["IDs"], stadt["FM"]) == (45, 452, 7, 6)
    assert (stadt["MT"], stadt["PT"], stadt["ML"]) == (5, 4, 1)
    assert round(100 * campus["HOTA"], 2) == 39.14 and round(100 * stadt["HOTA"], 3) == 39.785
    assert metrics["combined"]["FN"] == 602 and isinstance(metrics["combined"]["FN"], int)


@pytest.mark.slow
def test_mlflow_new_run_and_existing_run(tud_root, tmp_path, mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    gt_root, results = tud_root
    # 1) the CLI without --run-id: a new run tagged with the checkpoint, combined metrics as MOT15/*
    metrics = main(["mot-files", "--gt-root", str(gt_root), "--results", str(results), "--benchmark", "MOT15",
                    "--out", str(tmp_path / "m.json"), "--no-ray", "--mlflow-uri", mlflow_uri,
                    "--experiment", "eval-test", "--checkpoint", "ckpt/epoch_3.pt"])
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["eval-test"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["metrics.MOT15/MOTA"] == pytest.approx(metrics["combined"]["MOTA"])
    assert run["metrics.MOT15/FN"] == 602 and run["status"] == "FINISHED"
    assert run[f"tags.{CHECKPOINT_TAG}"] == "ckpt/epoch_3.pt"
    client = MlflowClient(mlflow_uri)
    artifacts = {a.path for a in client.list_artifacts(run["run_id"], "eval/MOT15")}
    assert {"eval/MOT15/metrics.json", "eval/MOT15/sequences.csv", "eval/MOT15/results"} <= artifacts
    result_files = {a.path for a in client.list_artifacts(run["run_id"], "eval/MOT15/results")}
    assert result_files == {"eval/MOT15/results/TUD-Campus.txt", "eval/MOT15/results/TUD-Stadtmitte.txt"}
    csv_path = client.download_artifacts(run["run_id"], "eval/MOT15/sequences.csv", str(tmp_path / "dl"))
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0].startswith("sequence,MOTA,") and lines[1].startswith("TUD-Campus,0.526")
    assert lines[-1].startswith("COMBINED,")

    # 2) into an existing (training) run: metrics + rendered frames land there, its status is kept
    experiment = client.create_experiment("train", artifact_location=(tmp_path / "art").as_uri())
    train_run = client.create_run(experiment).info.run_id
    small = {"sequences": {"S": {"MOTA": 0.5, "IDF1": 0.25, "FP": 3, "HOTA": None}},
             "combined": {"MOTA": 0.5, "IDF1": 0.25, "FP": 3, "HOTA": None}}
    frame = tmp_path / "frame_000001.jpg"
    frame.write_bytes(b"\xff\xd8\xff")
    got = log_evaluation_to_mlflow(small, dataset="MOT17-val", tracking_uri=mlflow_uri, run_id=train_run,
                                   rendered_frames=[frame])
    assert got == train_run
    logged = client.get_run(train_run)
    assert logged.data.metrics == {"MOT17-val/MOTA": 0.5, "MOT17-val/IDF1": 0.25, "MOT17-val/FP": 3.0}
    assert logged.info.status == "RUNNING"  # the training run's status is not ours to change
    paths = {a.path for a in client.list_artifacts(train_run, "eval/MOT17-val/frames")}
    assert paths == {"eval/MOT17-val/frames/frame_000001.jpg"}


def test_person_search_job_from_file(tmp_path):
    box = [0, 0, 40, 100]
    gallery = {
        "g1": GalleryImage(np.array([box, [200, 0, 240, 100]], float), np.array([0.9, 0.9]),
                           np.array([[0.6, 0.8], [1.0, 0.0]]), camera=1),
        "g2": GalleryImage(np.array([box], float), np.array([0.9]), np.array([[0.8, 0.6]]), camera=2),
    }
    query = Query(embedding=np.array([1.0, 0.0]), pid=1, image_id="q", gt_boxes_xyxy={"g1": box})
    npz = save_person_search_npz(tmp_path / "dets.npz", [query], gallery)
    out = tmp_path / "ps.json"
    proc = run_job(["person-search", "--detections", str(npz), "--gallery-size", "-1", "--out", str(out)])
    metrics = json.loads(out.read_text())
    # ranking 1.0 F, 0.8 F, 0.6 T, found 1 of 1 -> AP 1/3; top-1 miss, top-5 hit
    assert metrics["mAP"] == pytest.approx(1 / 3) and metrics["top1"] == 0.0 and metrics["top5"] == 1.0
    assert "mAP 33.3" in proc.stdout


def test_cli_rejects_unknown_benchmark_and_half():
    parser = get_args_parser()
    for bad in (["mot-files", "--gt-root", "g", "--results", "r", "--benchmark", "MOT99", "--out", "o"],
                ["mot-files", "--gt-root", "g", "--results", "r", "--benchmark", "MOT17", "--half", "train",
                 "--out", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
