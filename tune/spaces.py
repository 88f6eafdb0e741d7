"""A checked :class:`tune.spec.SweepSpec` as Ray Tune objects: the param space, searcher and scheduler.

The param space is flat and keyed by config field names (``{"loss.temperature": loguniform(...)}``),
so a trial's config is ``{field: value}`` and becomes ``--set``-style overrides of the base config.
"""

from __future__ import annotations

from typing import Any

from kdtrack.config import ConfigError
from tune.spec import Distribution, SweepSpec


def domain(dist: Distribution) -> Any:
    from ray import tune

    low_high = dist.args
    if dist.kind == "uniform":
        return tune.uniform(*low_high)
    if dist.kind == "loguniform":
        return tune.loguniform(*low_high)
    if dist.kind == "randint":
        return tune.randint(*low_high)
    if dist.kind == "choice":
        return tune.choice(list(dist.args))
    if dist.kind == "grid":
        return tune.grid_search(list(dist.args))
    raise ValueError(f"unknown distribution {dist.kind!r}")


def param_space(spec: SweepSpec) -> dict[str, Any]:
    return {key: domain(dist) for key, dist in spec.search.items()}


def search_algorithm(spec: SweepSpec) -> Any:
    """Random search (built in, seeded), or Optuna's TPE when ``tune.searcher: optuna`` and optuna is installed."""
    sweep = spec.tune
    if sweep.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("tune.searcher 'optuna' needs optuna: pip install 'kdtrack[optuna]' "
                              "(or use tune.searcher=random)") from None
        return OptunaSearch(seed=sweep.seed)  # a Searcher: TuneConfig.max_concurrent_trials limits it
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # a SearchGenerator: Tune ignores TuneConfig.max_concurrent_trials for it, so the limit goes here
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent_trials)


def scheduler(spec: SweepSpec) -> Any:
    """ASHA on the objective, in training iterations (``max_t`` = the trial budget), or FIFO (none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep, tc = spec.tune, spec.base.train
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="iteration", max_t=tc.max_iterations,
                         grace_period=sweep.grace_period or tc.report_every,
                         reduction_factor=sweep.reduction_factor)
