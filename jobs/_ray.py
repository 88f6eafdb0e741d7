"""The one place jobs start Ray and fan work out (kdtrack/ itself never imports ray).

Two shapes of work:

* :func:`map_tasks` — stateless Ray tasks (scoring files, generating shards);
* :func:`run_actor_pool` — a pool of actors that each build something expensive once (a
  network) and then take work items one at a time, as they free up. Every item comes back as an
  :class:`Outcome` (its value, or its error as one line), so one failure never drops the others.

Retries. A worker process that dies (node lost, out-of-memory kill) is restarted by Ray and the
item re-run (``max_restarts`` / ``max_task_retries``). When Ray gives up first (a node lost: until the GCS
notices, every retry on that actor fails at once with "actor unavailable"), the pool kills that actor, starts
a new one wherever Ray finds room and queues the item again, up to ``max_task_retries`` times: items must be
idempotent (the workers return results, the driver writes them). Exceptions raised by the work itself are
retried only when another attempt may succeed: :data:`RETRY_EXCEPTIONS` (timeouts, dropped
connections, and :class:`TransientError`, which :func:`transient_errors` makes of an ``OSError``
whose errno says "try again": ``EIO``, ``ESTALE`` on NFS, ...). A corrupt image or a missing file
fails at once, with its message.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNABORTED, errno.EBUSY, errno.EHOSTUNREACH, errno.ENETUNREACH})


class TransientError(RuntimeError):
    """An error that another attempt may not hit (shared storage hiccup); Ray retries it."""


RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (TransientError, TimeoutError, ConnectionError)


def quiet_ray_train_reports() -> None:
    """In a Ray Train worker: Ray Train's per-report line ("Reporting training result N: TrainingReport(...)",
    at INFO, one per report) off the console; its warnings and errors stay. Ray 2.60 logs it under its
    module's file path instead of the ``ray.train`` logger that ``RunConfig(logging_config=...)`` sets, so
    that setting (which ``jobs.train`` uses for the rest of Ray Train's chatter) does not reach it."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


@contextlib.contextmanager
def transient_errors() -> Iterator[None]:
    """Inside a task: an ``OSError`` with a "try again" errno is re-raised as :class:`TransientError`."""
    try:
        yield
    except RETRY_EXCEPTIONS:
        raise
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise TransientError(str(exc)) from exc
        raise


def describe_error(exc: BaseException) -> str:
    """One line for a failed item: the task's own exception (Ray's wrapper and traceback left out)."""
    if "ray" in sys.modules:
        import ray.exceptions

        if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
            exc = exc.cause
        elif isinstance(exc, ray.exceptions.RayActorError):
            return f"worker died: {str(exc).strip().splitlines()[0]}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def refuse_unless_joining(problem: Exception) -> None:
    """Work that does not fit the cluster's CPUs never starts: it would hang silently (RAY_NOTES).
    ``problem`` is raised on a cluster this job started; joining one (``RAY_ADDRESS``, which may
    autoscale) it is printed as a warning."""
    if not os.environ.get("RAY_ADDRESS"):
        raise problem
    print(f"warning: {problem} (an autoscaling cluster may still add nodes)", flush=True)


@contextlib.contextmanager
def sigint_handler_kept() -> Iterator[None]:
    """Puts the SIGINT handler back as it was after the block. Ray Train's ``fit`` installs its own, which holds
    the run's controller actor: left in place, the finished controller (hundreds of MB, and a Ray Data run's
    dataset manager and split coordinator with it) lives on until the next fit or the end of the process."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


def ensure_ray():
    """The ``ray`` module, initialised: joins ``RAY_ADDRESS`` when set, else starts a local cluster."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return ray


def map_tasks(fn: Callable[..., Any], args_list: Sequence[tuple], *, use_ray: bool = True,
              num_cpus: float = 1.0, num_gpus: float = 0.0, max_retries: int = 2, **kwargs: Any) -> list[Any]:
    """``[fn(*args, **kwargs) for args in args_list]``, as parallel Ray tasks when ``use_ray``
    and there is more than one item (order kept); in this process otherwise.

    A task is re-run up to ``max_retries`` times when its worker dies or it raises one of
    :data:`RETRY_EXCEPTIONS`; any other error is raised here (the first one)."""
    if not (use_ray and len(args_list) > 1):
        return [fn(*args, **kwargs) for args in args_list]
    prefix: tuple = ()
    if isinstance(fn, functools.partial):  # ray.remote takes plain functions only
        fn, prefix, kwargs = fn.func, fn.args, {**fn.keywords, **kwargs}
    ray = ensure_ray()
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                      retry_exceptions=list(RETRY_EXCEPTIONS))(fn)
    return ray.get([task.remote(*prefix, *args, **kwargs) for args in args_list])


