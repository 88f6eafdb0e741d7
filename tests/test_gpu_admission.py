"""GPU admission on the driver and GPU placement in Ray actors, with Ray's GPU ids and resources faked.

More train workers than GPUs leaves Ray Train retrying to schedule them forever (no error, no output):
refused before anything starts, as the CPU check already does. An actor that reserved no GPU must not
use one: Ray 2.60 no longer hides a node's GPUs from it, so ``torch.cuda.is_available()`` says yes.
"""

from __future__ import annotations

import pytest
import torch

from data_pipelines import teacher_embeddings as pipeline
from jobs.train import check_cluster_gpus, get_args_parser, main
from kdtrack.config import ConfigError, load_config, training_gpus


class FakeRay:
    def __init__(self, cluster: dict[str, float]) -> None:
        self.cluster = cluster

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.cluster)


def test_more_gpu_workers_than_cluster_gpus_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    four = load_config("tiny", ["train.use_gpu=true", "train.num_workers=4"])
    assert training_gpus(four) == 4.0
    with pytest.raises(ConfigError, match=r"needs 4 GPUs \(train.num_workers 4 x 1 GPU per worker.*cluster has 2: "
                                          r"lower train.num_workers to 2"):
        check_cluster_gpus(four, FakeRay({"CPU": 16.0, "GPU": 2.0}))
    with pytest.raises(ConfigError, match=r"cluster has 0.*or set train.use_gpu=false"):
        check_cluster_gpus(four, FakeRay({"CPU": 16.0}))
    check_cluster_gpus(four, FakeRay({"CPU": 16.0, "GPU": 4.0}))  # fits
    check_cluster_gpus(load_config("tiny", ["train.num_workers=4"]), FakeRay({"CPU": 16.0}))  # CPU training
    # joining a cluster (which may autoscale): a warning, not a refusal
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    check_cluster_gpus(four, FakeRay({"CPU": 16.0, "GPU": 2.0}))
    assert "warning: the run needs 4 GPUs" in capsys.readouterr().out


def test_a_tune_trial_needing_more_gpus_than_the_cluster_is_refused():
    from tune.spec import check_resources, load_sweep

    spec = load_sweep("tune_idf_cpu", ["train.use_gpu=true", "train.num_workers=2"])
    with pytest.raises(ConfigError, match=r"one trial needs 2 GPUs.*cluster has 1"):
        check_resources(spec, 64.0, 1.0)
    check_resources(spec, 64.0, 2.0)


@pytest.mark.ray
def test_the_train_job_refuses_gpu_workers_on_a_cpu_cluster_before_ray_train(ray_session, tiny_world, tmp_path,
                                                                             monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--config", "tiny", "--data-root", str(tiny_world), "--out", str(tmp_path), "--smoke-test",
            "--set", "train.use_gpu=true", "--set", "train.cpus_per_worker=0.5"]
    with pytest.raises(ConfigError, match=r"needs 1 GPUs .* cluster has 0"):
        main(get_args_parser().parse_args(argv))
    assert not (tmp_path / "ray_results").exists()  # Ray Train never started


@pytest.mark.parametrize("gpu_ids, cuda, expected", [([], True, "cpu"), ([0], True, "cuda"), ([0], False, "cpu"),
                                                     ([], False, "cpu")])
def test_teacher_actors_take_the_device_ray_granted(monkeypatch, gpu_ids, cuda, expected):
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: list(gpu_ids))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pipeline.granted_device().type == expected
    built = {}
    monkeypatch.setattr(ray, "get", lambda ref: ref)  # the weights "in the object store" are the dict itself
    monkeypatch.setattr(pipeline, "frozen_teacher", lambda cfg, weights, device: built.setdefault("device", device))
    cfg = load_config("tiny")
    from kdtrack.config import config_to_dict

    actor = pipeline.TeacherEmbedder(config_to_dict(cfg), config_to_dict(cfg), [{}], crop_batch=8)
    assert actor.device.type == expected and built["device"].type == expected


@pytest.mark.parametrize("gpu_ids, cuda, expected", [([0], True, "cuda/fp16-autocast/deform_conv2d"),
                                                     ([], True, "cpu/fp32/grid_sample"),
                                                     ([0], False, "cpu/fp32/grid_sample")])
def test_inference_actors_name_the_numeric_path_of_the_device_ray_granted(monkeypatch, gpu_ids, cuda, expected):
    # a GPU actor runs fp16 autocast and torchvision's deformable conv, a CPU one fp32 and grid_sample: each
    # evaluation result names its path (jobs._inference_pool.numeric_paths reports a pool that mixed them)
    import ray

    from jobs._inference_pool import InferenceWorker
    from kdtrack.config import config_to_dict
    from kdtrack.inference import numeric_path

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: list(gpu_ids))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = load_config("tiny", ["train.amp=true", "model.deformable=true"])
    worker = InferenceWorker(config_to_dict(cfg))  # no device passed: as in an actor
    assert numeric_path(cfg, worker.device) == expected
    assert numeric_path(load_config("tiny", ["model.deformable=false", "train.amp=false"]), worker.device) == (
        expected.split("/")[0] + "/fp32")


def test_the_teacher_pool_uses_free_gpus_or_falls_back_to_cpu_saying_so():
    # auto (-1): a GPU per actor only when every actor finds a free one now
    assert pipeline.pool_gpus(-1, 2, {"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2}) == (1.0, "")
    gpus, note = pipeline.pool_gpus(-1, 2, {"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 0})  # training holds them
    assert gpus == 0.0 and "teacher actors on CPU: 0 of the cluster's 2 GPUs are free" in note
    assert pipeline.pool_gpus(-1, 1, {"CPU": 8}, {"CPU": 8}) == (0.0, "")  # no GPU at all: nothing to say
    # an explicit request is kept, unless the cluster cannot ever hold the pool
    assert pipeline.pool_gpus(1, 2, {"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 0}) == (1.0, "")
    with pytest.raises(ValueError, match=r"--gpus-per-actor 1 x --actors 3 = 3 GPUs, but the cluster has 2"):
        pipeline.pool_gpus(1, 3, {"CPU": 8, "GPU": 2}, {"CPU": 8, "GPU": 2})
