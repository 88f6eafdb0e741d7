"""The recipe table: one declaration per recipe, read by every job that used to compare recipe names."""

from __future__ import annotations

import typing

import pytest

from kdtrack.config import ConfigError, TrainConfig, load_config
from kdtrack.recipes import RECIPES, check_recipe_rules, get_recipe, recipe_of, recipe_only_fields


def test_the_table_holds_every_recipe_of_the_config_field():
    assert set(RECIPES) == set(typing.get_args(typing.get_type_hints(TrainConfig)["recipe"]))
    assert list(RECIPES) == ["detection", "contrastive", "kd", "video", "supervised", "video_classify",
                            "teacher"]  # jobs.train's order
    with pytest.raises(ConfigError, match=r"train.recipe 'nope' is not a recipe \(known: detection, contrastive"):
        get_recipe("nope")


def test_what_each_recipe_declares():
    # the id modes jobs.train required of each student recipe; the teacher trains no student
    assert {name: r.id_mode for name, r in RECIPES.items() if r.student} == {
        "detection": "none", "contrastive": "contrastive", "kd": "kd", "video": "contrastive",
        "supervised": "supervised", "video_classify": "supervised"}
    assert [name for name, r in RECIPES.items() if not r.student] == ["teacher"]
    assert [name for name, r in RECIPES.items() if r.key_encoder] == ["contrastive", "video"]
    assert [name for name, r in RECIPES.items() if r.classifier] == ["kd", "supervised", "video_classify"]
    assert [name for name, r in RECIPES.items() if r.items == "clips"] == ["video", "video_classify"]
    assert [name for name, r in RECIPES.items() if r.views == 2] == ["contrastive"]  # video pairs frames itself
    assert [name for name, r in RECIPES.items() if r.reads_teacher] == ["kd", "teacher"]
    assert [name for name, r in RECIPES.items() if not r.sweepable] == ["teacher"]
    assert recipe_of(load_config("kd_cpu")).distils and recipe_of(load_config("teacher_cpu")).items == "crops"


def test_fields_a_sweep_may_search_only_for_their_recipes():
    contrastive, classifier = ("contrastive", "video"), ("kd", "supervised", "video_classify")
    metric = ("supervised", "video_classify")
    assert recipe_only_fields() == {
        "loss.eta": ("kd",), "loss.kd_reduction": ("kd",),
        "loss.num_id_classes": classifier, "loss.s_det_init": classifier, "loss.s_id_init": classifier,
        "train.classifier_lr_mult": classifier, "loss.supervised_memory": metric,
        "loss.supervised_metric_weight": metric, "loss.supervised_temperature": metric,
        "loss.temperature": contrastive, "loss.queue_size": contrastive, "loss.key_momentum": contrastive,
        "loss.batch_negatives": contrastive, "loss.id_weight": contrastive, "loss.centre_region_radius": contrastive,
        "loss.nn_positives": contrastive,
    }


def test_each_recipe_refuses_what_it_cannot_train():
    assert check_recipe_rules(load_config("tiny")).name == "contrastive"
    with pytest.raises(ConfigError, match="train.recipe 'detection' needs loss.id_mode=none"):
        check_recipe_rules(load_config("tiny", ["train.recipe=detection"]))
    with pytest.raises(ConfigError, match=r"\['mot17'\] hold the same people"):
        check_recipe_rules(load_config("tiny", ["data.sources=[crowdhuman,mot17]"]))
    with pytest.raises(ConfigError, match="data.pseudo_labels"):
        check_recipe_rules(load_config("tiny", ["train.recipe=video"]))
    with pytest.raises(ConfigError, match="train.recipe 'video_classify' \\(IDF stage 2\\).*data.pseudo_labels"):
        check_recipe_rules(load_config("idf_classify_cpu"))
    with pytest.raises(ConfigError, match="teacher.checkpoint must be empty"):
        check_recipe_rules(load_config("teacher_cpu", ["teacher.checkpoint=/x.pt"]))
    assert check_recipe_rules(load_config("teacher_cpu", ["loss.id_mode=none"])).name == "teacher"  # id_mode unused
