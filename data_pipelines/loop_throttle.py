"""A minimum period for Ray Data's scheduling loop, so that a stream ahead of its consumer stops spinning.

Ray Data 2.60's ``StreamingExecutor`` blocks (``ray.wait``, up to 0.1 s) only while some task is running and
not ready. When the stream is ahead of its consumer — every task finished, or finished but held back by
backpressure, which is the normal state of a training stream — each scheduling step returns at once and the
loop spins: in a long ``kd_cpu`` run ``top`` showed the ``SplitCoordinator`` at 60-80 % of a core and
py-spy its executor thread busy in ``_scheduling_loop_step``, a core the train worker and the decode actors
need on a 2-core machine (the same thread runs in the consuming process when a dataset is iterated directly).
``LoopThrottle`` is an execution callback that makes each step last at least ``min_step_s``: a step that
waited on a task is untouched, a spinning one sleeps the rest of the period (at most ``1 / min_step_s``
steps a second; each step still dispatches every task and reads every output it can).
"""

from __future__ import annotations

import time
from typing import Any

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

MIN_STEP_CONFIG_KEY = "kdtrack.scheduling_loop_min_step_s"


class LoopThrottle(ExecutionCallback):
    """Sleep so that consecutive scheduling steps start at least ``min_step_s`` apart (0 = off).

    ``steps`` / ``slept_s`` count this executor's steps and sleep; the class attributes ``steps_total`` /
    ``slept_total_s`` count them over every executor of this process (Ray builds the callbacks itself)."""

    steps_total = 0
    slept_total_s = 0.0

    def __init__(self, min_step_s: float | None = None) -> None:
        self.min_step_s = min_step_s
        self.steps = 0
        self.slept_s = 0.0
        self._last: float | None = None

    def before_execution_starts(self, executor: Any) -> None:
        if self.min_step_s is None:  # built by Ray Data's planner: read the dataset's context
            context = getattr(executor, "_data_context", None) or DataContext.get_current()
            self.min_step_s = float(context.get_config(MIN_STEP_CONFIG_KEY, 0.0))
        self._last = time.perf_counter()

    def on_execution_step(self, executor: Any) -> None:
        now = time.perf_counter()
        self.steps += 1
        LoopThrottle.steps_total += 1
        if self._last is not None and self.min_step_s:
            rest = self.min_step_s - (now - self._last)
            if rest > 0:
                time.sleep(rest)
                self.slept_s += rest
                LoopThrottle.slept_total_s += rest
                now = time.perf_counter()
        self._last = now


def throttle_scheduling_loop(min_step_s: float, context: DataContext | None = None) -> None:
    """Register :class:`LoopThrottle` in ``context`` (default: the current one, which datasets created
    afterwards copy, and ship to the actor that runs them, e.g. Ray Train's ``SplitCoordinator``)."""
    if min_step_s < 0:
        raise ValueError(f"the scheduling loop's minimum step must be >= 0 s, got {min_step_s}")
    context = context or DataContext.get_current()
    context.set_config(MIN_STEP_CONFIG_KEY, float(min_step_s))
    if LoopThrottle not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(LoopThrottle)
