"""Fault injection: the Ray Train worker is SIGKILLed mid-run and ``train.max_failures`` brings training back.

A watcher thread waits until Ray Train has *registered* a checkpoint (its checkpoint-manager snapshot in the
run's storage names one), then until the worker has finished uploading the next one (a new ``checkpoint_*``
folder whose ``checkpoint.pt`` loads: the worker is back to computing, not half way through a copy), and
kills the one ``ray::RayTrainWorker`` process under this test's Ray cluster. The run must restart from the
checkpoint, refill the contrastive queue from it, stop at exactly ``train.max_iterations`` and keep logging
into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from jobs._storage import resolve_storage
from jobs.train import get_args_parser, main
from kdtrack.checkpoint import load_checkpoint
from kdtrack.config import load_config

from _fault_threads import SNAPSHOT, FaultThread, loadable_checkpoints, registered_iteration

# The smaller student of tests/test_train_job.py: one iteration is ~0.3-1 s on 2 shared cores.
FAST = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
        "model.deformable=false", "loss.queue_size=256", "train.batch_size_per_worker=2"]
MAX_ITERATIONS = 12  # reports (checkpoints) at 2, 4, ..., 12; the kill lands around iteration 4-6
HEALTH_CHECK_S = "0.25"  # Ray Train's controller polls its workers (and so registers their checkpoints) this often
REPORT_EVERY = 2
WORKER_TITLE = "ray::RayTrainWorker"  # the process title Ray gives the Train V2 worker actor
WAIT_S = 180.0  # for the first registered checkpoint (Ray start-up + model build + 2 iterations)


def _registered_iteration(run_dir: Path) -> int | None:
    """The iteration of the latest checkpoint Ray Train's controller registered in ``run_dir``, or None."""
    return registered_iteration((run_dir / SNAPSHOT).read_text)


def _train_workers(ignore: frozenset[int] = frozenset()) -> list[Any]:
    """The Ray Train worker processes under this process (the test's local cluster: driver -> raylet ->
    workers), not the forks of one (DataLoader workers share its title), nor any other Ray cluster's, nor the
    pids in ``ignore`` (workers an earlier test of the session left behind)."""
    import ray  # noqa: F401  (puts the psutil Ray bundles on sys.path)
    import psutil

    def is_worker(proc: Any) -> bool:
        try:
            return " ".join(proc.cmdline()).startswith(WORKER_TITLE)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    workers = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        if proc.pid not in ignore and is_worker(proc):
            try:
                parent = proc.parent()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if parent is None or not is_worker(parent):
                workers.append(proc)
    return workers


class WorkerKiller(FaultThread):
    """Kills the training worker once, between two checkpoints, then notes the worker that replaces it.
    ``error`` says what went wrong (the test fails with it); ``stop`` is set when ``main`` has returned."""

    def __init__(self, run_dir: Path, max_iterations: int):
        super().__init__(name="worker-killer")
        self.run_dir, self.max_iterations = run_dir, max_iterations
        self.stale = frozenset(p.pid for p in _train_workers())  # before this run started any
        self.killed_pid: int | None = None
        self.registered_at_kill: int | None = None  # latest registered checkpoint's iteration at the kill
        self.uploaded_at_kill: int | None = None  # the newest whole checkpoint on disk when the worker died
        self.later_pids: set[int] = set()
        self.seconds_to_kill: float | None = None

    def _too_late(self, what: str) -> str:
        return (f"training reached its end ({what}) before the worker could be killed: raise MAX_ITERATIONS "
                f"(now {self.max_iterations}) in {Path(__file__).name}")

    def _run(self) -> None:
        start = time.monotonic()
        deadline = start + WAIT_S
        # 1. Ray Train has registered a checkpoint: the restart is guaranteed one to resume from.
        while (registered := _registered_iteration(self.run_dir)) is None:
            if self.stop.is_set():
                self.error = self._too_late("main returned before any checkpoint was registered")
                return
            if time.monotonic() > deadline:
                self.error = (f"no checkpoint registered in {self.run_dir / SNAPSHOT} within {WAIT_S:.0f} s "
                              f"(checkpoint folders: {sorted(p.name for p in self.run_dir.glob('checkpoint_*'))})")
                return
            time.sleep(0.05)
        if registered >= self.max_iterations:
            self.error = self._too_late(f"iteration {registered} registered first")
            return
        # 2. The next checkpoint has been uploaded whole: the worker is training again, not copying a file.
        known = loadable_checkpoints(self.run_dir, {})
        while True:
            found = loadable_checkpoints(self.run_dir, known)
            new = {name: it for name, it in found.items() if name not in known}
            if new:
                break
            if self.stop.is_set():
                self.error = self._too_late("main returned while waiting for a second checkpoint")
                return
            if time.monotonic() > deadline + 60:
                self.error = f"no new checkpoint after the registered one (iteration {registered}) in 60 s"
                return
            time.sleep(0.02)
        uploaded = max(new.values())
        if uploaded >= self.max_iterations:
            self.error = self._too_late(f"the final checkpoint, iteration {uploaded}, was written first")
            return
        # 3. Exactly one training worker (num_workers=1): SIGKILL it, no clean-up runs.
        workers = _train_workers(self.stale)
        kill_deadline = time.monotonic() + 10
        while len(workers) != 1 and time.monotonic() < kill_deadline and not self.stop.is_set():
            time.sleep(0.05)
            workers = _train_workers(self.stale)
        if len(workers) != 1:
            self.error = (f"expected exactly one '{WORKER_TITLE}' process under pid {os.getpid()} (this test's "
                          f"Ray cluster), found {len(workers)}: {[(p.pid, p.cmdline()) for p in workers]}"
                          + (f" (ignored, there before the run: {sorted(self.stale)})" if self.stale else ""))
            return
        # the snapshot may be mid-rewrite (unreadable): the checkpoint registered in step 1 stays registered,
        # so it is a lower bound of the latest one
        now = _registered_iteration(self.run_dir)
        self.registered_at_kill = registered if now is None else max(now, registered)
        os.kill(workers[0].pid, signal.SIGKILL)
        self.killed_pid = workers[0].pid
        self.seconds_to_kill = time.monotonic() - start
        # The worker trained on between step 2 and the kill and may have written more checkpoints: the bound is
        # the newest whole one on disk once it is dead (its replacement takes seconds to start, so none is its).
        self.uploaded_at_kill = max(loadable_checkpoints(self.run_dir, found).values())
        # 4. Ray Train (FailureConfig) starts a new worker group: note its worker's pid.
        while not self.stop.is_set():
            self.later_pids.update(p.pid for p in _train_workers(self.stale) if p.pid != self.killed_pid)
            time.sleep(0.1)


