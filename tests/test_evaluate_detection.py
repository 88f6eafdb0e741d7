"""``python -m jobs.evaluate detection``: AP and recall / precision at score thresholds on CrowdHuman val."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs.evaluate import cli, main
from kdtrack.checkpoint import save_checkpoint
from kdtrack.config import load_config
from kdtrack.formats.crowdhuman import read_crowdhuman
from kdtrack.inference import Detector
from kdtrack.models import build_student
from kdtrack.structures import Detections


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", model=build_student(cfg.model), config=cfg)


def test_scores_known_detections_at_each_threshold(tiny_world, checkpoint, tmp_path, monkeypatch, mlflow_uri):
    """Every true box found at score 0.9 and one false box per image at 0.45: AP 1 (the false boxes rank
    last), recall 1 at both thresholds, precision n / (n + images) at 0.4 and 1 at 0.5."""
    val, _ = read_crowdhuman(tiny_world / "crowdhuman" / "annotation_val.odgt", tiny_world / "crowdhuman" / "Images")
    in_order = iter([r.boxes_xyxy for r in val])  # the job reads the val images in file order

    def fake_detect_batch(self, images):
        found = []
        for _ in images:
            boxes = next(in_order)
            false = np.array([[0, 0, 3, 3]], np.float32)  # far from any person: IoU 0
            found.append(Detections(np.concatenate([boxes, false]).astype(np.float32),
                                    np.r_[np.full(len(boxes), 0.9), 0.45].astype(np.float32),
                                    np.zeros((len(boxes) + 1, 0), np.float32)))
        return found, {}, []

    monkeypatch.setattr(Detector, "detect_batch", fake_detect_batch)
    out = tmp_path / "det.json"
    record = main(["detection", "--checkpoint", str(checkpoint), "--data-root", str(tiny_world), "--out", str(out),
                   "--mlflow-uri", mlflow_uri, "--batch-size", "3"])
    n = sum(len(r.boxes_xyxy) for r in val)
    assert record["ap"] == pytest.approx(1.0)
    assert record["at_score"]["0.4"] == {"recall": 1.0, "precision": pytest.approx(n / (n + len(val))),
                                         "detections": n + len(val)}
    assert record["at_score"]["0.5"] == {"recall": 1.0, "precision": 1.0, "detections": n}
    assert json.loads(out.read_text())["counts"] == {"images": len(val), "ground_truth": n}
    import mlflow

    run = mlflow.MlflowClient(mlflow_uri).get_run(record["mlflow_run_id"])
    assert run.data.metrics["detection/ap"] == pytest.approx(1.0)
    assert run.data.metrics["detection/precision/score0.5"] == pytest.approx(1.0)


def test_bad_inputs_exit_2_naming_them(tmp_path, checkpoint, capsys):
    assert cli(["detection", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path),
                "--out", str(tmp_path / "d.json")]) == 2
    assert str(tmp_path / "crowdhuman" / "annotation_val.odgt") in capsys.readouterr().err
    assert cli(["detection", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--out",
                str(tmp_path / "d.json"), "--score-thresholds", "0.4,high"]) == 2
    assert "--score-thresholds" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
