"""One sweep across recipes (`recipes:` in a sweep preset): each recipe from its own preset with its own
parameters, drawn only in its trials, at one budget; the comparison report written at the end. A real sweep
across two recipes, one of them re-clustering, runs in tests/test_tune_reclustering.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdtrack.config import ConfigError
from tests.test_tune import SMALL_SWEEP
from tune.spec import RECIPE_FIELD, load_sweep

SMALL_SET = dict(SMALL_SWEEP["set"])
TWO_RECIPES = {
    "set": SMALL_SET,
    "recipes": {
        "contrastive": {"train_config": "tiny", "search": {"loss.temperature": {"loguniform": [0.03, 0.3]}}},
        "supervised": {"train_config": "sup_cpu", "set": {"train.lr": 1.0e-3},
                       "search": {"train.classifier_lr_mult": {"loguniform": [3.0, 30.0]}}},
    },
    "tune": {"num_samples": 1, "scheduler": "fifo"},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def changed(**recipes_changes) -> dict:
    data = json.loads(json.dumps(TWO_RECIPES))
    for name, arm in recipes_changes.items():
        data["recipes"][name] = arm
    return data


def test_shipped_sweep_trains_every_recipe_at_one_budget():
    spec = load_sweep("tune_recipes_cpu", ["teacher.embeddings=/store"])
    assert list(spec.recipes) == ["supervised", "kd", "contrastive", "hybrid"]
    assert spec.search[RECIPE_FIELD].kind == "grid"
    for name, arm in spec.recipes.items():
        assert arm.base.train.recipe == name
        assert arm.base.train.max_iterations == 600 and arm.base.train.report_every == 150
        assert arm.base.train.val_split == "val" and arm.base.train.val_protocols == ("person_search",)
        assert arm.base.teacher.embeddings == "/store"  # a --set field reaches every recipe
    assert spec.recipes["kd"].base.data.sources == ("crowdhuman", "coco")  # its own set: the hybrid's images
    assert spec.searched == (RECIPE_FIELD, "train.classifier_lr_mult", "loss.s_id_init", "loss.temperature",
                             "loss.s_contrastive_init")
    assert {"colour_centre", "random"} <= set(spec.tune.baselines)


def test_each_recipes_parameters_are_drawn_in_its_own_trials_only():
    from ray.tune.search.variant_generator import generate_variants

    from tune.spaces import param_space

    spec = load_sweep("tune_recipes_cpu", ["teacher.embeddings=/store", "tune.num_samples=2"])
    first = [v for _, v in generate_variants(param_space(spec))]
    again = [v for _, v in generate_variants(param_space(spec))]
    assert first == again  # seeded
    assert [v[RECIPE_FIELD] for v in first] == ["supervised", "kd", "contrastive", "hybrid"]
    own = {"supervised": "train.classifier_lr_mult", "kd": "loss.s_id_init", "contrastive": "loss.temperature",
           "hybrid": "loss.s_contrastive_init"}
    for values in first:
        drawn = {k for k, v in values.items() if v is not None and k != RECIPE_FIELD}
        assert drawn == {own[values[RECIPE_FIELD]]}
    assert 0.03 <= first[2]["loss.temperature"] <= 0.3 and -1.0 <= first[3]["loss.s_contrastive_init"] <= 1.0


@pytest.mark.parametrize("data, message", [
    (changed(supervised={"train_config": "sup_cpu", "search": {"loss.temperature": {"uniform": [0.05, 0.1]}}}),
     "recipes.supervised: search.loss.temperature is read only by train.recipe contrastive | video | hybrid"),
    (changed(supervised={"train_config": "tiny"}), "recipes.supervised: train_config tiny trains train.recipe "
                                                   "'contrastive', not 'supervised'"),
    (changed(supervised={"train_config": "sup_cpu", "set": {"train.max_iterations": 8}}),
     "recipes.supervised: set.train.max_iterations is the sweep's one budget"),
    (changed(nope={"train_config": "tiny"}), "recipes.nope: train.recipe 'nope' is not a recipe"),
    (changed(contrastive={"train_config": "tiny", "search": {"loss.temperature": {"grid": [0.05, 0.1]}}}),
     "a grid inside one recipe"),
    (changed(contrastive={"train_config": "tiny", "searh": {}}), "recipes.contrastive: unknown key 'searh'"),
    ({**TWO_RECIPES, "train_config": "tiny"}, "'train_config' belongs under recipes.<name>"),
    ({**TWO_RECIPES, "tune": {"searcher": "optuna"}}, "tune.searcher 'optuna' is not built for a sweep across"),
    ({**TWO_RECIPES, "recipes": {"contrastive": TWO_RECIPES["recipes"]["contrastive"]}}, "two or more"),
    ({**TWO_RECIPES, "tune": {"final_eval": ["reid", "market1501"]}}, "tune.final_eval: unknown ['market1501']"),
])
def test_a_sweep_across_recipes_refuses_what_it_cannot_run(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=None) as err:
        load_sweep(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_the_teacher_recipe_is_not_swept(tmp_path):
    data = changed(teacher={"train_config": "teacher_cpu"})
    with pytest.raises(ConfigError, match="recipes.teacher: train.recipe 'teacher' is not swept"):
        load_sweep(write(tmp_path, data))


def test_the_final_evaluation_refuses_a_data_root_without_the_test_reports(tmp_path, tiny_world):
    """Checked before any trial: a sweep must not end on a missing test split."""
    from jobs._final_eval import check_final_inputs

    spec = load_sweep("tune_recipes_cpu", ["teacher.embeddings=/store", f"data.root={tiny_world}"])
    assert spec.tune.final_eval == ("reid", "mot")
    check_final_inputs(spec.base, spec.tune.final_eval, "S")  # the tiny world holds both
    empty = tmp_path / "world"
    (empty / "MOT17" / "train").mkdir(parents=True)
    bare = load_sweep("tune_recipes_cpu", ["teacher.embeddings=/store", f"data.root={empty}"])
    with pytest.raises(ConfigError, match=r"S: tune.final_eval \['reid', 'mot'\] reads the test reports under "
                                          r"data.root: .*manifest.json"):
        check_final_inputs(bare.base, bare.tune.final_eval, "S")
    with pytest.raises(ConfigError, match="no MOT sequences|MOT17/train"):
        check_final_inputs(bare.base, ("mot",), "S")


def test_a_recipe_whose_final_evaluation_fails_is_recorded_and_the_others_go_on(tmp_path, tiny_world):
    """No checkpoint kept, or one that does not load: the error is recorded under the recipe, nothing raised."""
    from jobs._final_eval import evaluate_best_trials

    spec = load_sweep("tune_recipes_cpu", ["teacher.embeddings=/store", f"data.root={tiny_world}"])
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(b"not a checkpoint")
    trials = {"kd": {"trial_id": "t0", "mlflow_run_id": ""}, "supervised": {"trial_id": "t1", "mlflow_run_id": ""}}
    record = evaluate_best_trials(trials, {"t0": None, "t1": (str(broken), 300)}, spec.base, ("reid",),
                                  tmp_path / "sweep", "", "kdtrack")
    assert record["kd"]["error"] == "the trial kept no checkpoint"
    assert record["supervised"]["iteration"] == 300 and str(broken) in record["supervised"]["error"]
    assert "reid" not in record["supervised"]
