"""Config loading: presets, overrides, and errors that name the key and the file."""

from __future__ import annotations

import dataclasses

import pytest

from kdtrack.config import (
    PRESET_DIR,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_config,
    flatten_config,
    load_config,
)


def test_defaults_are_frozen_and_documented_values():
    cfg = load_config()
    assert cfg.loss.temperature == 0.07 and cfg.loss.queue_size == 32768
    assert cfg.loss.id_weight == 0.2 and cfg.loss.eta == 1.0
    assert (cfg.loss.s_det_init, cfg.loss.s_id_init) == (-1.85, -1.05)
    assert cfg.tracker.gating_threshold == pytest.approx(9.4877)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_shipped_preset_loads(preset):
    assert isinstance(load_config(preset), Config)


def test_overrides_parse_yaml_values_and_nested_keys():
    cfg = load_config("tiny", ["train.lr=3e-3", "synth.people_per_image=[1, 4]", "model.deformable=false"])
    assert cfg.train.lr == pytest.approx(3e-3)
    assert cfg.synth.people_per_image == (1, 4)
    assert cfg.model.deformable is False
    # the preset's own values survive untouched fields
    assert cfg.model.backbone == "tiny"


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=1.5"])


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.learning_rate" in str(err.value) and str(path) in str(err.value)


def test_unknown_section_and_wrong_type_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(path)
    path.write_text("model:\n  backbone: vgg\n")
    with pytest.raises(ConfigError, match=r"model.backbone.*one of"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set train.use_gpu=maybe.*train.use_gpu"):
        load_config(None, ["train.use_gpu=maybe"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_config(None, ["train.nope=1"])


def test_base_chain_and_round_trip(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\ntrain:\n  lr: 0.5\n")
    cfg = load_config(child)
    assert cfg.model.backbone == "tiny" and cfg.train.lr == 0.5
    # dict round trip (the Ray boundary) and YAML dump round trip
    assert config_from_dict(config_to_dict(cfg)) == cfg
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg
    flat = flatten_config(cfg)
    assert flat["train.lr"] == 0.5 and flat["model.backbone"] == "tiny"


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")


def test_values_out_of_range_name_the_field_the_range_and_where_they_came_from(tmp_path):
    from kdtrack.config import apply_overrides, check_training

    path = tmp_path / "bad.yaml"
    path.write_text("base: tiny\nloss:\n  queue_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: loss.queue_size must be > 0 (the contrastive negative queue's length), "
                              f"got 0")
    # a --set is named with the file it changes; the last --set of a field is the one that counts
    with pytest.raises(ConfigError, match=r"^--set train.classifier_lr_mult=0 \(on .*tiny.yaml\): "
                                          r"train.classifier_lr_mult must be > 0, got 0.0$"):
        load_config("tiny", ["train.classifier_lr_mult=2", "train.classifier_lr_mult=0"])
    assert load_config(path, ["loss.queue_size=8"]).loss.queue_size == 8
    with pytest.raises(ConfigError, match=r"teacher.warmup_factor must be in \(0, 1\], got 0.0"):
        load_config("teacher_cpu", ["teacher.warmup_factor=0"])
    with pytest.raises(ConfigError, match=r"loss.key_momentum must be in \[0, 1\), got 1.0"):
        apply_overrides(load_config("idf_cpu"), ["loss.key_momentum=1"])  # a checkpoint's config, changed
    with pytest.raises(ConfigError, match=r"train.lr_steps must be fractions of training in \(0, 1\)"):
        load_config("tiny", ["train.lr_steps=[0.5, 1.0]"])
    with pytest.raises(ConfigError, match="data.map_actors must be >= 1, got 0"):
        load_config("tiny", ["data.map_actors=0"])
    with pytest.raises(ConfigError, match=r"data.paste_scale must be \[low, high\] zoom factors"):
        load_config("idf_cpu", ["data.paste_scale=[1.5, 0.5]"])
    with pytest.raises(ConfigError, match=r"data.paste_erase is a probability per pasted person, in \[0, 1\]"):
        load_config("idf_cpu", ["data.paste_erase=2"])
    with pytest.raises(ConfigError, match=r"data.white_balance is a share of each channel's level, in \[0, 1\)"):
        load_config("idf_classify_cpu", ["data.white_balance=1"])
    with pytest.raises(ConfigError, match=r"data.random_erasing is a probability per view, in \[0, 1\]"):
        load_config("idf_classify_cpu", ["data.random_erasing=-0.1"])
    # rules between fields hold for training only (an evaluation may read such a config)
    unbounded = load_config("tiny", ["train.epochs=0", "train.max_iterations=0"])
    with pytest.raises(ConfigError, match=r"train.epochs = 0 \(unbounded\) needs train.max_iterations > 0"):
        check_training(unbounded, "tiny")
    in_place = load_config("idf_cpu", ["data.paste_flip=0.5", "data.background_relayout=false"])
    with pytest.raises(ConfigError, match=r"data.paste_flip changes each person pasted into a swapped view, and "
                                          r"none is .*set data.background_swap > 0 and data.background_relayout"):
        check_training(in_place, "idf_cpu")
    check_training(load_config("idf_cpu", ["data.paste_flip=0.5", "data.paste_scale=[0.5, 1.5]"]), "idf_cpu")
    with pytest.raises(ConfigError, match=r"loss.projection_dim = 64: the projection head .* needs model.id_readout "
                                          r"centre \| centre_halves \(got 'cell'\)"):
        check_training(load_config("idf_cpu", ["loss.projection_dim=64", "model.id_readout=cell"]), "idf_cpu")
    with pytest.raises(ConfigError, match=r"loss.id_mode contrastive \| hybrid \(got 'supervised'\)"):
        check_training(load_config("sup_cpu", ["loss.projection_dim=64"]), "sup_cpu")
    check_training(load_config("idf_cpu", ["loss.projection_dim=64"]), "idf_cpu")


def test_every_range_rule_names_a_field_of_the_config():
    from kdtrack.config_checks import RULES, field_value

    cfg = Config()
    for rule in RULES:
        assert rule.ok(field_value(cfg, rule.field)), rule.field  # the defaults are inside every range
