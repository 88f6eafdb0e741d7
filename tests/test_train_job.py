"""jobs.train end to end on Ray Train: a run logged to MLflow, then a rerun that resumes; the driver's checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from jobs._model_uri import fetch_checkpoint
from jobs.train import CHECKPOINT_TAG, check_recipe, get_args_parser, main
from kdtrack.checkpoint import load_checkpoint
from kdtrack.config import ConfigError, check_ranges, load_config

# A smaller student than the tiny preset so that one fit stays ~15-30 s on 2 shared cores.
FAST = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
        "model.deformable=false", "loss.queue_size=256", "train.batch_size_per_worker=2"]


def _args(world, out, uri, *extra, storage=None, smoke=True):
    argv = ["--config", "tiny", "--data-root", str(world), "--out", str(out), "--mlflow-uri", uri]
    argv += ["--smoke-test"] if smoke else []
    if storage is not None:
        argv += ["--storage", str(storage)]
    for item in FAST + list(extra):
        argv += ["--set", item]
    return get_args_parser().parse_args(argv)


def test_storage_uri_passes_through_and_local_paths_become_absolute(tmp_path, monkeypatch):
    from jobs._storage import resolve_storage

    def storage_path(storage, out):  # what Ray Train is told, as a URI
        return resolve_storage(storage, out).uri

    monkeypatch.chdir(tmp_path)
    assert storage_path("s3://bucket/kdtrack/runs", tmp_path / "out") == "s3://bucket/kdtrack/runs"
    assert storage_path("gs://b/r", tmp_path) == "gs://b/r"
    assert storage_path("shared/runs", tmp_path / "out") == str(tmp_path / "shared" / "runs")
    assert storage_path(None, tmp_path / "out") == str(tmp_path / "out" / "ray_results")


def test_relative_weights_paths_are_resolved_and_checked_on_the_driver(tmp_path, monkeypatch):
    from jobs.train import resolve_config

    monkeypatch.chdir(tmp_path)
    args = get_args_parser().parse_args(["--out", "o", "--set", "model.pretrained=w.pt"])
    with pytest.raises(ConfigError, match="model.pretrained"):
        resolve_config(args)
    (tmp_path / "w.pt").write_bytes(b"")
    assert resolve_config(args).model.pretrained == str(tmp_path / "w.pt")


def test_recipe_must_match_the_loss():
    with pytest.raises(ConfigError, match="needs loss.id_mode=none"):
        check_recipe(load_config("tiny", ["train.recipe=detection"]))
    with pytest.raises(ConfigError, match="data.pseudo_labels"):  # IDF stage 2 needs its labels
        check_recipe(load_config("tiny", ["train.recipe=video"]))
    with pytest.raises(ConfigError, match="must equal the teacher"):
        check_recipe(load_config("tiny", ["train.recipe=kd", "loss.id_mode=kd"]))
    # IDF stage 1 assumes independent images: video frames and person-search cameras (recurring people) are refused.
    for recurring in ("mot17", "person_search"):
        with pytest.raises(ConfigError, match=rf"\['{recurring}'\] hold the same people in several images"):
            check_recipe(load_config("tiny", [f"data.sources=[crowdhuman,{recurring}]"]))
    check_recipe(load_config("tiny", ["data.sources=[crowdhuman,coco]"]))
    check_recipe(load_config("tiny", ["train.recipe=detection", "loss.id_mode=none", "data.sources=[mot17]"]))


def test_run_logs_to_mlflow_validates_at_each_report_and_resumes_inside_an_epoch(ray_session, tiny_world,
                                                                                  mlflow_uri, tmp_path, monkeypatch):
    """One training run, resumed once. train.report_every=2 reports (checkpoint + validation) at iterations 2 and
    3 of a 4-iteration epoch; everything lands in one MLflow run (params, terms, the resolved config, the final
    checkpoint as its logged model). A rerun with a longer budget is refused on the driver, naming the changed
    field, unless forced: it then resumes at iteration 3 with the criterion's state and finishes that epoch with
    its one remaining batch (SkipFirstSampler), so iteration 6 lands in epoch 1, not in a repeated epoch 0.
    data.loader=torch: the DataLoader path's resume inside an epoch (the Ray Data stream's restart is
    tests/test_fault_injection.py's; its one-worker fits are tests/test_pipeline_training.py's and the supervised
    smoke test's, its two-worker ones tests/test_recipes_two_workers.py's)."""
    out = tmp_path / "run"
    storage = tmp_path / "shared_storage"  # --storage: Ray Train's checkpoints live there, not under --out

    def args(max_iterations, *extra):
        return _args(tiny_world, out, mlflow_uri, "data.max_records=8", "train.epochs=0",
                     f"train.max_iterations={max_iterations}", "data.loader=torch", "train.report_every=2",
                     "train.val_protocols=[person_search]", "train.log_every=1", "train.keep_checkpoints=1", *extra,
                     storage=storage, smoke=False)

    first = main(args(3))
    ckpt_path = out / "checkpoint.pt"
    assert first["checkpoint"] == str(ckpt_path)
    state = load_checkpoint(ckpt_path)
    assert state["iteration"] == 3 and state["epoch"] == 0  # cut inside epoch 0 (8 records / batch 2 = 4 iterations)
    fill = int(state["criterion"]["contrastive.queue_fill"])
    assert fill > 0  # people pushed into the contrastive queue
    assert math.isfinite(first["metrics"]["train/total"])
    assert 0.0 <= first["metrics"]["val/person_search/mAP"] <= 1.0

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["kdtrack"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.train.recipe"] == "contrastive" and run["params.model.input_width"] == "160"
    assert math.isfinite(run["metrics.train/total"]) and run["metrics.train/det"] > 0
    assert run[f"tags.{CHECKPOINT_TAG}"] == str(ckpt_path)
    # the final checkpoint is the run's logged model: another machine fetches it through the tracking server
    assert first["mlflow_model_uri"].startswith("models:/")
    fetched = fetch_checkpoint(f"runs:/{first['mlflow_run_id']}/student", mlflow_uri, dst=tmp_path / "fetched")
    assert fetched.read_bytes() == ckpt_path.read_bytes()
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    history = client.get_metric_history(first["mlflow_run_id"], "val/person_search/mAP")
    assert sorted(m.step for m in history) == [2, 3]  # every report_every-th iteration and the last

    # Same --out and run name, a longer budget: a changed training field is refused on the driver, naming it
    # (the schedule would silently continue with the old milestones) ...
    with pytest.raises(ConfigError, match=r"train.max_iterations: 3 -> 6.*--resume-policy force"):
        main(args(6))
    # ... unless asked for: Ray Train hands the last checkpoint back; 6 iterations now.
    second = main(args(6, "train.resume_policy=force"))
    assert second["metrics"]["resumed_from_iteration"] == 3
    assert second["metrics"]["resumed_queue_fill"] == fill  # criterion state restored
    state2 = load_checkpoint(ckpt_path)
    assert state2["iteration"] == 6 and state2["epoch"] == 1  # epoch 0's one remaining batch, then 2 of epoch 1
    assert int(state2["criterion"]["contrastive.queue_fill"]) > fill
    # one training run = one MLflow run: the resume reopened it (id kept in the checkpoint), the curves go on
    assert second["mlflow_run_id"] == first["mlflow_run_id"] == state2["mlflow_run_id"]
    assert len(mlflow.search_runs(experiment_names=["kdtrack"])) == 1
    reopened = client.get_run(first["mlflow_run_id"])
    assert "train.max_iterations: 3 -> 6" in reopened.data.tags["kdtrack.resume_changed"]
    assert "synth.seed" not in reopened.data.params and "teacher.arch" not in reopened.data.params  # unused
    config_artifact = mlflow.artifacts.download_artifacts(run_id=first["mlflow_run_id"], artifact_path="config.yaml",
                                                          tracking_uri=mlflow_uri)
    assert load_config(config_artifact).model.input_width == 160  # the resolved config, loadable as a preset
    history = client.get_metric_history(first["mlflow_run_id"], "train/total")
    assert {1, 2, 3, 4, 5, 6} <= {m.step for m in history}
    history = client.get_metric_history(first["mlflow_run_id"], "val/person_search/mAP")
    assert sorted(m.step for m in history) == [2, 3, 4, 6]
    # the storage holds the run; CheckpointConfig(num_to_keep=1) left only the newest of its 4 checkpoints there
    assert not (out / "ray_results").exists()
    assert len(list(storage.rglob("checkpoint.pt"))) == 1
    # started once more, the run resumes already finished (a sweep trial whose node went after its last
    # checkpoint, before Tune saw its report): it trains nothing and reports that checkpoint's metrics again,
    # which a sweep's TuneReportCallback hands to Tune (here a callback that writes down what it is handed)
    import jobs.train
    from ray.train.v2.api.callback import UserCallback

    reports = tmp_path / "reports.jsonl"

    class WriteReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(reports, "a") as f:
                f.write(json.dumps({**metrics[0], "with_checkpoint": checkpoint is not None}) + "\n")

    build = jobs.train.build_trainer
    monkeypatch.setattr(jobs.train, "build_trainer", lambda *a, **k: build(*a, **k, callbacks=[WriteReports()]))
    main(args(6))
    handed = [json.loads(line) for line in reports.read_text().splitlines()]
    assert len(handed) == 1 and not handed[0]["with_checkpoint"]
    assert handed[0]["iteration"] == 6 and handed[0]["resumed_from_iteration"] == 6
    assert handed[0]["val/person_search/mAP"] == pytest.approx(state2["metrics"]["val/person_search/mAP"])
    assert load_checkpoint(ckpt_path)["iteration"] == 6


def test_kd_without_a_teacher_checkpoint_is_refused_before_ray_starts(tiny_world, mlflow_uri, tmp_path, monkeypatch):
    """kd_cpu distils a trained teacher (teacher.checkpoint; the two-worker kd fit of
    tests/test_recipes_two_workers.py distils one): without one the driver refuses the run, Ray untouched."""
    import jobs._ray

    def no_ray():
        raise AssertionError("Ray was started for a run the driver should have refused")

    monkeypatch.setattr(jobs._ray, "ensure_ray", no_ray)
    fast = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
            "model.deformable=false", "train.batch_size_per_worker=2"]
    argv = ["--config", "kd_cpu", "--data-root", str(tiny_world), "--out", str(tmp_path / "K"), "--mlflow-uri",
            mlflow_uri, "--smoke-test"]
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint is empty"):
        main(get_args_parser().parse_args(argv + [a for item in fast for a in ("--set", item)]))


def test_validation_and_report_settings_are_checked_on_the_driver(tiny_world, tmp_path):
    from jobs.train import next_report_iteration, report_due

    with pytest.raises(ConfigError, match="no images of split 'nope'"):
        check_recipe(load_config("tiny", [f"data.root={tiny_world}", "train.val_protocols=[person_search]",
                                          "train.val_split=nope"]))
    with pytest.raises(ConfigError, match="unknown"):
        check_recipe(load_config("tiny", [f"data.root={tiny_world}", "train.val_protocols=[market]"]))
    with pytest.raises(ConfigError, match="manifest"):
        check_recipe(load_config("tiny", [f"data.root={tmp_path}", "train.val_protocols=[person_search]"]))
    with pytest.raises(ConfigError, match="report_every"):
        check_recipe(load_config("tiny", ["train.report_every=-1"]))
    check_recipe(load_config("tiny", [f"data.root={tiny_world}", "train.val_protocols=[person_search]"]))

    tc = load_config("tiny", ["train.report_every=5", "train.checkpoint_every=2"]).train
    assert [next_report_iteration(tc, i, 12) for i in (0, 4, 5, 11)] == [5, 5, 10, 12]
    assert report_due(tc, epoch=0, iteration=10, epoch_done=False, finished=False)
    assert not report_due(tc, epoch=1, iteration=8, epoch_done=True, finished=False)  # epochs do not report
    assert report_due(tc, epoch=0, iteration=7, epoch_done=False, finished=True)
    by_epoch = load_config("tiny", ["train.checkpoint_every=2"]).train
    assert next_report_iteration(by_epoch, 3, 12) == 12
    assert report_due(by_epoch, epoch=1, iteration=8, epoch_done=True, finished=False)
    assert not report_due(by_epoch, epoch=0, iteration=4, epoch_done=True, finished=False)


def test_skip_first_sampler_resumes_an_epoch_where_it_stopped():
    from torch.utils.data import DistributedSampler

    from kdtrack.data.dataset import SkipFirstSampler

    inner = DistributedSampler(list(range(10)), num_replicas=1, rank=0, shuffle=True, seed=3)
    inner.set_epoch(2)
    full = list(inner)
    sampler = SkipFirstSampler(DistributedSampler(list(range(10)), num_replicas=1, rank=0, shuffle=True, seed=3), 4)
    sampler.set_epoch(2)  # forwarded: the same epoch order
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.skip = 0
    assert list(sampler) == full


def test_mlflow_sink_outage_is_a_warning_and_metrics_are_retried(capsys):
    from jobs._mlflow_train import MlflowSink

    class FlakyClient:
        def __init__(self):
            self.down, self.sent, self.status = True, [], None

        def log_batch(self, run_id, metrics=()):
            if self.down:
                raise ConnectionError("tracking server unreachable")
            self.sent.extend((m.key, m.step) for m in metrics)

        def set_terminated(self, run_id, status="FINISHED"):
            self.status = status

    client = FlakyClient()
    sink = MlflowSink(client, "run")
    sink.metrics(1, {"total": 1.0})
    sink.metrics(2, {"total": 0.5, "nan": float("nan")})
    assert client.sent == [] and len(sink.pending) == 2
    assert capsys.readouterr().out.count("warning: MLflow log_batch failed") == 1  # once per outage
    client.down = False
    sink.metrics(3, {"total": 0.25})
    assert client.sent == [("train/total", 1), ("train/total", 2), ("train/total", 3)] and sink.pending == []
    sink.finish()
    assert client.status == "FINISHED"


def test_mlflow_down_when_rank0_starts_opens_the_run_later_and_waits_between_tries(capsys):
    """An outage at rank 0's start is survived: metrics queue, the run opens on a later call, and a dead
    server is tried again only every ``retry_seconds`` (each client call to it can block for minutes)."""
    from jobs._mlflow_train import MlflowSink

    now = [0.0]
    opens = []

    class Client:
        def __init__(self):
            self.sent = []

        def log_batch(self, run_id, metrics=()):
            self.sent.extend((run_id, m.key, m.step) for m in metrics)

        def set_terminated(self, run_id, status="FINISHED"):
            self.status = status

    client = Client()

    def opener():
        opens.append(now[0])
        if now[0] < 150:
            raise ConnectionError("tracking server unreachable")
        return client, "late-run"

    sink = MlflowSink(None, "", opener=opener, retry_seconds=60, clock=lambda: now[0])
    sink._open()
    assert sink.run_id == "" and opens == [0.0]
    for step, t in ((1, 10.0), (2, 59.0)):  # inside the retry interval: queued, the server is not called
        now[0] = t
        sink.metrics(step, {"total": 1.0})
    assert opens == [0.0] and len(sink.pending) == 2
    now[0] = 61.0  # tried again, still down
    sink.metrics(3, {"total": 1.0})
    assert opens == [0.0, 61.0]
    now[0] = 100.0  # inside the second interval (61 + 60)
    sink.metrics(4, {"total": 1.0})
    assert opens == [0.0, 61.0]
    now[0] = 190.0
    sink.metrics(5, {"total": 1.0})
    assert opens == [0.0, 61.0, 190.0] and sink.run_id == "late-run"
    assert client.sent == [("late-run", "train/total", s) for s in (1, 2, 3, 4, 5)] and sink.pending == []
    out = capsys.readouterr().out
    assert out.count("warning: MLflow run start failed") == 1 and "opened by rank 0" in out
    sink.finish()
    assert client.status == "FINISHED"


def test_too_few_records_for_one_batch_is_refused_on_the_driver(tiny_world):
    from jobs.train import training_data

    cfg = load_config("tiny", [f"data.root={tiny_world}", "data.max_records=3", "train.batch_size_per_worker=2",
                               "train.num_workers=2"])
    with pytest.raises(ConfigError, match="3 training records do not fill one batch"):
        training_data(cfg)


def test_cli_a_missing_file_during_the_fit_is_a_failed_run_not_bad_input(tmp_path, monkeypatch, capsys):
    """Exit 2 means "your arguments are wrong": a FileNotFoundError raised by the fit (a file gone mid-run)
    must not be reported as one, but as a failure of the run with its traceback."""
    import jobs._ray
    import jobs.train as train
    from jobs._cli import WorkFailed

    class VanishingFit:
        def fit(self):
            raise FileNotFoundError(str(tmp_path / "gone.jpg"))

    monkeypatch.setattr(train, "training_data", lambda cfg, smoke: (None, {}))
    monkeypatch.setattr(train, "check_resume", lambda cfg, storage: False)
    monkeypatch.setattr(jobs._ray, "ensure_ray", lambda: None)
    monkeypatch.setattr(train, "check_cluster_cpus", lambda cfg, ray: None)
    monkeypatch.setattr(train, "create_driver_run", lambda cfg, uri: "")
    monkeypatch.setattr(train, "build_trainer", lambda *a, **k: VanishingFit())
    argv = ["--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(WorkFailed, match="gone.jpg") as info:
        train.cli(argv)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert capsys.readouterr().err == ""  # not the one-line bad-input message


def test_cli_bad_input_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys):
    """A missing annotation file or a bad key ends the job before Ray starts: exit 2, one line, no traceback."""
    from jobs.train import cli

    assert cli(["--config", "tiny", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "crowdhuman" / "annotation_train.odgt") in err
    assert err.startswith("train: ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli(["--config", "tiny", "--out", str(tmp_path / "o"), "--set", "train.recipe=nope"]) == 2
    assert capsys.readouterr().err.startswith("train: --set train.recipe=nope: key 'train.recipe' must be one of")


def test_stream_fields_out_of_range_are_refused_on_the_driver():
    check_ranges(load_config("tiny", ["data.stream_buffer_mb=64"]))
    with pytest.raises(ConfigError, match=r"data.stream_buffer_mb must be >= 0 \(0 = Ray's own budget\), got -1.0"):
        check_ranges(load_config("tiny", ["data.stream_buffer_mb=-1"]))
    with pytest.raises(ConfigError, match=r"data.background_swap is a probability per view, in \[0, 1\], got 1.5"):
        check_ranges(load_config("tiny", ["data.background_swap=1.5"]))


def test_a_value_out_of_range_ends_the_cli_before_ray_starts(tmp_path):
    """loss.queue_size used to be read first inside the Ray worker, after the cluster had reserved it: now
    the driver refuses it at load, naming the field, the value, the range and the --set on the preset file,
    without importing Ray (in a fresh interpreter: the test run's own Ray cannot hide it)."""
    out = tmp_path / "o"
    script = ("import sys\nfrom jobs.train import cli\n"
              f"rc = cli(['--config', 'idf_cpu', '--data-root', {str(tmp_path)!r}, '--out', {str(out)!r}, "
              "'--set', 'loss.queue_size=-1'])\n"
              "print('rc', rc, 'ray imported', 'ray' in sys.modules)\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    elapsed = time.perf_counter() - start
    assert done.stdout.strip() == "rc 2 ray imported False", done.stdout + done.stderr
    preset = Path(__file__).resolve().parents[1] / "kdtrack" / "configs" / "idf_cpu.yaml"
    assert done.stderr == (f"train: --set loss.queue_size=-1 (on {preset}): loss.queue_size must be > 0 "
                           f"(the contrastive negative queue's length), got -1\n")
    assert not out.exists()  # no Ray storage, no MLflow database
    assert elapsed < 5.0, f"{elapsed:.1f} s"


def test_supervised_smoke_run_classifies_the_labelled_people(ray_session, tiny_world, mlflow_uri, tmp_path):
    """sup_cpu for two iterations: one class per labelled (source, sequence, id) of the training data, the
    classifier and the Kendall weights checkpointed with the criterion; a supervised preset pointed at sources
    without a single identity label is refused on the driver, naming each source, before Ray starts."""
    from jobs.train import training_data
    from kdtrack.data.dataset import dataset_wide_ids, load_records

    fast = [a for item in FAST[:5] + ["train.batch_size_per_worker=2"] for a in ("--set", item)]
    argv = ["--config", "sup_cpu", "--data-root", str(tiny_world), "--out", str(tmp_path / "S"), "--mlflow-uri",
            mlflow_uri, "--smoke-test", *fast]
    with pytest.raises(ConfigError, match=r"no training box of data.sources has one \(labelled boxes per source: "
                                          r"crowdhuman: 0, coco: 0\)"):
        main(get_args_parser().parse_args(argv + ["--set", "data.sources=[crowdhuman,coco]"]))

    cfg = load_config("sup_cpu", [f"data.root={tiny_world}", "data.sources=[crowdhuman,person_search,mot17]"])
    _, people = dataset_wide_ids(load_records(cfg))
    _, loop_data = training_data(cfg)
    assert loop_data["num_id_classes"] == people > 20
    assert loop_data["labelled_by_source"]["crowdhuman"] == 0 < loop_data["labelled_by_source"]["person_search"]

    result = main(get_args_parser().parse_args(argv))
    state = load_checkpoint(result["checkpoint"])
    assert state["iteration"] == 2 and state["config"].train.recipe == "supervised"
    assert state["epoch"] == 1  # --smoke-test keeps 4 records (labelled ones) / batch 2 = one full epoch of 2 steps
    classes = state["config"].loss.num_id_classes  # 0 in the preset: counted from the (smoke test's) records
    assert 3 <= classes < people
    model_cfg = state["config"].model  # the classifier reads model.id_readout's vector (two bands in sup_cpu)
    assert state["criterion"]["supervised.classifier.weight"].shape == (classes, 2 * model_cfg.embedding_dim)
    assert model_cfg.id_readout == "centre_halves"
    assert "uncertainty.s_id" in state["criterion"]
    # the smoke test's records are labelled ones: the classifier's term is a real cross-entropy, near ln(classes);
    # sup_cpu's metric term over the memory adds to it, and the memory is checkpointed with the criterion
    metrics = result["metrics"]
    assert 0.5 * math.log(classes) < metrics["train/id/ce"] < 2 * math.log(classes)
    assert metrics["train/id"] == pytest.approx(metrics["train/id/ce"] + metrics["train/id/metric"], rel=1e-4)
    assert state["criterion"]["supervised.memory_ids"].shape == (state["config"].loss.supervised_memory,)

    # the finished run's Ray Train controller is gone when main returns (its SIGINT handler held it until the
    # next fit), and with it the Ray Data stream's dataset manager and split coordinator
    assert _live_actors({"TrainController", "DatasetManager", "SplitCoordinator"}, settle_s=15) == []


def _live_actors(class_names: set[str], settle_s: float) -> list[str]:
    """The class names of live actors among ``class_names``, polled until none is left or ``settle_s`` passed
    (a released actor is killed asynchronously)."""
    import ray._private.state

    deadline = time.monotonic() + settle_s
    while True:
        live = sorted(a["ActorClassName"] for a in ray._private.state.actors(actor_state_name="ALIVE").values()
                      if a["ActorClassName"] in class_names)
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)
