"""Every recipe of jobs.train on two gloo workers (DDP), a few iterations each, ending with finite losses
and a checkpoint.

A one-worker run never wraps the model in DDP, so a recipe that leaves a head or parameter without a
gradient (the detection recipe's embedding head did) only fails once a second worker joins. The recipes
come from ``jobs.train.RECIPES``: a new recipe fails ``test_every_recipe_has_a_two_worker_case`` until it
gets its inputs here. Each fit is a smoke test (two iterations) of a small student on the tiny world.

Most of a fit's time is Ray starting processes and waiting on them, so the fits run two at a time on the
test cluster (``jobs.train.main`` in a Ray task each, a quarter CPU per worker); each case's test checks its own
fit's result.
"""

from __future__ import annotations

import math
import shutil
import typing
from pathlib import Path

import pytest
import torch

from jobs import pseudo_label
from jobs.train import RECIPES, get_args_parser, main
from kdtrack.checkpoint import load_checkpoint, save_checkpoint
from kdtrack.config import TrainConfig, load_config
from kdtrack.models import build_student, build_teacher

# two fits side by side fit 2 CPUs: 2 x 2 workers x 0.25
# each rank reads its own stride of the records (data.loader=torch): what a second worker tests is DDP, not the
# input stream (tests/test_train_job.py runs two workers on the Ray Data stream), and a fit without a decode
# actor starts in half the time
TWO_WORKERS = ["train.num_workers=2", "train.cpus_per_worker=0.25", "train.log_every=1", "data.loader=torch"]
CONCURRENT_FITS = 2
SMALL_STUDENT = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
                 "model.deformable=false", "loss.queue_size=256", "train.batch_size_per_worker=2"]
SMALL_TEACHER = ["teacher.width=8", "teacher.feature_dim=32", "teacher.crop_height=64", "teacher.crop_width=32",
                 "teacher.train_p=4", "teacher.train_k=2"]

# (recipe, train.freeze): every recipe, plus the freeze variants the IDF stages use (stage 2 fixes the
# detection heads, stage 3 the body and the identity head)
CASES = [(recipe, ()) for recipe in RECIPES] + [("video", ("detection",)), ("detection", ("body", "identity"))]


def test_every_recipe_has_a_two_worker_case():
    assert set(RECIPES) == set(SETUPS), "give each recipe of jobs.train.RECIPES its inputs in SETUPS"
    # the config's recipe field and the job's list agree (a recipe added to one only is caught here)
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["recipe"])) == set(RECIPES)


@pytest.fixture(scope="module")
def oracle_labels(tiny_world: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oracle")
    pseudo_label.main(["--oracle-truth", "--videos", str(tiny_world / "kinetics"), "--out", str(out)])
    return out / "labels.parquet"


def _detection(tmp: Path, request) -> tuple[str, list[str]]:
    return "tiny", [*SMALL_STUDENT, "train.recipe=detection", "loss.id_mode=none"]


def _contrastive(tmp: Path, request) -> tuple[str, list[str]]:
    return "tiny", SMALL_STUDENT


def _video(tmp: Path, request) -> tuple[str, list[str]]:
    labels = request.getfixturevalue("oracle_labels")
    cfg = load_config("tiny", SMALL_STUDENT)
    init = save_checkpoint(tmp / "stage1", model=build_student(cfg.model), config=cfg, iteration=1)
    return "tiny", [*SMALL_STUDENT, "train.recipe=video", "loss.id_mode=contrastive", f"data.pseudo_labels={labels}",
                    f"train.init_from={init}"]


def _video_classify(tmp: Path, request) -> tuple[str, list[str]]:
    _, overrides = _video(tmp, request)
    return "idf_classify_cpu", [o for o in overrides if not o.startswith(("train.recipe", "loss.id_mode"))]


def _kd(tmp: Path, request) -> tuple[str, list[str]]:
    teacher_cfg = load_config("teacher_cpu")  # its feature_dim is kd_cpu's model.embedding_dim
    ckpt = save_checkpoint(tmp / "teacher", model=build_teacher(teacher_cfg.teacher, num_classes=5), config=teacher_cfg)
    return "kd_cpu", [*SMALL_STUDENT, f"teacher.checkpoint={ckpt}"]


def _supervised(tmp: Path, request) -> tuple[str, list[str]]:
    return "sup_cpu", SMALL_STUDENT


def _teacher(tmp: Path, request) -> tuple[str, list[str]]:
    return "teacher_cpu", SMALL_TEACHER


SETUPS = {"detection": _detection, "contrastive": _contrastive, "video": _video, "kd": _kd,
          "supervised": _supervised, "video_classify": _video_classify, "teacher": _teacher}


def _argv(recipe, freeze, tmp: Path, world: Path, mlflow_uri: str, request) -> list[str]:
    torch.manual_seed(0)
    preset, overrides = SETUPS[recipe](tmp, request)
    overrides = [*overrides, *TWO_WORKERS]
    if freeze:
        overrides.append(f"train.freeze=[{','.join(freeze)}]")
    return ["--config", preset, "--data-root", str(world), "--out", str(tmp / "out"),
            "--mlflow-uri", mlflow_uri, "--smoke-test", *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture(scope="module")
def two_worker_fits(ray_session, tiny_world, empty_mlflow_db, tmp_path_factory, request):
    """``fit(recipe, freeze)``: ``jobs.train.main``'s result for that case. The cases this run selected start
    in ``CASES`` order, ``CONCURRENT_FITS`` at a time, each as a Ray task on the test cluster."""
    selected = [(item.callspec.params["recipe"], item.callspec.params["freeze"]) for item in request.session.items
                if getattr(item, "originalname", "") == "test_recipe_trains_on_two_workers"]
    pending = [case for case in CASES if case in selected]
    refs: dict = {}

    @ray_session.remote(num_cpus=0, max_retries=0)
    def train(argv):
        return main(get_args_parser().parse_args(argv))

    def start_next():
        recipe, freeze = case = pending.pop(0)
        tmp = tmp_path_factory.mktemp(recipe)
        shutil.copyfile(empty_mlflow_db, tmp / "mlflow.db")
        refs[case] = train.remote(_argv(recipe, freeze, tmp, tiny_world, f"sqlite:///{tmp / 'mlflow.db'}", request))

    def running():
        done, _ = ray_session.wait(list(refs.values()), num_returns=len(refs), timeout=0) if refs else ([], [])
        return [ref for ref in refs.values() if ref not in done]

    def fit(recipe, freeze):
        case = (recipe, freeze)
        if case not in refs and case not in pending:
            pending.insert(0, case)
        while True:
            while pending and len(running()) < CONCURRENT_FITS:
                start_next()
            if case in refs and ray_session.wait([refs[case]], timeout=0)[0]:
                return ray_session.get(refs[case])
            ray_session.wait(running(), num_returns=1)  # a slot frees (maybe this case's fit ends)

    yield fit
    for ref in running():  # a test that failed before asking for its fit
        ray_session.cancel(ref, force=True)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("recipe, freeze", CASES, ids=[r + ("-" + "+".join(f) if f else "") for r, f in CASES])
def test_recipe_trains_on_two_workers(recipe, freeze, two_worker_fits):
    result = two_worker_fits(recipe, freeze)
    state = load_checkpoint(result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].train.recipe == recipe
    assert state["config"].train.num_workers == 2
    losses = {k: v for k, v in result["metrics"].items() if k.startswith("train/") and isinstance(v, float)}
    assert "train/total" in losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