# --------------------------------------------------------------------------- actor pools


@dataclass
class Outcome:
    """What became of one work item: its value, or the one-line error that stopped it."""

    index: int
    value: Any = None
    error: str | None = None
    seconds: float = 0.0  # submission (or, in-process, start) to completion

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PoolReport:
    """Outcomes in item order, and what each started worker reported from ``ready()``."""

    outcomes: list[Outcome]
    workers: list[dict] = field(default_factory=list)
    gpu_requests_dropped: int = 0  # actors that asked for a GPU, did not start in time and were replaced by CPU ones


def plan_actor_gpus(num_items: int, *, num_actors: int, num_cpus: float, num_gpus: float) -> list[float]:
    """GPUs each actor of a pool asks for; the list's length is the pool size.

    ``num_gpus >= 0`` is asked by every actor. ``num_gpus < 0`` (auto) decides *as the pool
    starts*, from the GPUs free right now (``ray.available_resources()``), not from the cluster's
    total: one GPU for each of as many actors as there are free GPUs, CPU for the rest. A GPU taken
    between this call and the actor's start only delays that actor; :func:`run_actor_pool` replaces
    it by a CPU actor after ``start_timeout_s``. ``num_actors <= 0`` sizes the pool to the free
    GPUs (auto) or else to the free CPUs at ``num_cpus`` each; never more actors than items.
    """
    import ray

    free = ray.available_resources()
    free_gpus = int(free.get("GPU", 0.0) + 1e-9)
    if num_actors > 0:
        size = num_actors
    elif num_gpus < 0 and free_gpus:
        size = free_gpus
    elif num_gpus > 0:
        size = max(1, int(free.get("GPU", 0.0) / num_gpus + 1e-9))
    else:
        size = max(1, int(free.get("CPU", 0.0) / num_cpus + 1e-9)) if num_cpus > 0 else num_items
    size = max(1, min(size, num_items))
    if num_gpus >= 0:
        return [float(num_gpus)] * size
    with_gpu = min(size, free_gpus)
    return [1.0] * with_gpu + [0.0] * (size - with_gpu)


