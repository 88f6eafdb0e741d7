"""Ray Tune sweeps (`jobs.tune`, `tune/`): preset checks, the Tune objects, and a real 2-trial sweep with one
trial that fails on a NaN loss, recorded in Tune and MLflow, with the sweep going on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdtrack.config import ConfigError, load_config
from tune.spec import check_resources, load_sweep

SMALL_SWEEP = {
    "train_config": "tiny",
    "set": {"train.epochs": 0, "train.max_iterations": 4, "train.report_every": 2, "train.log_every": 2,
            "train.val_protocols": ["person_search"],
            # a smaller student than tiny's, so that a trial's fit stays short on 2 shared cores
            "model.input_width": 160, "model.input_height": 96, "model.width": 16, "model.head_conv": 32,
            "model.deformable": False, "loss.queue_size": 256, "train.batch_size_per_worker": 2,
            # the trials' DataLoader path: the Ray Data stream's start-up (~20 s a fit on 2 cores) is tested
            # by tests/test_pipeline_training.py and the jobs.train tests, not once per trial here
            "data.loader": "torch"},
    "search": {"loss.temperature": {"loguniform": [0.03, 0.3]}},
    "tune": {"num_samples": 2},
}


def write_sweep(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(SMALL_SWEEP))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and key in ("set", "tune"):  # merged; "search" is replaced
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_cpu_sweep_searches_lambda_tau_queue_and_lr_on_validation_map():
    spec = load_sweep("tune_idf_cpu", ["data.root=/nonexistent"])
    assert set(spec.search) == {"loss.id_weight", "loss.temperature", "loss.queue_size", "train.lr"}
    assert spec.search["loss.temperature"].kind == "loguniform"
    assert spec.search["loss.temperature"].args == (0.03, 0.3)
    assert max(spec.search["loss.queue_size"].args) == 65536
    assert spec.tune.metric == "val/person_search/mAP" and spec.tune.mode == "max"
    assert spec.base.train.recipe == "contrastive" and spec.base.train.val_split == "val"
    # fits a 2-core machine: one trial holds its driver actor + one worker + its Ray Data decode actor
    check_resources(spec, 2.0)
    assert spec.tune.trial_cpus + spec.base.train.cpus_per_worker + spec.base.data.map_num_cpus <= 2.0
    assert spec.base.data.loader == "ray"
    from tune.spaces import scheduler

    rungs = sorted(m for m, _ in scheduler(spec)._brackets[0]._rungs)
    assert rungs == [60, 120, 240]  # the preset's comment: ASHA rungs in training iterations


def test_shipped_real_data_sweep_validates_on_the_carved_val_split():
    """tune_idf_paper: idf_paper's trials, objective on the person-search val split that jobs.carve_val writes
    (tests/test_person_search_val.py: no carved person reaches training), never the test split."""
    spec = load_sweep("tune_idf_paper", ["data.root=/nonexistent"])
    assert spec.base.train.recipe == "contrastive" and spec.base.model.backbone == "resnet50_unet"
    assert spec.base.train.val_split == "val" and spec.base.train.val_protocols == ("person_search",)
    assert spec.tune.metric == "val/person_search/mAP" and "colour_centre" in spec.tune.baselines
    assert set(spec.base.data.sources) == {"coco", "crowdhuman"}  # trials never read the person-search images
    from tune.spaces import scheduler

    rungs = sorted(m for m, _ in scheduler(spec)._brackets[0]._rungs)
    assert rungs == [1000, 2000, 4000]  # the preset's comment
    with pytest.raises(ConfigError, match="validation"):
        load_sweep("tune_idf_paper", ["data.root=/nonexistent", "train.val_split=test"])


def test_a_mot17_sweep_validates_on_the_val_halves_and_reports_nothing_on_them(tiny_world):
    """tune_kd_mot17_paper: FairMOT's train-half / val-half protocol. The trials train on the train halves,
    the objective is cross-time re-ID on the val halves (measured by the trial's validation: a real reading on
    a world's MOT17), and no final report of the sweep scores the val halves again."""
    import torch

    from jobs._train_worker import build_validation
    from kdtrack.models.student import build_student
    from tune.spec import held_out_protocols

    spec = load_sweep("tune_kd_mot17_paper", ["data.root=/nonexistent"])
    assert spec.base.train.recipe == "kd" and spec.base.data.sources == ("mot17",)
    assert spec.base.data.mot_split == "train_half" and spec.base.eval.reid_mot_split == "val_half"
    assert spec.tune.metric == "val/mot/mAP" and held_out_protocols(spec) == ("person_search",)
    # a sweep not validated on MOT17 val may report every protocol the probe knows (tune.spec keeps its own
    # literal so that it stays free of torch; this pins the two together)
    from kdtrack.metrics.reid_probe import PROTOCOLS
    assert held_out_protocols(load_sweep("tune_idf_paper", ["data.root=/nonexistent"])) == PROTOCOLS
    from tune.spaces import scheduler

    assert sorted(m for m, _ in scheduler(spec)._brackets[0]._rungs) == [1000, 2000, 4000]
    for changes, message in (
        (["data.mot_split=all"], "data.mot_split='all' trains on them: set data.mot_split=train_half"),
        (["eval.reid_mot_split=all"], "set eval.reid_mot_split=val_half (got 'all')"),
        (["tune.final_eval=[reid, mot]"], "tune.final_eval 'mot' tracks the MOT17 val halves"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_sweep("tune_kd_mot17_paper", ["data.root=/nonexistent", *changes])
    load_sweep("tune_kd_mot17_paper", ["data.root=/nonexistent", "tune.final_eval=[reid]"])
    # what a trial reports: the val halves' cross-time mAP of its student, as every report does
    cfg = load_config("tiny", [f"data.root={tiny_world}", "train.val_protocols=[mot]"])
    validate = build_validation(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    report = validate(build_student(cfg.model).eval())
    assert set(report) >= {"val/mot/mAP", "val/mot/rank1"} and 0 < report["val/mot/mAP"] <= 100


@pytest.mark.parametrize("changes, message", [
    ({"search": {"loss.nope": {"uniform": [0, 1]}}}, "unknown key 'loss.nope'"),
    ({"search": {"loss.eta": {"uniform": [0, 1]}}}, "read only by train.recipe kd"),
    ({"search": {"loss.temperature": {"loguniform": [0, 1]}}}, "loguniform needs low > 0"),
    ({"search": {"loss.temperature": {"uniform": [0.3, 0.1]}}}, "low < high"),
    ({"search": {"loss.centre_region_radius": {"choice": [1, 1.5]}}}, "expects int"),
    ({"search": {"loss.queue_size": {"choice": [512, 1024]}}}, "also fixed"),
    ({"search": {"loss.temperature": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
    ({"search": {"data.sources": {"choice": [["coco"]]}}}, "read once per sweep"),
    ({"search": {"pseudo.eps": {"uniform": [0.01, 0.1]}}}, "train.recipe 'contrastive' does not train on pseudo-labels"),
    ({"search": {"pseudo.frame_stride": {"choice": [1, 2]}}}, "change what the stage-1 network embeds"),
    ({"search": {"train.max_iterations": {"choice": [2, 4]}}}, "put it under 'set'"),
    ({"tune": {"metric": "train/total"}}, "never a training loss"),
    ({"tune": {"metric": "val/mot/mAP"}}, "not measured"),
    ({"set": {**SMALL_SWEEP["set"], "train.val_split": "test"}}, "no final report uses"),
    ({"set": {**SMALL_SWEEP["set"], "train.report_every": 0}}, "report_every > 0"),
    ({"tune": {"searcher": "optuna"}, "search": {"loss.temperature": {"grid": [0.05, 0.1]}}}, "grid"),
    ({"tune": {"num_sampels": 3}}, "unknown key 'tune.num_sampels'"),
    ({"tune": {"baselines": ["random", "sift"]}}, "tune.baselines: unknown ['sift']"),
    ({"extra": 1}, "unknown key 'extra'"),
    ({"search": {"loss.key_momentum": {"uniform": [0.9, 1.0]}}}, "loss.key_momentum must be in [0, 1), got 1.0"),
    ({"set": {**SMALL_SWEEP["set"], "loss.queue_size": 0}}, "loss.queue_size must be > 0"),
    ({"tune": {"reduction_factor": 1}}, "tune.reduction_factor must be >= 2 (ASHA keeps"),
    ({"tune": {"trial_max_failures": -1}}, "tune.trial_max_failures must be >= 0"),
])
def test_bad_sweep_presets_are_refused_naming_the_key_and_file(tmp_path, changes, message):
    path = write_sweep(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value)
    assert str(path) in str(err.value) or "--set" in str(err.value) or "unknown key" in str(err.value)


def test_the_supervised_recipe_sweeps_its_own_fields_only(tmp_path):
    fields = {k: v for k, v in SMALL_SWEEP["set"].items() if k != "loss.queue_size"}
    spec = load_sweep(write_sweep(tmp_path, train_config="sup_cpu", set=fields,
                                  search={"loss.s_id_init": {"uniform": [-2.0, 0.0]},
                                          "train.lr": {"loguniform": [3.0e-4, 3.0e-3]}}))
    assert spec.base.train.recipe == "supervised" and set(spec.search) == {"loss.s_id_init", "train.lr"}
    with pytest.raises(ConfigError, match="read only by train.recipe contrastive | video"):
        load_sweep(write_sweep(tmp_path, train_config="sup_cpu", set=fields,
                               search={"loss.temperature": {"loguniform": [0.03, 0.3]}}))


def test_set_overrides_route_tune_fields_to_the_sweep_and_others_to_training(tmp_path):
    spec = load_sweep(write_sweep(tmp_path), ["tune.num_samples=7", "train.max_iterations=6", "tune.mode=min"],
                      num_samples=3)
    assert spec.tune.num_samples == 3  # --num-samples wins over --set tune.num_samples
    assert spec.tune.mode == "min"
    assert spec.base.train.max_iterations == 6


def test_a_trial_that_cannot_fit_the_cluster_is_refused_before_it_hangs(tmp_path):
    spec = load_sweep(write_sweep(tmp_path), ["train.cpus_per_worker=2.0"])
    with pytest.raises(ConfigError, match="would never start"):
        check_resources(spec, 2.0)
    check_resources(spec, 4.0)
    # the Ray Data decode actors count too: 0.1 + 1.5 + 0.5 > 2
    spec = load_sweep(write_sweep(tmp_path), ["train.cpus_per_worker=1.5", "data.loader=ray", "data.map_num_cpus=0.5"])
    with pytest.raises(ConfigError, match="0.5 for the Ray Data decode actors"):
        check_resources(spec, 2.0)


def test_tune_objects_asha_in_iterations_and_a_flat_param_space(tmp_path):
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tune.spaces import param_space, scheduler, search_algorithm

    spec = load_sweep(write_sweep(tmp_path, search={"loss.temperature": {"loguniform": [0.03, 0.3]},
                                                    "loss.centre_region_radius": {"choice": [0, 1]},
                                                    "train.lr": {"grid": [1e-3, 1e-2]}}))
    space = param_space(spec)
    assert set(space) == {"loss.temperature", "loss.centre_region_radius", "train.lr"}
    assert isinstance(space["loss.temperature"], ray_tune.search.sample.Float)
    assert space["train.lr"] == {"grid_search": [1e-3, 1e-2]}
    asha = scheduler(spec)
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "iteration" and asha._max_t == 4
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == [2, 4]  # grace = report_every, rf 2, max_t 4
    assert isinstance(scheduler(load_sweep(write_sweep(tmp_path, tune={"scheduler": "fifo"}))), FIFOScheduler)
    random_search = search_algorithm(spec)
    assert type(random_search).__name__ == "BasicVariantGenerator"
    assert random_search.max_concurrent == 1  # Tune ignores TuneConfig.max_concurrent_trials for a generator
    pytest.importorskip("optuna")
    optuna_spec = load_sweep(write_sweep(tmp_path, tune={"searcher": "optuna"}))
    assert type(search_algorithm(optuna_spec)).__name__ == "OptunaSearch"


def test_trial_config_applies_sampled_numpy_values():
    from jobs.tune import trial_config

    base = load_config("tiny")
    cfg = trial_config(base, {"loss.temperature": np.float64(0.12), "loss.queue_size": np.int64(256)}, "train-x")
    assert cfg.loss.temperature == pytest.approx(0.12) and cfg.loss.queue_size == 256
    assert cfg.train.run_name == "train-x"
    with pytest.raises(ConfigError, match="loss.queue_size"):
        trial_config(base, {"loss.queue_size": 2.5}, "t")


def test_error_line_finds_the_worker_root_cause():
    from jobs.tune import error_line

    class WorkerGroupError(RuntimeError):
        pass

    exc = WorkerGroupError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent "
                           "call last):\n  File \"e.py\", line 1\n    raise FloatingPointError(f\"{x}\")\n"
                           "FloatingPointError: iteration 3: loss is nan, stopping training\n")
    assert error_line(exc) == "FloatingPointError: iteration 3: loss is nan, stopping training"
    assert error_line(ValueError("bad value\nmore")) == "ValueError: bad value"


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_records_a_nan_trial_as_failed_and_writes_the_best_config(ray_session, tiny_world, tmp_path):
    """Two trials (lr grid): 1e-3 trains and is validated at iterations 2 and 4; 1e30 makes the loss NaN
    at its first step. Tune records it as errored, MLflow as FAILED with the cause, and the sweep goes on.
    Tune starts the failed trial once more (``tune.trial_max_failures: 1``, meant for a lost node): that start
    finds the run tagged failed and fails at once, keeping the first error and one child run."""
    from mlflow.tracking import MlflowClient

    from jobs.tune import get_args_parser, main

    path = write_sweep(tmp_path, search={"train.lr": {"grid": [1.0e-3, 1.0e+30]}},
                       tune={"num_samples": 1, "scheduler": "fifo", "trial_max_failures": 1})
    out = tmp_path / "sweep"
    result = main(get_args_parser().parse_args(["--config", str(path), "--data-root", str(tiny_world),
                                                "--out", str(out)]))
    assert result["exit_code"] == 0
    outcomes = {t["values"]["train.lr"]: t for t in result["trials"]}
    assert outcomes[1e-3]["outcome"] == "completed" and outcomes[1e-3]["iteration"] == 4
    assert outcomes[1e30]["outcome"] == "failed"
    assert outcomes[1e30]["restarts"] == 1 and outcomes[1e-3]["restarts"] == 0
    assert result["tune_errors"] == 1

    client = MlflowClient(tracking_uri=result["mlflow_uri"])
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "baseline/random/mAP" in parent.data.metrics and "baseline/colour/mAP" in parent.data.metrics
    assert parent.data.params["search.train.lr"] == "grid[0.001, 1e+30]"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2
    by_status = {run.info.status: run for run in children}
    assert set(by_status) == {"FINISHED", "FAILED"}
    failed = by_status["FAILED"]
    assert failed.data.tags["kdtrack.tune.error"].startswith("FloatingPointError: iteration")
    assert "loss is nan" in failed.data.tags["kdtrack.tune.error"]
    good = by_status["FINISHED"]
    history = client.get_metric_history(good.info.run_id, "val/person_search/mAP")
    assert sorted(m.step for m in history) == [2, 4]  # the objective at every report
    assert good.data.params["train.lr"] == "0.001"
    assert parent.data.metrics["best/val/person_search/mAP"] == pytest.approx(
        good.data.metrics["val/person_search/mAP"])
    # the parent links its best child and holds that trial's last checkpoint as its model
    assert parent.data.tags["kdtrack.tune.best_run_id"] == good.info.run_id
    assert f"runs/{good.info.run_id})" in parent.data.tags["mlflow.note.content"]
    assert result["best"]["model_uri"].startswith("models:/")
    from jobs._model_uri import fetch_checkpoint
    from kdtrack.checkpoint import load_checkpoint

    fetched = fetch_checkpoint(f"runs:/{parent.info.run_id}/student", result["mlflow_uri"], dst=tmp_path / "best")
    assert load_checkpoint(fetched)["iteration"] == 4

    best = load_config(out / "best_config.yaml")  # a preset jobs.train takes as it is
    assert best.train.lr == pytest.approx(1e-3) and best.train.run_name == "best"
    assert best.data.root == str(tiny_world.resolve()) and best.train.val_protocols == ("person_search",)
    assert (out / "summary.csv").read_text().count("\n") == 3  # header + 2 trials
    assert json.loads((out / "sweep.json").read_text())["best"]["values"] == {"train.lr": 1e-3}



def test_best_trial_leaves_out_failed_and_non_finite_trials(tmp_path):
    """The pick behind best_config.yaml; None (the sweep exits 1, no best config) when no trial finished
    with a finite objective, e.g. every trial failed as the NaN trial above does."""
    from jobs.tune import _best

    spec = load_sweep(write_sweep(tmp_path, search={"train.lr": {"grid": [1.0e-3, 1.0e-2]}}))

    def trial(tid, objective, outcome="completed", iteration=4):
        return {"trial_id": tid, "values": {"train.lr": tid}, "objective": objective, "outcome": outcome,
                "iteration": iteration}

    assert _best([trial("a", float("nan")), trial("b", 0.9, outcome="failed"), trial("c", None)], spec) is None
    picked = _best([trial("a", 0.2), trial("b", 0.9, outcome="failed"), trial("c", 0.4, outcome="stopped_early",
                                                                                   iteration=2)], spec)
    assert picked["trial_id"] == "c" and picked["objective"] == 0.4 and spec.tune.mode == "max"
    # equal objectives: the trial that trained longer
    assert _best([trial("a", 0.4, iteration=2), trial("b", 0.4, iteration=4)], spec)["trial_id"] == "b"
