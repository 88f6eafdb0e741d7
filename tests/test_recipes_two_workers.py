"""Every recipe of jobs.train on two gloo workers (DDP), a few iterations each, ending with finite losses
and a checkpoint.

A one-worker run never wraps the model in DDP, so a recipe that leaves a head or parameter without a
gradient (the detection recipe's embedding head did) only fails once a second worker joins. The recipes
come from ``jobs.train.RECIPES``: a new recipe fails ``test_every_recipe_has_a_two_worker_case`` until it
gets its inputs here. Each fit is a smoke test (two iterations) of a small student on the tiny world.

Most of a fit's time is Ray starting processes and waiting on them, so the fits run two at a time on the
test cluster (``jobs.train.main`` in a Ray task each, a quarter CPU per worker); each case's test checks its own
fit's result. A few cases carry more checks, in tests of their own that ask for the same pooled fit: the
contrastive case on the Ray Data stream (queue, per-iteration logging), the kd case (the teacher checkpoint it
distils) and IDF stage 2's (the init weights, the frozen detection heads).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import pseudo_label
from jobs.train import RECIPES, get_args_parser, main
from kdtrack.checkpoint import load_checkpoint, save_checkpoint
from kdtrack.config import TrainConfig, load_config
from kdtrack.models import build_student, build_teacher

# two fits side by side fit 2 CPUs: 2 x (2 workers x 0.25 + a 0.25-CPU decode actor on the Ray Data stream)
# most cases: each rank reads its own stride of the records (data.loader=torch): what a second worker tests is DDP,
# and a fit without a decode actor starts in half the time
TWO_WORKERS = ["train.num_workers=2", "train.cpus_per_worker=0.25", "train.log_every=1", "data.loader=torch"]
# these cases run on the Ray Data stream instead (Ray Train splits it between the two ranks): the student's
# records (contrastive, kd) and IDF stage 2's pseudo-labelled clip pairs
RAY_STREAM_CASES = {("contrastive", ()), ("kd", ()), ("video", ("detection",))}
RAY_STREAM = ["data.loader=ray", "data.map_num_cpus=0.25"]
INIT_FROM = "--init-from"  # in a setup's overrides: passed as jobs.train's --init-from flag, not as a --set
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
    # iteration 7: --init-from takes the weights only, the run still counts its own 2 iterations
    init = save_checkpoint(tmp / "stage1", model=build_student(cfg.model), config=cfg, iteration=7)
    return "tiny", [*SMALL_STUDENT, "train.recipe=video", "loss.id_mode=contrastive", f"data.pseudo_labels={labels}",
                    f"{INIT_FROM}={init}"]


def _video_classify(tmp: Path, request) -> tuple[str, list[str]]:
    _, overrides = _video(tmp, request)
    return "idf_classify_cpu", [o for o in overrides if not o.startswith(("train.recipe", "loss.id_mode"))]


def _kd(tmp: Path, request) -> tuple[str, list[str]]:
    teacher_cfg = load_config("teacher_cpu")  # its feature_dim is kd_cpu's model.embedding_dim
    ckpt = save_checkpoint(tmp / "teacher", model=build_teacher(teacher_cfg.teacher, num_classes=5), config=teacher_cfg)
    return "kd_cpu", [*SMALL_STUDENT, f"teacher.checkpoint={ckpt}"]


def _hybrid(tmp: Path, request) -> tuple[str, list[str]]:
    _, overrides = _kd(tmp, request)
    return "hybrid_cpu", overrides


def _supervised(tmp: Path, request) -> tuple[str, list[str]]:
    return "sup_cpu", SMALL_STUDENT


def _teacher(tmp: Path, request) -> tuple[str, list[str]]:
    return "teacher_cpu", SMALL_TEACHER


SETUPS = {"detection": _detection, "contrastive": _contrastive, "video": _video, "kd": _kd,
          "supervised": _supervised, "video_classify": _video_classify, "hybrid": _hybrid, "teacher": _teacher}


def _argv(recipe, freeze, tmp: Path, world: Path, mlflow_uri: str, request) -> list[str]:
    torch.manual_seed(0)
    preset, overrides = SETUPS[recipe](tmp, request)
    overrides = [*overrides, *TWO_WORKERS, *(RAY_STREAM if (recipe, freeze) in RAY_STREAM_CASES else [])]
    if freeze:
        overrides.append(f"train.freeze=[{','.join(freeze)}]")
    flags = [a for o in overrides if o.startswith(INIT_FROM + "=") for a in o.split("=", 1)]
    sets = [a for o in overrides if not o.startswith(INIT_FROM + "=") for a in ("--set", o)]
    return ["--config", preset, "--data-root", str(world), "--out", str(tmp / "out"),
            "--mlflow-uri", mlflow_uri, "--smoke-test", *flags, *sets]


@dataclasses.dataclass(frozen=True)
class Fit:
    """One case's fit: ``jobs.train.main``'s result and the command line it ran."""

    result: dict[str, Any]
    argv: list[str]

    def flag(self, name: str) -> str:
        return self.argv[self.argv.index(name) + 1]

    def setting(self, key: str) -> str:
        (value,) = [a.split("=", 1)[1] for a in self.argv if a.startswith(key + "=")]
        return value


@pytest.fixture(scope="module")
def two_worker_fits(ray_session, tiny_world, empty_mlflow_db, tmp_path_factory, request):
    """``fit(recipe, freeze)``: that case's :class:`Fit`. The cases this run selected (the matrix's, and those
    of the ``CASE_CHECKS`` tests) start in ``CASES`` order, ``CONCURRENT_FITS`` at a time, each as a Ray task on
    the test cluster."""
    selected = {(item.callspec.params["recipe"], item.callspec.params["freeze"]) for item in request.session.items
                if getattr(item, "originalname", "") == "test_recipe_trains_on_two_workers"}
    selected |= {CASE_CHECKS[item.name] for item in request.session.items if item.name in CASE_CHECKS}
    pending = [case for case in CASES if case in selected]
    refs: dict = {}
    argvs: dict = {}

    @ray_session.remote(num_cpus=0, max_retries=0)
    def train(argv):
        return main(get_args_parser().parse_args(argv))

    def start_next():
        recipe, freeze = case = pending.pop(0)
        tmp = tmp_path_factory.mktemp(recipe)
        shutil.copyfile(empty_mlflow_db, tmp / "mlflow.db")
        argvs[case] = _argv(recipe, freeze, tmp, tiny_world, f"sqlite:///{tmp / 'mlflow.db'}", request)
        refs[case] = train.remote(argvs[case])

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
                return Fit(ray_session.get(refs[case]), argvs[case])
            ray_session.wait(running(), num_returns=1)  # a slot frees (maybe this case's fit ends)

    yield fit
    for ref in running():  # a test that failed before asking for its fit
        ray_session.cancel(ref, force=True)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("recipe, freeze", CASES, ids=[r + ("-" + "+".join(f) if f else "") for r, f in CASES])
def test_recipe_trains_on_two_workers(recipe, freeze, two_worker_fits):
    result = two_worker_fits(recipe, freeze).result
    state = load_checkpoint(result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].train.recipe == recipe
    assert state["config"].train.num_workers == 2
    assert state["config"].data.loader == ("ray" if (recipe, freeze) in RAY_STREAM_CASES else "torch")
    losses = {k: v for k, v in result["metrics"].items() if k.startswith("train/") and isinstance(v, float)}
    assert "train/total" in losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_on_the_ray_stream_fill_the_queue_and_log_every_iteration(two_worker_fits):
    """The contrastive case: two Ray Train workers (gloo) train one DDP model on the Ray Data stream, which Ray
    Train splits between them; the negative queue is filled and rank 0 logs every iteration (train.log_every=1).
    The terms logged are the mean over the ranks (kdtrack.losses.distributed.mean_over_ranks, checked on a real
    2-process group in tests/test_losses_distributed.py)."""
    from mlflow.tracking import MlflowClient

    result = two_worker_fits("contrastive", ()).result
    state = load_checkpoint(result["checkpoint"])
    assert state["config"].data.loader == "ray"
    assert state["iteration"] == 2  # 2 iterations x 2 images x 2 workers = the smoke test's 8 records
    assert math.isfinite(result["metrics"]["train/total"])
    assert int(state["criterion"]["contrastive.queue_fill"]) > 0
    history = MlflowClient(result["mlflow_uri"]).get_metric_history(result["mlflow_run_id"], "train/perf/images_per_s")
    assert {m.step for m in history} == {1, 2}


@pytest.mark.ray
@pytest.mark.slow
def test_two_worker_kd_run_distils_the_teacher_checkpoint_it_was_given(two_worker_fits):
    """kd_cpu on the Ray Data stream: the teacher comes from a checkpoint (a freshly built tiny teacher saved as
    train.recipe=teacher saves it; kd without one is refused on the driver, tests/test_train_job.py), distilled
    with kd_cpu's per-object reduction into a positive, finite identity term."""
    fit = two_worker_fits("kd", ())
    state = load_checkpoint(fit.result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].train.recipe == "kd"
    assert state["config"].data.loader == "ray"
    assert state["config"].teacher.checkpoint == fit.setting("teacher.checkpoint")
    assert load_checkpoint(state["config"].teacher.checkpoint)["config"].train.recipe == "teacher"
    assert state["config"].loss.kd_reduction == "sum_per_object"
    assert math.isfinite(fit.result["metrics"]["train/id"]) and fit.result["metrics"]["train/id"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_two_worker_hybrid_run_trains_both_identity_terms(two_worker_fits):
    """hybrid_cpu with the online teacher (a checkpoint, as KD's case): both identity terms are finite and
    positive, the queue was filled and the three Kendall log-variances are checkpointed."""
    fit = two_worker_fits("hybrid", ())
    state = load_checkpoint(fit.result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].train.recipe == "hybrid"
    assert state["config"].teacher.checkpoint == fit.setting("teacher.checkpoint")
    metrics = fit.result["metrics"]
    assert all(math.isfinite(metrics[k]) and metrics[k] > 0 for k in ("train/id/kd", "train/id/contrastive"))
    assert int(state["criterion"]["contrastive.queue_fill"]) > 0
    assert {"uncertainty.s_det", "uncertainty.s_id", "uncertainty.s_contrastive"} <= set(state["criterion"])


@pytest.mark.ray
@pytest.mark.slow
def test_two_worker_video_run_starts_from_the_init_weights_and_keeps_the_detection_heads_frozen(two_worker_fits):
    """IDF stage 2 (train.recipe=video, train.freeze=[detection]) on the Ray Data stream of clip pairs:
    --init-from loads the stage-1 network's weights only (the run counts its own 2 iterations, not on from the
    init's 7); the detection heads end equal to the init's, the identity head moved."""
    fit = two_worker_fits("video", ("detection",))
    start, end = load_checkpoint(fit.flag("--init-from")), load_checkpoint(fit.result["checkpoint"])
    assert start["iteration"] == 7 and end["iteration"] == 2
    assert end["config"].data.loader == "ray"
    assert end["config"].train.init_from == str(Path(fit.flag("--init-from")).resolve())
    frozen = [k for k in start["model"] if k.startswith(("heads.heatmap", "heads.size", "heads.offset"))]
    assert frozen
    for key in frozen:
        assert torch.equal(start["model"][key], end["model"][key]), key
    assert not all(torch.equal(start["model"][k], end["model"][k]) for k in start["model"]
                   if k.startswith("heads.embedding"))


# the tests above that check one case further, and their case: it joins the pool when the matrix's is not selected
CASE_CHECKS = {
    test_two_workers_on_the_ray_stream_fill_the_queue_and_log_every_iteration.__name__: ("contrastive", ()),
    test_two_worker_kd_run_distils_the_teacher_checkpoint_it_was_given.__name__: ("kd", ()),
    test_two_worker_video_run_starts_from_the_init_weights_and_keeps_the_detection_heads_frozen.__name__:
        ("video", ("detection",)),
}
