"""The one place jobs start Ray and fan work out as tasks (kdtrack/ itself never imports ray)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence


def ensure_ray():
    """The ``ray`` module, initialised: joins ``RAY_ADDRESS`` when set, else starts a local cluster."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return ray


def map_tasks(fn: Callable[..., Any], args_list: Sequence[tuple], *, use_ray: bool = True,
              num_cpus: float = 1.0, num_gpus: float = 0.0, **kwargs: Any) -> list[Any]:
    """``[fn(*args, **kwargs) for args in args_list]``, as parallel Ray tasks when ``use_ray``
    and there is more than one item (order kept); in this process otherwise."""
    if not (use_ray and len(args_list) > 1):
        return [fn(*args, **kwargs) for args in args_list]
    prefix: tuple = ()
    if isinstance(fn, functools.partial):  # ray.remote takes plain functions only
        fn, prefix, kwargs = fn.func, fn.args, {**fn.keywords, **kwargs}
    ray = ensure_ray()
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    return ray.get([task.remote(*prefix, *args, **kwargs) for args in args_list])