def run_actor_pool(
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    calls: Sequence[tuple[str, tuple]],
    *,
    use_ray: bool = True,
    local_kwargs: dict[str, Any] | None = None,
    num_actors: int = 0,
    num_cpus: float = 1.0,
    num_gpus: float = -1.0,
    max_restarts: int = 2,
    max_task_retries: int = 2,
    start_timeout_s: float = 120.0,
    on_done: Callable[[Outcome], None] | None = None,
    on_ready: Callable[[dict], None] | None = None,
) -> PoolReport:
    """Run ``getattr(worker, method)(*args)`` for each ``(method, args)`` of ``calls`` on a pool of workers.

    ``worker_cls(**worker_kwargs)`` is built once per actor (``use_ray``) or once in this process
    (``local_kwargs`` updating the kwargs there); it must have a ``ready()`` method returning a
    dict (device, node, ...) that is called as it starts. Items go to whichever actor is free, in
    order, so actors that start late or run slow (CPU beside GPU) just take fewer. Actors are
    spread over nodes (``SPREAD``), asked for ``num_cpus`` each and GPUs per
    :func:`plan_actor_gpus`; every actor is killed at the end. ``on_done(outcome)`` is called on
    this (driver) side as each item finishes, ``on_ready(info)`` as each worker starts.
    """
    if not use_ray:
        return _run_local(worker_cls, {**worker_kwargs, **(local_kwargs or {})}, calls,
                          max_task_retries=max_task_retries, on_done=on_done, on_ready=on_ready)
    ray = ensure_ray()
    if not calls:
        return PoolReport(outcomes=[])
    pool = _ActorPool(ray, ray.remote(worker_cls), worker_kwargs, calls, num_cpus=num_cpus, num_gpus=num_gpus,
                      max_restarts=max_restarts, max_task_retries=max_task_retries, start_timeout_s=start_timeout_s,
                      on_done=on_done, on_ready=on_ready)
    try:
        for gpus in plan_actor_gpus(len(calls), num_actors=num_actors, num_cpus=num_cpus, num_gpus=num_gpus):
            pool.start(gpus)
        pool.run()
    finally:
        for actor in pool.actors:
            ray.kill(actor)
    report = pool.report
    report.outcomes = [o if o is not None else Outcome(i, error="not run") for i, o in enumerate(pool.outcomes)]
    return report


