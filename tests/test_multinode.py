"""A real multi-node Ray cluster on one machine: a head and two worker nodes (``ray.cluster_utils.Cluster``,
every process bound to 127.0.0.1), started once for this module.

- two Ray Train workers forced onto two nodes (``train.placement_strategy=STRICT_SPREAD``), DDP over gloo
  between them, log the same losses as the same run packed on one node;
- the node of a training worker is removed mid-run, a spare node takes its place (as an autoscaler's):
  training resumes from the last checkpoint in the shared S3 bucket (moto on 127.0.0.1), ends at exactly
  the planned iteration, keeps every checkpoint written before the loss, and stays one MLflow run;
- the node of a running sweep trial is removed: Tune starts the trial again and its Train run resumes from its
  checkpoint, logging into the same MLflow child run;
- the node of a busy inference actor is removed during ``jobs.evaluate mot`` and during ``jobs.pseudo_label``:
  the item it held runs again elsewhere, every sequence / clip comes back exactly once, and the tracker files,
  per-sequence metrics and label tables are those of a fault-free run.

Why its own cluster, and how it keeps clear of the session one (``tests/conftest.py``): two Ray instances on
2 cores starve each other (RAY_NOTES), so the module fixture stops the session cluster when a test before
started it, runs this one, and on teardown stops it and starts the session cluster again
(``conftest.start_session_ray``, the same settings) for the tests after.

The workers read ``data.loader=torch``: each rank's shard is a fixed stride of the records, so both runs
see the same batches on any node (the Ray Data split hands blocks to whichever worker asks first).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from jobs.train import get_args_parser, main
from kdtrack.checkpoint import load_checkpoint
from kdtrack.data.transforms import single_thread  # torch on one thread, as in an inference actor of one CPU

from _fault_threads import SNAPSHOT, FaultThread, loadable_checkpoints, registered_iteration

# the smaller student of tests/test_train_job.py, on two workers of half a CPU each
from test_train_job import FAST

LOOPBACK = "127.0.0.1"  # every node's address: nothing of the test cluster listens beyond this machine
NODE_ARGS = {"node_ip_address": LOOPBACK, "object_store_memory": 80 * 1024 * 1024}
HEAD_ARGS = {**NODE_ARGS, "num_cpus": 0, "include_dashboard": False}  # the driver and Train's controller only
WORKER_NODE_CPUS = 1  # per worker node: one train worker (0.5 CPU) fits, the other must go to the other node
TWO_WORKERS = ["train.num_workers=2", "train.cpus_per_worker=0.5", "data.loader=torch", "train.log_every=1"]
WAIT_S = 900.0  # for the first registered checkpoint: two workers start and train 2 iterations (minutes on busy cores)


@dataclass
class MultiNode:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # the worker nodes (ray._private.node.Node), in start order

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=WORKER_NODE_CPUS, **NODE_ARGS)
        self.workers.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        self.cluster.remove_node(node, allow_graceful=False)  # a lost machine, no clean-up
        self.workers.remove(node)


@pytest.fixture(scope="module")
def multinode():
    import ray
    from ray.cluster_utils import Cluster

    from conftest import start_session_ray

    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address, write_ray_address

    session_was_up = ray.is_initialized()
    if session_was_up:
        ray.shutdown()
    others = read_ray_address()  # a `ray start` head's address file, if any: kept as it was
    cluster = Cluster(initialize_head=True, head_node_args=HEAD_ARGS)
    # Cluster writes its address where every plain ray.init() on this machine looks first (/tmp/ray): another
    # test session's cluster (or a job) would join this one instead of starting its own
    if read_ray_address() == cluster.address:
        reset_ray_address()
    try:
        nodes = MultiNode(cluster, [])
        for _ in range(2):
            nodes.add_worker()
        # ray.init turns a loopback address into the machine's (for remote drivers); this cluster listens on
        # 127.0.0.1 only, so the driver joins it there, as a process on its head node
        import ray._private.services as services

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(services, "resolve_ip_for_localhost", lambda host: host)
            ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()  # also deletes the address file, whoever wrote it
        if others and read_ray_address() is None:
            write_ray_address(others)
        if session_was_up:
            start_session_ray()


class Placements(threading.Thread):
    """Notes, while a run trains, the nodes of each new placement group (Ray Train's worker group):
    ``seen[placement group id] = [node id of each bundle]``, in the order the groups were created."""

    def __init__(self) -> None:
        super().__init__(name="placements", daemon=True)
        import ray

        self.before = set(ray.util.placement_group_table())  # groups of earlier runs
        self.seen: dict[str, list[str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import ray

        while not self.done.is_set():
            for pg_id, pg in ray.util.placement_group_table().items():
                if pg_id not in self.before and pg_id not in self.seen and pg["state"] == "CREATED":
                    nodes = pg["bundles_to_node_id"]
                    self.seen[pg_id] = [nodes[i] for i in sorted(nodes)]
            time.sleep(0.05)

    def __enter__(self) -> "Placements":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.join(timeout=10)


def _args(world: Path, out: Path, uri: str, *overrides: str, storage: str | None = None, smoke: bool = False):
    argv = ["--config", "tiny", "--data-root", str(world), "--out", str(out), "--mlflow-uri", uri]
    if smoke:  # train.smoke_iterations iterations on just enough records
        argv.append("--smoke-test")
    if storage:
        argv += ["--storage", storage]
    for item in FAST + TWO_WORKERS + list(overrides):
        argv += ["--set", item]
    return get_args_parser().parse_args(argv)


def _losses(uri: str, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "train/total")}


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_on_two_nodes_match_one_node(multinode, tiny_world, tmp_path, empty_mlflow_db):
    import shutil

    results, placements = {}, {}
    for strategy in ("STRICT_SPREAD", "STRICT_PACK"):
        shutil.copyfile(empty_mlflow_db, tmp_path / f"{strategy}.db")
        uri = f"sqlite:///{tmp_path / f'{strategy}.db'}"
        with Placements() as watch:
            result = main(_args(tiny_world, tmp_path / strategy, uri, "train.smoke_iterations=3",
                                f"train.placement_strategy={strategy}", smoke=True))
        results[strategy] = _losses(uri, result["mlflow_run_id"])
        placements[strategy] = list(watch.seen.values())
    worker_nodes = {n.node_id for n in multinode.workers}
    (spread,), (packed,) = placements["STRICT_SPREAD"], placements["STRICT_PACK"]
    assert len(spread) == 2 and len(set(spread)) == 2 and set(spread) <= worker_nodes, placements
    assert len(packed) == 2 and len(set(packed)) == 1 and set(packed) <= worker_nodes, placements
    # the same seed and batches: DDP over gloo across nodes computes what it computes on one node
    assert sorted(results["STRICT_SPREAD"]) == sorted(results["STRICT_PACK"]) == [1, 2, 3]
    assert results["STRICT_SPREAD"] == pytest.approx(results["STRICT_PACK"], rel=1e-6)


class NodeLoss(FaultThread):
    """Once Ray Train has registered a checkpoint in the bucket, removes a worker node that hosts a train
    worker (from ``placements``), as a lost machine. ``error`` says what went wrong.

    Only removal happens here: starting a node from a thread other than the main one fails (Ray's node
    start-up installs signal handlers), so the test starts the spare node before the run, as an autoscaler
    would have one ready."""

    def __init__(self, multinode: MultiNode, placements: Placements, fs: Any, run_dir: str, max_iterations: int):
        super().__init__(name="node-loss")
        self.multinode, self.placements = multinode, placements
        self.fs, self.run_dir, self.max_iterations = fs, run_dir, max_iterations
        self.registered_at_loss: int | None = None
        self.stored_at_loss: dict[str, int] = {}  # checkpoint folder -> iteration, in the bucket at the loss
        self.lost_node: str | None = None
        self.seconds_to_loss: float | None = None

    def _registered(self) -> int | None:
        def read() -> bytes:
            with self.fs.open_input_stream(f"{self.run_dir}/{SNAPSHOT}") as handle:
                return handle.read()

        return registered_iteration(read)

    def _run(self) -> None:
        start = time.monotonic()
        while (registered := self._registered()) is None:
            if self.stop.is_set() or time.monotonic() - start > WAIT_S:
                self.error = f"no checkpoint registered in {self.run_dir} within {WAIT_S:.0f} s (or main returned)"
                return
            time.sleep(0.1)
        if registered >= self.max_iterations:
            self.error = f"training reached iteration {registered} before the node could be lost: raise MAX_ITERATIONS"
            return
        groups = list(self.placements.seen.values())
        if not groups:
            self.error = "a checkpoint was registered but no worker group was seen"
            return
        self.registered_at_loss = registered
        self.stored_at_loss = _bucket_checkpoints(self.fs, self.run_dir)
        node = next(n for n in self.multinode.workers if n.node_id == groups[-1][-1])
        self.lost_node = node.node_id
        self.multinode.remove_worker(node)
        self.seconds_to_loss = time.monotonic() - start


def _bucket_checkpoints(fs: Any, run_dir: str) -> dict[str, int]:
    """``{checkpoint folder: iteration}`` of every ``checkpoint_*/checkpoint.pt`` in the bucket, each loaded (a
    truncated one raises)."""
    import tempfile

    import pyarrow.fs as pafs

    found = {}
    for info in fs.get_file_info(pafs.FileSelector(run_dir, recursive=True, allow_not_found=True)):
        if info.base_name == "checkpoint.pt":
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "checkpoint.pt"
                pafs.copy_files(info.path, str(local), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
                found[info.path.rsplit("/", 2)[-2]] = int(load_checkpoint(local)["iteration"])
    return found


MAX_ITERATIONS = 10  # reports (checkpoints) at 2, 4, ..., 10: the node goes after the first one is registered
REPORT_EVERY = 2


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_resumes_from_the_bucket_into_one_mlflow_run(multinode, tiny_world, mlflow_uri, s3_bucket,
                                                                 tmp_path, monkeypatch):
    from jobs._storage import resolve_storage
    from kdtrack.config import load_config

    # Train V2 hands this to its controller: on busy cores two new workers may take more than the default
    # 60 s to start, and each timeout is one more (harmless, uncounted) retry
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    spare = multinode.add_worker().node_id  # three worker nodes: the two the run spreads over, and a spare

    storage = resolve_storage(f"s3://{s3_bucket}/runs")
    overrides = ["train.epochs=0", f"train.max_iterations={MAX_ITERATIONS}", f"train.report_every={REPORT_EVERY}",
                 "train.max_failures=1", "train.placement_strategy=STRICT_SPREAD", "data.max_records=8"]
    args = _args(tiny_world, tmp_path / "run", mlflow_uri, *overrides, storage=storage.uri)
    run_dir = f"{storage.path}/{load_config('tiny', overrides).train.run_name}"
    with Placements() as watch:
        loss = NodeLoss(multinode, watch, storage.filesystem, run_dir, MAX_ITERATIONS)
        loss.start()
        try:
            result = main(args)
        except Exception as exc:
            raise AssertionError(f"training did not survive the lost node {loss.lost_node} (watcher: "
                                 f"{loss.error})") from exc
        finally:
            loss.stop.set()
            loss.join(timeout=60)
    assert loss.error is None, loss.error
    assert loss.lost_node is not None

    # The first worker group spread over two nodes, one of them lost; the group that finished the run on the
    # surviving node and the spare (a group whose start timed out under load is retried: more may come between).
    groups = list(watch.seen.values())
    assert len(groups) >= 2 and all(len(set(g)) == 2 for g in groups), groups
    alive = {n.node_id for n in multinode.workers}  # the two worker nodes left
    assert loss.lost_node in groups[0] and set(groups[-1]) == alive, (groups, loss.lost_node, alive)
    idle_before = alive - set(groups[0])  # the node no worker used before the loss took the lost one's place
    assert len(idle_before) == 1 and idle_before <= set(groups[-1]), (groups, loss.lost_node, spare)

    # Resumed from a checkpoint read from the bucket, at or after the one registered before the loss.
    resumed = result["metrics"]["resumed_from_iteration"]
    assert resumed >= loss.registered_at_loss > 0 and resumed % REPORT_EVERY == 0, (resumed, loss.registered_at_loss)
    assert result["metrics"]["iteration"] == MAX_ITERATIONS
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == MAX_ITERATIONS
    assert result["ray_checkpoint"].startswith(f"{storage.uri}/")

    # No checkpoint lost: every one in the bucket at the loss is still there and loads, and so do the later ones.
    stored = _bucket_checkpoints(storage.filesystem, run_dir)
    assert loss.stored_at_loss.items() <= stored.items(), (loss.stored_at_loss, stored)
    assert MAX_ITERATIONS in stored.values()

    # One training run = one MLflow run, FINISHED; its curve spans the loss with no gap.
    client = MlflowClient(mlflow_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags.get("kdtrack.resumed_at_iteration") == str(int(resumed))
    assert set(_losses(mlflow_uri, result["mlflow_run_id"])) == set(range(1, MAX_ITERATIONS + 1))
    print(f"lost node {loss.lost_node[:8]} {loss.seconds_to_loss:.1f} s in, after the checkpoint of iteration "
          f"{loss.registered_at_loss} was registered; resumed from {resumed:.0f} on {sorted(idle_before)[0][:8]}; "
          f"fit {result['fit_seconds']:.1f} s")


# --------------------------------------------------------------------------- a sweep (Tune)

TRIAL_ACTOR = "ImplicitFunc"  # the class name Ray Tune gives a function trainable's actor
# reports (checkpoints, validations) at 2, 4, ..., 10: the node goes after the first is registered; removing a
# node takes seconds while the trial trains on, so at fewer iterations the trial often wrote its last checkpoint
# before the loss (a restart that resumes finished: tests/test_train_job.py covers that report)
SWEEP_ITERATIONS = 10


class TrialNodeLoss(FaultThread):
    """Once the trial's Ray Train run has registered a checkpoint, removes the node of the trial's own actor (it
    holds a whole node, ``tune.trial_cpus: 1``): the trial process, its Train controller and workers all die.
    Notes the lost node, the registered iteration and the checkpoints on disk at the loss."""

    def __init__(self, multinode: MultiNode, storage: Path):
        super().__init__(name="trial-node-loss")
        self.multinode, self.storage = multinode, storage
        self.registered_at_loss: int | None = None
        self.stored_at_loss: dict[str, int] = {}
        self.lost_node: str | None = None

    def _run(self) -> None:
        import ray._private.state

        start = time.monotonic()
        while True:
            snapshots = list(self.storage.glob(f"train-*/{SNAPSHOT}"))
            registered = registered_iteration(snapshots[0].read_text) if len(snapshots) == 1 else None
            if registered is not None:
                break
            if self.stop.is_set() or time.monotonic() - start > WAIT_S:
                self.error = f"no trial checkpoint registered under {self.storage} (snapshots: {snapshots})"
                return
            time.sleep(0.1)
        if registered >= SWEEP_ITERATIONS:
            self.error = f"the trial reached iteration {registered} before its node could be lost"
            return
        actors = [a for a in ray._private.state.actors(actor_state_name="ALIVE").values()
                  if a["ActorClassName"] == TRIAL_ACTOR]
        if len(actors) != 1:
            self.error = f"expected one live {TRIAL_ACTOR} actor, found {actors}"
            return
        node_id = actors[0]["Address"]["NodeID"]
        self.registered_at_loss = registered
        self.multinode.remove_worker(next(n for n in self.multinode.workers if n.node_id == node_id))
        self.lost_node = node_id
        # read once the node is gone: what the trial wrote while it was being removed counts too
        self.stored_at_loss = loadable_checkpoints(snapshots[0].parent)  # one still being copied in is not yet one


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_during_a_sweep_restarts_its_trial_from_the_checkpoint(multinode, tiny_world, tmp_path,
                                                                          monkeypatch):
    """``jobs.tune`` with ``tune.trial_max_failures: 1``: the node running a trial is lost mid-trial. Tune starts
    the trial again on a node left; its Ray Train run resumes from the checkpoint in the sweep's storage, logs
    into the trial's one MLflow child run, and the sweep ends with that trial completed and validated."""
    from jobs.tune import RESTARTS_TAG, get_args_parser, main as tune_main

    from test_tune import write_sweep

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    _worker_nodes(multinode, 3)  # the trial's actor, its Train worker, and a spare for the restarted trial
    storage = tmp_path / "storage"
    path = write_sweep(tmp_path, set={"train.max_iterations": SWEEP_ITERATIONS, "train.cpus_per_worker": 0.5,
                                      "train.log_every": 1},
                       tune={"num_samples": 1, "scheduler": "fifo", "trial_cpus": 1.0, "trial_max_failures": 1})
    args = get_args_parser().parse_args(["--config", str(path), "--data-root", str(tiny_world),
                                         "--out", str(tmp_path / "sweep"), "--storage", str(storage)])
    loss = TrialNodeLoss(multinode, storage)
    loss.start()
    try:
        result = tune_main(args)
    finally:
        loss.stop.set()
        loss.join(timeout=60)
    assert loss.error is None, loss.error
    assert loss.lost_node is not None and loss.lost_node not in {n.node_id for n in multinode.workers}

    # Tune started the trial once more, and it completed all its iterations with a finite objective.
    assert result["exit_code"] == 0
    (trial,) = result["trials"]
    assert trial["restarts"] == 1 and trial["outcome"] == "completed", trial
    assert trial["iteration"] == SWEEP_ITERATIONS and math.isfinite(trial["objective"])

    # One child run holds the whole trial: restarted once, resumed from a checkpoint at or after the one
    # registered before the loss, every iteration logged (those trained after that checkpoint and before the
    # loss twice: they were trained again) and the objective at every report. (A trial whose last checkpoint
    # was written before the loss resumes finished and reports that checkpoint again: still completed.)
    client = MlflowClient(result["mlflow_uri"])
    (child,) = client.search_runs([client.get_run(result["mlflow_parent_run_id"]).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{result['mlflow_parent_run_id']}'")
    assert child.info.run_id == trial["mlflow_run_id"] and child.info.status == "FINISHED"
    assert child.data.tags[RESTARTS_TAG] == "1"
    resumed = int(child.data.tags["kdtrack.resumed_at_iteration"])
    assert loss.registered_at_loss <= resumed <= SWEEP_ITERATIONS and resumed % REPORT_EVERY == 0, (resumed, loss.registered_at_loss)
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/total")]
    assert set(steps) == set(range(1, SWEEP_ITERATIONS + 1)), steps
    assert all(step > resumed for step in steps if steps.count(step) > 1), (steps, resumed)
    assert {m.step for m in client.get_metric_history(child.info.run_id, "val/person_search/mAP")} == \
        set(range(REPORT_EVERY, SWEEP_ITERATIONS + 1, REPORT_EVERY))

    # No checkpoint lost: those on disk at the loss are still there, and the trial's last one is its model.
    run_dir = next(storage.glob(f"train-{trial['trial_id']}"))
    stored = {p.parent.name: int(load_checkpoint(p)["iteration"]) for p in run_dir.glob("checkpoint_*/checkpoint.pt")}
    assert loss.stored_at_loss and loss.stored_at_loss.items() <= stored.items(), (loss.stored_at_loss, stored)
    assert max(stored.values()) == SWEEP_ITERATIONS
    print(f"lost node {loss.lost_node[:8]} after the checkpoint of iteration {loss.registered_at_loss}; the trial "
          f"resumed from {resumed}; sweep {result['seconds']:.0f} s")


# --------------------------------------------------------------------------- inference jobs (actor pools)

POOL_ACTORS = 2  # one per worker node (1 CPU each); the third worker node is the spare a lost actor restarts on


class LoseBusyActorNode:
    """Wraps a job's ``run_actor_pool``: when the pool's last actor reports ready, removes the node of the first
    one, which took an item the moment it was ready and is busy with it (the queue holds more items than actors).
    Runs in the driver's loop, so the loss falls between two of its steps, not at a random time.

    Notes ``done_at_loss`` (items finished before), and every outcome's index and worker node."""

    def __init__(self, multinode: MultiNode, actors: int = POOL_ACTORS):
        self.multinode, self.actors = multinode, actors
        self.ready: list[dict] = []
        self.finished: list[tuple[int, str]] = []  # (item, node[:8]) of each outcome, in order
        self.done_at_loss: int | None = None
        self.lost_node: str | None = None
        self.spares: list[str] = []  # worker nodes without an actor at the loss

    def wrap(self, real):
        def run_actor_pool(*args, on_ready=None, on_done=None, **kwargs):
            def ready(info: dict) -> None:
                if on_ready is not None:
                    on_ready(info)
                self.ready.append(info)
                if len(self.ready) == self.actors and self.lost_node is None:
                    self._lose(self.ready[0]["node"])

            def done(outcome) -> None:
                self.finished.append((outcome.index, (outcome.value or {}).get("node", "")))
                if on_done is not None:
                    on_done(outcome)

            return real(*args, on_ready=ready, on_done=done, **kwargs)

        return run_actor_pool

    def _lose(self, node_prefix: str) -> None:
        node = next(n for n in self.multinode.workers if n.node_id.startswith(node_prefix))
        self.done_at_loss = len(self.finished)
        self.lost_node = node.node_id
        self.spares = [n.node_id for n in self.multinode.workers
                       if n.node_id[:8] not in {info["node"] for info in self.ready}]
        self.multinode.remove_worker(node)

    def check(self, items: int) -> None:
        """The node went mid-job; every item came back once; the item its actor held was run again elsewhere (alone
        until the last actor was ready, the first actor took items 0, 1, ... in order: it held ``done_at_loss``);
        nothing finished on the lost node after the loss, only on the surviving actor's node or the spare (where
        the lost actor's replacement starts, if it is ready before the others have finished everything)."""
        assert self.lost_node is not None and self.done_at_loss < items, self.describe()
        assert sorted(i for i, _ in self.finished) == list(range(items)), self.describe()
        node_of = dict(self.finished)
        assert node_of[self.done_at_loss] != self.lost_node[:8], self.describe()
        after = {node for _, node in self.finished[self.done_at_loss:]}
        survivor = {info["node"] for info in self.ready[:self.actors]} - {self.lost_node[:8]}
        assert after and after <= survivor | {n[:8] for n in self.spares}, self.describe()

    def describe(self) -> str:
        return (f"lost node {str(self.lost_node)[:8]} with {self.done_at_loss} item(s) done; workers ready on "
                f"{[info['node'] for info in self.ready]}; (item, node) as finished: {self.finished}")


# the untrained network's weak peaks all kept and tracked: tracker files full of boxes, ids and scores to compare
EVERY_BOX = [item for setting in ("decode.score_threshold=0.0", "decode.top_k=20", "tracker.min_score=0.0",
                                  "tracker.det_thresh=0.0", "tracker.min_box_area=0", "tracker.max_aspect_ratio=100")
             for item in ("--set", setting)]


def _worker_nodes(multinode: MultiNode, count: int) -> None:
    """Adds worker nodes until there are ``count`` (an earlier test may have lost one)."""
    while len(multinode.workers) < count:
        multinode.add_worker()


def _mot_root(tiny_world: Path, root: Path, copies: int) -> Path:
    """``copies`` copies of each tiny-world sequence, each under its own name (frames linked): more sequences
    than actors, so the pool has queued work when a node goes."""
    from dataclasses import replace as dc_replace
    import shutil

    from kdtrack.formats.mot import list_sequences, read_seqinfo, write_seqinfo

    for i in range(copies):
        for seq in list_sequences(tiny_world / "MOT17" / "train"):
            name = seq.name.replace("SYN", f"SYN{i}")
            dst = root / name
            dst.mkdir(parents=True)
            shutil.copytree(seq / "gt", dst / "gt")
            (dst / "img1").symlink_to(seq / "img1", target_is_directory=True)
            write_seqinfo(dst, dc_replace(read_seqinfo(seq), name=name))
    return root


def _without_timings(sequences: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: v for k, v in m.items() if not k.endswith("_fps")} for name, m in sequences.items()}


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_during_mot_evaluation_changes_no_result(multinode, tiny_world, tmp_path, monkeypatch):
    import jobs._mot_eval
    from jobs.evaluate import main as evaluate

    from test_evaluate_cluster import _fast_checkpoint

    _worker_nodes(multinode, POOL_ACTORS + 1)
    checkpoint = _fast_checkpoint(tmp_path / "ckpt")
    root = _mot_root(tiny_world, tmp_path / "MOT17" / "train", copies=3)
    names = sorted(p.name for p in root.iterdir())

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / name / "metrics.json"
        return evaluate(["mot", "--checkpoint", str(checkpoint), "--data-root", str(root), "--half", "val",
                         "--out", str(out), "--no-progress", "--set", "eval.render_frames=0",
                         "--set", f"eval.num_actors={POOL_ACTORS}", "--set", "eval.cpus_per_actor=1",
                         *EVERY_BOX, *extra])

    with single_thread():  # the fault-free run, in this process, computing as an actor does
        reference = run("reference", "--no-ray")
    loss = LoseBusyActorNode(multinode)
    monkeypatch.setattr(jobs._mot_eval, "run_actor_pool", loss.wrap(jobs._mot_eval.run_actor_pool))
    recovered = run("lost")

    loss.check(len(names))
    # every sequence came back exactly once, none failed, and the metrics and tracker files are the fault-free ones
    assert "failed" not in recovered and sorted(recovered["sequences"]) == names
    assert recovered["combined"]["FP"] + recovered["combined"]["IDs"] > 0  # tracks to compare, not empty files
    assert _without_timings(recovered["sequences"]) == _without_timings(reference["sequences"])
    for name in names:
        assert (tmp_path / "lost" / "results" / f"{name}.txt").read_bytes() == \
            (tmp_path / "reference" / "results" / f"{name}.txt").read_bytes(), name
    print(loss.describe())


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_during_pseudo_labelling_changes_no_label(multinode, tiny_world, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from jobs import pseudo_label

    from test_pseudo_label import JOB  # the job settings of its own tests
    from test_evaluate_cluster import _fast_checkpoint

    _worker_nodes(multinode, POOL_ACTORS + 1)
    checkpoint = _fast_checkpoint(tmp_path / "ckpt")
    clips = sum(1 for _ in open(tiny_world / "kinetics" / "train.csv")) - 1
    assert clips > POOL_ACTORS

    def run(name: str, *extra: str) -> dict:
        return pseudo_label.main(["--checkpoint", str(checkpoint), "--videos", str(tiny_world / "kinetics"),
                                  "--out", str(tmp_path / name), *JOB, "--set", f"pseudo.num_actors={POOL_ACTORS}",
                                  "--set", "pseudo.cpus_per_actor=1", *extra])

    with single_thread():
        reference = run("reference", "--no-ray")
    loss = LoseBusyActorNode(multinode)
    monkeypatch.setattr(pseudo_label, "run_actor_pool", loss.wrap(pseudo_label.run_actor_pool))
    recovered = run("lost")

    loss.check(clips)
    assert recovered["videos_bad"] == 0 and recovered["videos_clustered"] == reference["videos_clustered"] == clips
    assert recovered["boxes"] > 0 and recovered["pseudo_ids"] > 0
    for name in (pseudo_label.LABELS_FILE, pseudo_label.VIDEOS_FILE):
        got, want = pq.read_table(tmp_path / "lost" / name), pq.read_table(tmp_path / "reference" / name)
        assert got.equals(want), name
    labels = pq.read_table(tmp_path / "lost" / pseudo_label.LABELS_FILE).to_pandas()
    assert labels["video"].nunique() == clips  # every clip once: one part each, none twice
    assert len(list((tmp_path / "lost" / pseudo_label.PARTS_DIR).rglob("*.npz"))) == clips
    print(loss.describe())
