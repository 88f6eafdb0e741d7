"""jobs.train with train.recipe=teacher on Ray Train, then the Market-1501 evaluation of its checkpoint."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pytest
import torch

from jobs._market_eval import run_market1501
from jobs.train import CHECKPOINT_TAG, check_recipe, get_args_parser, main
from kdtrack.checkpoint import load_checkpoint
from kdtrack.config import ConfigError, load_config
from kdtrack.engine import lr_milestones
from kdtrack.inference import load_teacher
from kdtrack.models import is_frozen

# A smaller teacher than teacher_cpu's so that one fit stays ~15-30 s on 2 shared cores.
FAST = ["teacher.width=8", "teacher.feature_dim=32", "teacher.crop_height=64", "teacher.crop_width=32",
        "teacher.train_p=4", "teacher.train_k=2", "teacher.eval_batch_size=128"]


def _args(world, out, uri, *extra):
    argv = ["--config", "teacher_cpu", "--data-root", str(world), "--out", str(out), "--mlflow-uri", uri,
            "--smoke-test"]
    for item in FAST + list(extra):
        argv += ["--set", item]
    return get_args_parser().parse_args(argv)


def test_teacher_recipe_checks():
    check_recipe(load_config("teacher_cpu"))
    check_recipe(load_config("teacher_paper"))
    # loss.id_mode belongs to the student: whatever it is, the teacher recipe does not look at it
    check_recipe(load_config("teacher_cpu", ["loss.id_mode=none"]))
    with pytest.raises(ConfigError, match="teacher.checkpoint must be empty"):
        check_recipe(load_config("teacher_cpu", ["teacher.checkpoint=/x.pt"]))
    with pytest.raises(ConfigError, match="batch-hard"):
        check_recipe(load_config("teacher_cpu", ["teacher.train_k=1"]))
    with pytest.raises(ConfigError, match="probability"):
        check_recipe(load_config("teacher_cpu", ["teacher.random_erasing=1.5"]))


@pytest.mark.parametrize("iterations_per_epoch", [1, 7, 202, 1000])
def test_teacher_paper_runs_the_bot_schedule(iterations_per_epoch):
    cfg = load_config("teacher_paper")
    t, tc = cfg.teacher, cfg.train
    assert (t.backbone, t.last_stride, t.pooling, t.crop_height, t.crop_width) == ("resnet50_ibn", 1, "gem", 256, 128)
    assert (t.train_p * t.train_k, t.label_smoothing, t.triplet_margin) == (64, 0.1, 0.3)
    assert (tc.optimizer, tc.lr, tc.epochs, t.warmup_epochs, t.warmup_factor) == ("adam", 3.5e-4, 120, 10, 0.1)
    n = iterations_per_epoch
    assert lr_milestones(tc, tc.epochs * n) == [40 * n, 70 * n]  # lr / 10 at the first iteration of epochs 40, 70


def test_teacher_smoke_run_resumes_and_evaluates_on_market(ray_session, tiny_world, mlflow_uri, tmp_path):
    out = tmp_path / "teacher"
    first = main(_args(tiny_world, out, mlflow_uri))
    ckpt_path = out / "checkpoint.pt"
    assert first["checkpoint"] == str(ckpt_path)
    state = load_checkpoint(ckpt_path)
    assert state["iteration"] == 2 and state["epoch"] == 0  # 2 of 24 PK batches (24 ids x 8 crops / 2 / 4)
    assert state["config"].train.recipe == "teacher" and state["config"].teacher.width == 8
    assert state["model"]["classifier.weight"].shape == (24, 32)  # 24 training identities of the tiny world
    assert math.isfinite(first["metrics"]["train/total"]) and first["metrics"]["train/triplet"] >= 0

    mlflow.set_tracking_uri(mlflow_uri)
    run = mlflow.search_runs(experiment_names=["kdtrack"]).iloc[0]
    assert run["params.train.recipe"] == "teacher" and run["params.data/num_id_classes"] == "24"
    assert math.isfinite(run["metrics.train/id"]) and run[f"tags.{CHECKPOINT_TAG}"] == str(ckpt_path)

    # the KD side loads it: classifier dropped, frozen, embeds crops
    teacher = load_teacher(state["config"].teacher, ckpt_path)
    assert is_frozen(teacher) and teacher.classifier is None
    assert teacher.embed(torch.rand(2, 3, 64, 32)).shape == (2, 32)

    # same --out and run name: resumes from iteration 2
    second = main(_args(tiny_world, out, mlflow_uri, "train.smoke_iterations=3", "train.resume_policy=force"))
    assert second["metrics"]["resumed_from_iteration"] == 2
    assert load_checkpoint(ckpt_path)["iteration"] == 3

    json_path = tmp_path / "eval" / "market1501.json"
    record = run_market1501(ckpt_path, tiny_world, out=json_path, mlflow_uri=mlflow_uri,
                            run_id=first["mlflow_run_id"])
    written = json.loads(json_path.read_text())
    assert set(written["results"]) == {"teacher", "colour", "chance"}
    counts = written["counts"]
    assert counts["query"] == 16 and counts["query_identities"] == 16  # tiny world: 16 test identities
    assert counts["gallery_junk_removed"] == 6 and counts["gallery_distractors"] == 6
    for row in written["results"].values():
        assert 0.0 <= row["mAP"] <= 1.0 and 0.0 <= row["rank1"] <= row["rank5"] <= row["rank10"] <= 1.0
        assert row["queries"] + row["skipped"] == 16
    # (the colour histogram is near chance here: each synthetic camera has its own colour cast)
    assert record["results"]["chance"] == pytest.approx(written["results"]["chance"])
    logged = mlflow.get_run(first["mlflow_run_id"]).data.metrics
    assert np.isclose(logged["market1501/teacher/mAP"], written["results"]["teacher"]["mAP"])


def test_market_eval_of_a_student_checkpoint(tiny_world, tmp_path):
    """A student checkpoint is scored on the crops too (identity map at the centre of each letterboxed crop)."""
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_student

    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16",
                               "model.input_width=64", "model.input_height=128"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "student.pt", model=build_student(cfg.model), config=cfg)
    record = run_market1501(ckpt, tiny_world / "market1501", out=tmp_path / "m.json", device="cpu")
    assert set(record["results"]) == {"student", "colour", "chance"}
    assert record["results"]["student"]["queries"] == 16
    assert json.loads((tmp_path / "m.json").read_text())["settings"]["embedders"] == ["student", "colour"]


def test_market_eval_through_the_evaluate_cli(tiny_world, tmp_path, capsys):
    """``python -m jobs.evaluate market1501`` runs the same evaluation; a missing root is a one-line exit 2."""
    from jobs import evaluate
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_student

    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=16",
                               "model.input_width=64", "model.input_height=128"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "student.pt", model=build_student(cfg.model), config=cfg)
    record = evaluate.main(["market1501", "--checkpoint", str(ckpt), "--data-root", str(tiny_world),
                            "--out", str(tmp_path / "m.json")])
    assert set(record["results"]) == {"student", "colour", "chance"}
    assert (tmp_path / "m.json").exists()
    code = evaluate.cli(["market1501", "--checkpoint", str(ckpt), "--data-root", str(tmp_path / "nowhere"),
                         "--out", str(tmp_path / "x.json")])
    assert code == 2 and "nowhere" in capsys.readouterr().err