class _ActorPool:
    """The driver's book-keeping of one :func:`run_actor_pool`: actors starting (``pending``: their
    ``ready()`` refs), idle and busy ones, the items still queued, and each item's outcome."""

    def __init__(self, ray: Any, remote_cls: Any, worker_kwargs: dict[str, Any], calls: Sequence[tuple[str, tuple]],
                 *, num_cpus: float, num_gpus: float, max_restarts: int, max_task_retries: int,
                 start_timeout_s: float, on_done: Callable[[Outcome], None] | None,
                 on_ready: Callable[[dict], None] | None) -> None:
        self.ray, self.remote_cls, self.worker_kwargs, self.calls = ray, remote_cls, worker_kwargs, calls
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.max_restarts, self.max_task_retries, self.start_timeout_s = max_restarts, max_task_retries, start_timeout_s
        self.on_done, self.on_ready = on_done, on_ready
        self.outcomes: list[Outcome | None] = [None] * len(calls)
        self.report = PoolReport(outcomes=[])
        self.pending: dict[Any, tuple[Any, float, float]] = {}  # ready() ref -> (actor, gpus, started at)
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.busy: dict[Any, tuple[Any, int, float]] = {}  # call ref -> (actor, item, submitted at)
        self.gpus: dict[Any, float] = {}  # actor -> the GPUs it asked for (a replacement asks the same)
        self.lost: collections.Counter = collections.Counter()  # item -> times its worker was lost under it
        self.queue = collections.deque(range(len(calls)))
        self.start_errors: list[str] = []
        self.warned_waiting = False

    def start(self, gpus: float) -> None:
        actor = self.remote_cls.options(
            num_cpus=self.num_cpus, num_gpus=gpus, max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries, scheduling_strategy="SPREAD",
        ).remote(**self.worker_kwargs)
        self.actors.append(actor)
        self.gpus[actor] = gpus
        self.pending[actor.ready.remote()] = (actor, gpus, time.monotonic())

    def finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.index] = outcome
        if self.on_done is not None:
            self.on_done(outcome)

    def run(self) -> None:
        """Hand queued items to idle actors until every item has an outcome (or no actor is left)."""
        ray = self.ray
        while self.queue or self.busy:
            while self.idle and self.queue:
                actor, index = self.idle.pop(), self.queue.popleft()
                method, args = self.calls[index]
                ref = getattr(actor, method).options(retry_exceptions=list(RETRY_EXCEPTIONS)).remote(*args)
                self.busy[ref] = (actor, index, time.monotonic())
            if not self.busy and not self.pending:  # every actor failed to start or died
                reason = self.start_errors[-1] if self.start_errors else "no worker left"
                while self.queue:
                    self.finish(Outcome(self.queue.popleft(), error=f"no worker could run it ({reason})"))
                break
            done, _ = ray.wait(list(self.busy) + list(self.pending), num_returns=1,
                               timeout=1.0 if self.pending else None)
            self._watch_starts(time.monotonic())
            if not done or done[0] not in self.busy and done[0] not in self.pending:
                continue
            if done[0] in self.pending:
                self._started(done[0])
            else:
                self._returned(done[0])

    def _watch_starts(self, now: float) -> None:
        """Actors still starting: in auto GPU mode one waiting past ``start_timeout_s`` for a GPU is
        replaced by a CPU one; when nothing runs, say (once) what Ray is waiting for."""
        for ref, (actor, gpus, started) in list(self.pending.items()):
            if gpus > 0 and self.num_gpus < 0 and now - started > self.start_timeout_s:
                del self.pending[ref]  # auto mode: the GPU went elsewhere; run on CPU instead of waiting
                self.ray.kill(actor)
                self.report.gpu_requests_dropped += 1
                self.start(0.0)
        if not self.busy and not self.idle and not self.warned_waiting and any(
                now - started > self.start_timeout_s for _, _, started in self.pending.values()):
            self.warned_waiting = True
            print(f"waiting for Ray to place {len(self.pending)} actor(s) of {self.num_cpus} CPU "
                  f"(free now: {self.ray.available_resources()})", flush=True)

    def _replace(self, actor: Any) -> None:
        """A lost actor is killed for good and a new one started: Ray would restart it only once the GCS has
        noticed the node is gone (seconds to tens of seconds), and only where its old resources fit."""
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001  (already gone)
            pass
        self.start(self.gpus.pop(actor, 0.0))

    def _started(self, ref: Any) -> None:
        actor, _, _ = self.pending.pop(ref)
        try:
            info = self.ray.get(ref)
        except Exception as exc:  # the constructor raised: this actor is gone
            self.start_errors.append(describe_error(exc))
            return
        self.report.workers.append(info)
        if self.on_ready is not None:
            self.on_ready(info)
        self.idle.append(actor)

    def _returned(self, ref: Any) -> None:
        actor, index, submitted = self.busy.pop(ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # its worker is lost and Ray's own retries are spent
            self._replace(actor)
            if self.lost[index] < self.max_task_retries:
                self.lost[index] += 1
                self.queue.appendleft(index)  # next, on whichever actor is free first
                return
            self.finish(Outcome(index, error=describe_error(exc), seconds=time.monotonic() - submitted))
            return
        except Exception as exc:
            self.finish(Outcome(index, error=describe_error(exc), seconds=time.monotonic() - submitted))
        else:
            self.finish(Outcome(index, value=value, seconds=time.monotonic() - submitted))
        self.idle.append(actor)


def _run_local(worker_cls: type, worker_kwargs: dict[str, Any], calls: Sequence[tuple[str, tuple]], *,
               max_task_retries: int, on_done: Callable[[Outcome], None] | None,
               on_ready: Callable[[dict], None] | None) -> PoolReport:
    """:func:`run_actor_pool` in this process: one worker, items in order, the same retry rule."""
    report = PoolReport(outcomes=[])
    if not calls:
        return report
    worker = worker_cls(**worker_kwargs)
    info = worker.ready()
    report.workers.append(info)
    if on_ready is not None:
        on_ready(info)
    for index, (method, args) in enumerate(calls):
        start = time.monotonic()
        for attempt in range(max_task_retries + 1):
            try:
                outcome = Outcome(index, value=getattr(worker, method)(*args))
                break
            except RETRY_EXCEPTIONS as exc:
                outcome = Outcome(index, error=describe_error(exc))
            except Exception as exc:
                outcome = Outcome(index, error=describe_error(exc))
                break
        outcome.seconds = time.monotonic() - start
        report.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return report


def worker_location() -> dict[str, Any]:
    """Where this worker runs: ``{"node": Ray node id or "local", "pid"}`` (for progress lines)."""
    node = "local"
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # outside Ray, or a context without a node
        pass
    return {"node": node, "pid": os.getpid()}
