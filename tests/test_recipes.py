"""The recipe table: one declaration per recipe, read by every job that used to compare recipe names."""

from __future__ import annotations

import typing

import pytest

from kdtrack.config import ConfigError, TrainConfig, load_config
from kdtrack.recipes import RECIPES, check_recipe_rules, get_recipe, recipe_of, recipe_only_fields


def test_the_table_holds_every_recipe_of_the_config_field():
    assert set(RECIPES) == set(typing.get_args(typing.get_type_hints(TrainConfig)["recipe"]))
    assert list(RECIPES) == ["detection", "contrastive", "kd", "video", "supervised", "video_classify",
                            "hybrid", "teacher"]  # jobs.train's order
    with pytest.raises(ConfigError, match=r"train.recipe 'nope' is not a recipe \(known: detection, contrastive"):
        get_recipe("nope")


def test_what_each_recipe_declares():
    # the id modes jobs.train required of each student recipe; the teacher trains no student
    assert {name: r.id_mode for name, r in RECIPES.items() if r.student} == {
        "detection": "none", "contrastive": "contrastive", "kd": "kd", "video": "contrastive",
        "supervised": "supervised", "video_classify": "supervised", "hybrid": "hybrid"}
    assert [name for name, r in RECIPES.items() if not r.student] == ["teacher"]
    assert [name for name, r in RECIPES.items() if r.key_encoder] == ["contrastive", "video", "hybrid"]
    assert [name for name, r in RECIPES.items() if r.classifier] == ["kd", "supervised", "video_classify"]
    assert [name for name, r in RECIPES.items() if r.items == "clips"] == ["video", "video_classify"]
    assert [name for name, r in RECIPES.items() if r.views == 2] == ["contrastive", "hybrid"]  # video pairs frames itself
    assert [name for name, r in RECIPES.items() if r.reads_teacher] == ["kd", "hybrid", "teacher"]
    assert [name for name, r in RECIPES.items() if not r.sweepable] == ["teacher"]
    assert recipe_of(load_config("kd_cpu")).distils and recipe_of(load_config("teacher_cpu")).items == "crops"


def test_fields_a_sweep_may_search_only_for_their_recipes():
    contrastive, classifier = ("contrastive", "video", "hybrid"), ("kd", "supervised", "video_classify")
    metric, kendall = ("supervised", "video_classify"), ("kd", "supervised", "video_classify", "hybrid")
    assert recipe_only_fields() == {
        "loss.eta": ("kd",), "loss.kd_reduction": ("kd", "hybrid"), "loss.s_contrastive_init": ("hybrid",),
        "loss.num_id_classes": classifier, "loss.s_det_init": kendall, "loss.s_id_init": kendall,
        "train.classifier_lr_mult": classifier, "loss.supervised_memory": metric,
        "loss.supervised_metric_weight": metric, "loss.supervised_temperature": metric,
        "loss.temperature": contrastive, "loss.queue_size": contrastive, "loss.key_momentum": contrastive,
        "loss.batch_negatives": contrastive, "loss.id_weight": ("contrastive", "video"),
        "loss.centre_region_radius": contrastive,
        "loss.nn_positives": contrastive, "loss.key_positives": contrastive,
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


def test_the_hybrid_refuses_what_either_parent_cannot_train(tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights")  # the rules check that it is a file; jobs.train loads it
    ok = [f"teacher.checkpoint={teacher}"]
    assert check_recipe_rules(load_config("hybrid_cpu", ok)).name == "hybrid"
    for overrides, message in [
        (["loss.id_mode=contrastive"], "train.recipe 'hybrid' needs loss.id_mode=hybrid"),
        (["data.sources=[crowdhuman,kinetics]"], r"'hybrid' \(IDF stage 1's contrastive term\).*\['kinetics'\]"),
        (["loss.eta=0.5", "loss.num_id_classes=8"], "soft targets only"),
        (["model.normalize_embedding=true"], "set model.normalize_embedding=false"),
        (["model.embedding_dim=64"], r"'hybrid': model.embedding_dim \(64\) must equal the teacher's feature "
                                     r"dimension \(128\)"),
        ([], "'hybrid' distils a trained Re-ID teacher, but teacher.checkpoint is empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_recipe_rules(load_config("hybrid_cpu", [*(ok if overrides else []), *overrides]))
