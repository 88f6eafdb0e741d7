"""jobs.gpu_check's CPU parts: the no-GPU exit, every recipe's synthetic train steps, the deformable
comparison and the report, all on the CPU at small sizes (the GPU run is the same code on CUDA)."""

from __future__ import annotations

import math

import pytest
import torch

from jobs import gpu_check
from jobs.train import RECIPES


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no GPU: torch.cuda.is_available() is False")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_takes_finite_steps_on_synthetic_batches(recipe):
    small = ["model.input_width=128", "model.input_height=64", "model.width=8", "model.head_conv=16",
             "teacher.width=8", "teacher.crop_height=64", "teacher.crop_width=32"]
    result = gpu_check.run_recipe(recipe, torch.device("cpu"), iterations=2, amp=False, overrides=small)
    assert result["finite"] and len(result["losses"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in result["losses"])


def test_a_recipe_without_a_synthetic_batch_is_named():
    with pytest.raises(KeyError, match="no synthetic batch for train.recipe 'mystery'"):
        gpu_check.recipe_config("mystery")


def test_the_deformable_paths_agree_on_the_cpu():
    d = gpu_check.deform_comparison(torch.device("cpu"), size=(12, 20), channels=8)
    assert d["fp32/grid_sample"] < 1e-5  # the same operator, float32
    assert d["amp/torchvision"] < gpu_check.DEFORM_TOLERANCE["amp"]  # bfloat16 autocast on the CPU
    assert d["amp/grid_sample"] < gpu_check.DEFORM_TOLERANCE["amp"]
    # the student on the CPU against itself: the comparison is exact when nothing differs
    same = gpu_check.student_cpu_vs_device(torch.device("cpu"), amp=False)
    assert same["heatmap_max_abs"] == 0.0 and same["embedding_min_cos"] > 0.9999


def test_the_cpu_report_fits_one_screen_and_passes(capsys):
    code = gpu_check.main(["--device", "cpu", "--skip", "recipes", "--fps-size", "128x64", "--fps-iterations", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[-1] == "GPU check: ready"
    assert any(line.startswith("deformable conv vs torchvision fp32") and line.rstrip().endswith("ok") for line in out)
    assert any("DLA-34 student network FPS at 128x64" in line for line in out)
    assert len(out) <= 25
