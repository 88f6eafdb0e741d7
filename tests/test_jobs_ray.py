"""`jobs._ray.map_tasks`: the same results in order, serially and as Ray tasks (partials included)."""

from __future__ import annotations

import functools

import numpy as np

from jobs._ray import map_tasks
from kdtrack.boxes import clip_boxes_xyxy  # an importable pure function (Ray workers import it by name)

BOXES = np.array([[-5.0, -5.0, 50.0, 50.0]], np.float32)


def test_map_tasks_serial_and_ray_agree(ray_session):
    args = [(BOXES, 10), (BOXES, 20), (BOXES, 30)]  # (boxes, width), height by keyword
    expected = [[[0, 0, 10, 40]], [[0, 0, 20, 40]], [[0, 0, 30, 40]]]
    for use_ray in (False, True):
        out = map_tasks(clip_boxes_xyxy, args, use_ray=use_ray, num_cpus=0.25, height=40)
        assert [o.tolist() for o in out] == expected
    part = functools.partial(clip_boxes_xyxy, height=40)
    assert [o.tolist() for o in map_tasks(part, args, use_ray=True, num_cpus=0.25)] == expected
    # a partial's own positional args come first: (boxes) from the partial, (width,) per task
    part = functools.partial(clip_boxes_xyxy, BOXES)
    out = map_tasks(part, [(10,), (20,)], use_ray=True, num_cpus=0.25, height=40)
    assert [o.tolist() for o in out] == expected[:2]


def _counting_worker():
    """A worker class defined in a function, so Ray ships it by value (tests/ is not importable on workers).

    ``work(path, mode)`` appends a line to ``path`` per attempt; mode "flaky" raises TimeoutError on the
    first attempt (retried), "broken" a ValueError every time (not retried), "io" an OSError(EIO) once, "slow" sleeps 0.6 s,
    "dies" ends its process on the first attempt (a lost worker), "always_dies" on every one.
    """
    import errno
    import os
    import time

    class Worker:
        def __init__(self, tag: str):
            self.tag = tag

        def ready(self) -> dict:
            return {"device": "cpu", "node": "n", "pid": os.getpid()}

        def work(self, path: str, mode: str) -> str:
            from jobs._ray import transient_errors

            with open(path, "a") as handle:
                handle.write("x\n")
            attempts = len(open(path).read().splitlines())
            with transient_errors():
                if mode == "flaky" and attempts == 1:
                    raise TimeoutError("storage did not answer")
                if mode == "io" and attempts == 1:
                    raise OSError(errno.EIO, "Input/output error", path)
                if mode == "broken":
                    raise ValueError(f"{path}: corrupt")
                if mode == "slow":
                    time.sleep(0.6)
                if mode == "always_dies" or mode == "dies" and attempts == 1:
                    os._exit(1)
            return f"{self.tag}:{mode}:{attempts}"

    return Worker


def test_actor_pool_retries_transient_errors_and_reports_the_rest(ray_session, tmp_path):
    from jobs._ray import run_actor_pool

    modes = ["ok", "flaky", "broken", "io", "ok"]
    for use_ray in (True, False):
        paths = [tmp_path / f"{use_ray}_{i}.txt" for i in range(len(modes))]
        done = []
        report = run_actor_pool(_counting_worker(), {"tag": "w"}, [("work", (str(p), m)) for p, m in zip(paths, modes)],
                                use_ray=use_ray, num_actors=2, num_cpus=0.25, num_gpus=0, max_task_retries=2,
                                on_done=lambda o: done.append(o.index))
        out = report.outcomes
        assert [o.value for o in out] == ["w:ok:1", "w:flaky:2", None, "w:io:2", "w:ok:1"], use_ray
        # a non-transient error is not retried and comes back as one line naming the input
        assert out[2].error == f"ValueError: {paths[2]}: corrupt" and len(paths[2].read_text().split()) == 1
        assert sorted(done) == list(range(5)) and len(report.workers) == (2 if use_ray else 1)


def test_actor_pool_replaces_a_lost_actor_and_runs_its_item_again(ray_session, tmp_path):
    """Ray gives up on an actor whose process died (no restarts here; on a lost node its retries fail at once):
    the pool starts another actor and queues the item again, up to max_task_retries times, then names it."""
    from jobs._ray import run_actor_pool

    modes = ["dies", "ok", "always_dies", "ok"]
    paths = [tmp_path / f"{i}.txt" for i in range(len(modes))]
    report = run_actor_pool(_counting_worker(), {"tag": "w"}, [("work", (str(p), m)) for p, m in zip(paths, modes)],
                            num_actors=1, num_cpus=0.25, num_gpus=0, max_restarts=0, max_task_retries=1)
    out = report.outcomes
    assert [o.value for o in out] == ["w:dies:2", "w:ok:1", None, "w:ok:1"]
    assert out[2].error.startswith("worker died: ") and len(paths[2].read_text().split()) == 2  # tried twice
    assert len(report.workers) == 4  # the first actor and one replacement per death (three)


def test_actor_pool_falls_back_to_cpu_when_a_gpu_actor_cannot_start(ray_session, tmp_path, monkeypatch):
    """Auto GPU: an actor asks for a GPU free when the pool starts; if it is not placed in time, a CPU one runs."""
    from jobs._ray import plan_actor_gpus, run_actor_pool

    free = {"CPU": 2.0}
    monkeypatch.setattr(ray_session, "available_resources", lambda: dict(free))
    assert plan_actor_gpus(5, num_actors=0, num_cpus=0.5, num_gpus=-1) == [0.0] * 4  # no GPU: free CPUs / 0.5
    assert plan_actor_gpus(1, num_actors=3, num_cpus=1.0, num_gpus=-1) == [0.0]  # never more actors than items
    assert plan_actor_gpus(5, num_actors=2, num_cpus=1.0, num_gpus=0.5) == [0.5, 0.5]  # explicit: every actor
    free["GPU"] = 3.0
    assert plan_actor_gpus(8, num_actors=0, num_cpus=1.0, num_gpus=-1) == [1.0] * 3  # auto: one actor per free GPU
    free["GPU"] = 1.0  # a GPU "free" as the pool starts ...
    assert plan_actor_gpus(3, num_actors=2, num_cpus=0.25, num_gpus=-1) == [1.0, 0.0]
    paths = [tmp_path / f"{i}.txt" for i in range(6)]
    report = run_actor_pool(_counting_worker(), {"tag": "w"}, [("work", (str(p), "slow")) for p in paths],
                            num_actors=2, num_cpus=0.25, num_gpus=-1, start_timeout_s=1.0)
    # ... but the cluster has none: that actor never starts, is replaced by a CPU one after 1 s, and every
    # item runs on CPU (on the first actor, or on both once the replacement is up)
    assert [o.value for o in report.outcomes] == ["w:slow:1"] * 6
    assert report.gpu_requests_dropped == 1 and 1 <= len(report.workers) <= 2
