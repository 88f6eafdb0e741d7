"""The diagnostic controls of ``bench/idf_stages.py`` (docs/results/idf-stage1.md) do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from kdtrack.config import load_config
from kdtrack.data.dataset import TrainingDataset, load_records, training_sample
from kdtrack.models import build_student

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idf_stages():
    spec = importlib.util.spec_from_file_location("idf_stages_bench", ROOT / "bench" / "idf_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ps_config(tiny_world: Path):
    return load_config("idf_cpu", [f"data.root={tiny_world}", "data.sources=[person_search]"])


def test_identity_batches_share_a_person_and_are_seeded(idf_stages, ps_config):
    dataset = TrainingDataset(load_records(ps_config), ps_config, views=2)
    batches = idf_stages.identity_batches(dataset, 4, seed=0, epoch=0)
    assert len(batches) == len(dataset) // 4
    for batch in batches:
        assert len(set(batch)) == 4
        shared = set.intersection(*({int(p) for p in dataset.items[i].ids if p > 0} for i in batch))
        assert shared, batch
    assert batches == idf_stages.identity_batches(dataset, 4, seed=0, epoch=0)
    assert batches != idf_stages.identity_batches(dataset, 4, seed=0, epoch=1)
    with pytest.raises(ValueError, match="no identity is seen in 1000 images"):
        idf_stages.identity_batches(dataset, 1000, seed=0, epoch=0)


def test_true_id_keys_replace_per_image_keys(idf_stages, ps_config, monkeypatch):
    record = next(r for r in load_records(ps_config) if (r.ids > 0).any() and (r.ids <= 0).any())
    before = training_sample(record, ps_config, np.random.default_rng(0), views=2)
    idf_stages.use_true_ids_as_keys(monkeypatch.setattr)
    after = training_sample(record, ps_config, np.random.default_rng(0), views=2)
    rows = before["box_index"]
    filled = rows >= 0
    np.testing.assert_array_equal(before["image"], after["image"])  # the same draws, only the keys differ
    expected = np.where(record.ids[rows[filled]] > 0, record.ids[rows[filled]], before["ids"][filled])
    np.testing.assert_array_equal(after["ids"][filled], expected)
    assert (before["ids"][filled] > 1 << 16).all()  # before: one key per person and image


def test_group_norm_swap_leaves_no_batchnorm(idf_stages, ps_config, monkeypatch):
    idf_stages.use_group_norm(8, monkeypatch.setattr)
    model = build_student(ps_config.model)
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.GroupNorm in kinds and not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm)
                                                   for k in kinds)
    out = model(torch.rand(2, 3, 64, 96))
    assert torch.isfinite(out["embedding"]).all()


def test_changed_transforms_holds_inside_and_restores_the_preset_after(idf_stages):
    """``--aug`` / ``--stage2-aug``: the preset a stage augments with is changed while it trains, and a later
    stage (or an exception) finds it as it was."""
    from kdtrack.data import transforms

    cfg = load_config("idf_classify_cpu")  # augments with FairMOT's "detection" preset
    before = transforms.PRESETS["detection"]
    with idf_stages.changed_transforms(cfg, ["channel_gain=0.15", "occlusion_area=(0.05, 0.2)"]):
        inside = transforms.PRESETS["detection"]
        assert inside.channel_gain == 0.15 and inside.occlusion_area == (0.05, 0.2)
        assert inside.brightness == before.brightness
    assert transforms.PRESETS["detection"] is before
    with pytest.raises(RuntimeError), idf_stages.changed_transforms(cfg, ["channel_gain=0.1"]):
        raise RuntimeError("a stage failed")
    assert transforms.PRESETS["detection"] is before
    with pytest.raises(SystemExit, match="has no transforms to change"):
        with idf_stages.changed_transforms(load_config("idf_classify_cpu", ["data.augment=none"]), ["hue=0.1"]):
            pass