@pytest.mark.ray
@pytest.mark.slow
def test_training_survives_a_killed_worker(ray_session, tiny_world, mlflow_uri, tmp_path, monkeypatch):
    # Train V2 hands this variable from the driver to its controller: checkpoints are registered ~0.25 s after
    # their report instead of up to 2 s, so the kill comes early in the run, and the death is seen sooner.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_S)
    out = tmp_path / "run"
    overrides = FAST + ["train.epochs=0", f"train.max_iterations={MAX_ITERATIONS}",
                        f"train.report_every={REPORT_EVERY}", "train.max_failures=1", "train.log_every=1",
                        "data.max_records=8"]  # 4 iterations per epoch at batch 2: reports mid-epoch and at its end
    argv = ["--config", "tiny", "--data-root", str(tiny_world), "--out", str(out), "--mlflow-uri", mlflow_uri]
    for item in overrides:
        argv += ["--set", item]
    args = get_args_parser().parse_args(argv)
    run_dir = Path(resolve_storage(None, out).path) / load_config("tiny", overrides).train.run_name

    killer = WorkerKiller(run_dir, MAX_ITERATIONS)
    killer.start()
    try:
        result = main(args)
    except Exception as exc:
        raise AssertionError(f"training did not survive the killed worker (pid {killer.killed_pid}, killed after "
                             f"the checkpoint of iteration {killer.uploaded_at_kill}; watcher: "
                             f"{killer.error})") from exc
    finally:
        killer.stop.set()
        killer.join(timeout=30)
    assert killer.error is None, killer.error
    assert killer.killed_pid is not None

    # Ray Train restarted the worker group: a new worker process, which resumed from a registered checkpoint.
    assert killer.later_pids, f"no '{WORKER_TITLE}' replaced the killed pid {killer.killed_pid}"
    resumed = result["metrics"]["resumed_from_iteration"]
    assert 0 < resumed <= killer.uploaded_at_kill, (resumed, killer.registered_at_kill, killer.uploaded_at_kill)
    assert resumed >= killer.registered_at_kill and resumed % REPORT_EVERY == 0
    assert result["metrics"]["resumed_queue_fill"] > 0  # the contrastive queue came back from the checkpoint

    # The planned number of iterations, no more (replayed iterations are not counted twice), no fewer.
    assert result["metrics"]["iteration"] == MAX_ITERATIONS
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["iteration"] == MAX_ITERATIONS
    assert int(final["criterion"]["contrastive.queue_fill"]) > 0

    # Nothing truncated left in the Ray storage: every checkpoint there loads.
    stored = sorted(run_dir.glob("checkpoint_*/checkpoint.pt"))
    assert len(stored) >= 2
    for path in stored:
        load_checkpoint(path)  # raises on a truncated / unreadable file
    for path in run_dir.glob("checkpoint_*/*.json"):  # the config.json beside each checkpoint.pt
        json.loads(path.read_text())
    leftovers = list(run_dir.glob("checkpoint_*/*.tmp")) + list(out.glob("*.tmp"))
    assert not leftovers, f"temporary files left behind: {leftovers}"

    # One training run = one MLflow run: reopened after the restart, FINISHED, its curve spans the kill.
    client = MlflowClient(mlflow_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL)
    assert len(runs) == 1, [(r.info.run_id, r.info.status, r.data.tags.get("mlflow.runName")) for r in runs]
    run = runs[0]
    assert run.info.run_id == result["mlflow_run_id"] == final["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("kdtrack.resumed_at_iteration") == str(int(resumed))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/total")]
    # log_every=1: every iteration, before the kill (1, 2, ...) and after the restart (..., 12), no gap; the
    # iterations replayed after the resume point are logged a second time
    assert set(steps) == set(range(1, MAX_ITERATIONS + 1)), sorted(steps)
    print(f"killed worker {killer.killed_pid} {killer.seconds_to_kill:.1f} s in, after the checkpoint of iteration "
          f"{killer.uploaded_at_kill} (registered: {killer.registered_at_kill}); resumed from iteration "
          f"{resumed:.0f} in worker(s) {sorted(killer.later_pids)}; {len(steps) - len(set(steps))} steps logged "
          f"twice; fit {result['fit_seconds']:.1f} s")
