"""The scheduling-loop throttle (data_pipelines.loop_throttle): a minimum step period, read from the dataset's
context, registered once, and called by Ray Data's executor while a slow consumer lets the stream run ahead."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from ray.data import DataContext

from data_pipelines.loop_throttle import MIN_STEP_CONFIG_KEY, LoopThrottle, throttle_scheduling_loop


def test_a_step_that_returns_at_once_sleeps_the_rest_of_the_period_and_a_slow_one_does_not():
    throttle = LoopThrottle(min_step_s=0.05)
    throttle.before_execution_starts(None)
    start = time.perf_counter()
    throttle.on_execution_step(None)  # the step after the start returned at once: sleep ~0.05 s
    throttle.on_execution_step(None)  # and again
    assert time.perf_counter() - start >= 0.1 - 1e-3
    slept = throttle.slept_s
    assert 0.09 <= slept <= 0.1 + 1e-3
    time.sleep(0.06)  # a step that waited on a task for longer than the period
    throttle.on_execution_step(None)
    assert throttle.slept_s == slept

    off = LoopThrottle(min_step_s=0.0)
    off.before_execution_starts(None)
    for _ in range(100):
        off.on_execution_step(None)
    assert off.slept_s == 0.0


def test_the_period_comes_from_the_executors_context_and_registering_is_idempotent():
    context = DataContext()
    throttle_scheduling_loop(0.03, context)
    throttle_scheduling_loop(0.04, context)
    assert context.custom_execution_callback_classes.count(LoopThrottle) == 1
    assert context.get_config(MIN_STEP_CONFIG_KEY) == 0.04
    built_by_ray = LoopThrottle()  # Ray Data's planner builds callbacks without arguments
    built_by_ray.before_execution_starts(SimpleNamespace(_data_context=context))
    assert built_by_ray.min_step_s == 0.04
    with pytest.raises(ValueError, match=">= 0"):
        throttle_scheduling_loop(-1.0, context)


def test_ray_data_calls_it_from_the_datasets_context_at_most_once_per_period(ray_session):
    import ray

    context = DataContext.get_current()
    saved = (list(context.custom_execution_callback_classes), context.get_config(MIN_STEP_CONFIG_KEY, 0.0))
    try:
        throttle_scheduling_loop(0.05)
        ds = ray.data.range(40, override_num_blocks=10).map_batches(lambda b: b, batch_size=4)
        steps, slept = LoopThrottle.steps_total, LoopThrottle.slept_total_s
        start = time.perf_counter()
        rows = 0
        for batch in ds.iter_batches(batch_size=4, prefetch_batches=1):
            rows += len(batch["id"])
            time.sleep(0.05)  # a training step
        elapsed = time.perf_counter() - start
        steps, slept = LoopThrottle.steps_total - steps, LoopThrottle.slept_total_s - slept
    finally:
        context.custom_execution_callback_classes[:] = saved[0]
        context.set_config(MIN_STEP_CONFIG_KEY, saved[1])
    assert rows == 40
    assert steps >= 3 and slept > 0  # the executor (in this process) built and called it
    assert steps <= elapsed / 0.05 + 2  # never two steps within one period
