"""A checked :class:`tune.spec.SweepSpec` as Ray Tune objects: the param space, searcher and scheduler.

The param space is flat and keyed by config field names (``{"loss.temperature": loguniform(...)}``),
so a trial's config is ``{field: value}`` and becomes ``--set``-style overrides of the base config.
A sweep across recipes adds ``train.recipe`` (a grid over its recipes) and draws each other field with
Tune's ``sample_from`` from the distribution of the trial's recipe, or ``None`` where that recipe does
not search it (Ray's conditional search space).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdtrack.config import ConfigError
from tune.spec import RECIPE_FIELD, Distribution, SweepSpec


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


class ConditionalDraw:
    """``sample_from``'s function for one field of a sweep across recipes: a draw from the distribution the
    trial's recipe gives the field, ``None`` where it gives none. Seeded (Tune passes no random state to
    ``sample_from``): the same sweep seed draws the same values."""

    def __init__(self, by_recipe: dict[str, Distribution], seed: int) -> None:
        self.by_recipe = dict(by_recipe)
        self._rng = np.random.default_rng(seed)

    def __call__(self, config: Any) -> Any:
        dist = self.by_recipe.get(config[RECIPE_FIELD])
        if dist is None:
            return None
        value = domain(dist).sample(random_state=self._rng)
        return value.item() if hasattr(value, "item") else value


def param_space(spec: SweepSpec) -> dict[str, Any]:
    if not spec.recipes:
        return {key: domain(dist) for key, dist in spec.search.items()}
    from ray import tune

    space: dict[str, Any] = {RECIPE_FIELD: domain(spec.search[RECIPE_FIELD])}
    for i, field in enumerate(f for f in spec.searched if f != RECIPE_FIELD):
        by_recipe = {name: arm.search[field] for name, arm in spec.recipes.items() if field in arm.search}
        space[field] = tune.sample_from(ConditionalDraw(by_recipe, seed=spec.tune.seed * 1000 + i))
    return space


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
