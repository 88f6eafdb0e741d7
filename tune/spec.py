"""A sweep preset: the training config every trial starts from, the searched fields and the budget.

``tune/configs/<name>.yaml`` (or any YAML path)::

    train_config: idf_cpu            # a jobs.train preset (name or path)
    set:                             # fixed for every trial: config field -> value
      train.max_iterations: 240
    search:                          # searched config fields -> one distribution each
      loss.temperature: {loguniform: [0.03, 0.3]}
      loss.queue_size: {choice: [1024, 4096, 16384]}
    tune:                            # SweepConfig below
      metric: val/person_search/mAP
      num_samples: 4

Distributions: ``uniform: [low, high]``, ``loguniform: [low, high]``, ``randint: [low, high)``,
``choice: [values]``, ``grid: [values]`` (every value, ``num_samples`` times each). Everything is
checked here, on the driver, before Ray starts: an unknown field, a value of the wrong type or out of
its range (a searched distribution's ends too: ``kdtrack.config_checks``), a field the recipe does not
read, an objective that training does not measure, or an objective measured on a test split is a
:class:`~kdtrack.config.ConfigError` naming the key and the file. This module does not import Ray
(``tune.spaces`` turns a spec into Ray Tune domains).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from kdtrack.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_dataclass,
    load_config,
    parse_override,
    preset_path,
    read_yaml,
    training_cpus,
    training_gpus,
)
from kdtrack.config_checks import at_least, range_violations
from kdtrack.recipes import recipe_of, recipe_only_fields

SWEEP_DIR = Path(__file__).parent / "configs"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
SWEEP_KEYS = ("train_config", "set", "search", "tune")
# Fields only some recipes read (kdtrack.recipes): searching one the trial's recipe ignores would make
# trials differ by noise only.
RECIPE_ONLY_FIELDS: dict[str, tuple[str, ...]] = recipe_only_fields()
NOT_SEARCHABLE_SECTIONS = {
    "data": "the training records are read once per sweep, on the driver",
    "pseudo": "pseudo.* is read by jobs.pseudo_label, not by training: a sweep that re-labels the videos per "
              "trial (DBSCAN eps) and then trains stage 2 is not built",
    "synth": "synth.* describes how a world is generated, not training",
    "mlflow": "mlflow.* is set by the sweep",
}
NOT_SEARCHABLE_FIELDS = ("train.run_name", "train.recipe", "train.max_iterations", "train.report_every",
                         "train.val_protocols", "train.val_split", "train.val_root", "train.num_workers",
                         "train.cpus_per_worker", "train.use_gpu")


@dataclass(frozen=True)
class SweepConfig:
    """The ``tune:`` section: objective, search algorithm, early stopping and resources."""

    metric: str = "val/person_search/mAP"  # a val/<protocol>/<metric> the trials report (train.val_protocols)
    mode: Literal["max", "min"] = "max"
    num_samples: int = 4  # trials (with grid: per grid point)
    searcher: Literal["random", "optuna"] = "random"  # random: Tune's BasicVariantGenerator; optuna: TPE (pip install optuna)
    scheduler: Literal["asha", "fifo"] = "asha"  # asha: stop weak trials at rungs of grace_period * reduction_factor^k iterations
    grace_period: int = 0  # ASHA: iterations before a trial can be stopped (0 = train.report_every)
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_concurrent_trials: int = 1  # trials at once (each takes trial_cpus + num_workers x cpus_per_worker CPUs)
    trial_cpus: float = 0.1  # CPUs of a trial's driver actor (it only waits on its Ray Train run)
    seed: int = 0  # seed of the search algorithm's draws
    experiment: str = ""  # MLflow experiment of the parent and child runs ("" = the training config's)
    baselines: tuple[str, ...] = ("random", "colour")  # embedders scored once on the same validation boxes (kdtrack.metrics.reid_probe)


# The ranges of the ``tune:`` fields, checked as the training config's are (``kdtrack.config_checks``).
SWEEP_RULES = (
    at_least("tune.num_samples", 1),
    at_least("tune.max_concurrent_trials", 1),
    at_least("tune.reduction_factor", 2, "ASHA keeps the best 1/reduction_factor"),
    at_least("tune.trial_cpus", 0),
    at_least("tune.grace_period", 0, "0 = train.report_every"),
)


@dataclass(frozen=True)
class Distribution:
    kind: str  # one of DISTRIBUTIONS
    args: tuple[Any, ...]

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


@dataclass(frozen=True)
class SweepSpec:
    source: str
    train_config: str
    fixed: tuple[str, ...]  # "section.field=value" overrides for every trial
    search: dict[str, Distribution]
    tune: SweepConfig = field(default_factory=SweepConfig)
    base: Config = field(default_factory=Config)  # train_config with the fixed overrides (and the caller's)

    @property
    def protocol(self) -> str:
        return self.tune.metric.split("/")[1]


def sweep_path(name_or_path: str | Path) -> Path:
    """``tune_idf_cpu`` -> ``tune/configs/tune_idf_cpu.yaml``; a ``.yaml`` path is used as is."""
    return preset_path(name_or_path, SWEEP_DIR, "sweep preset")


def override_text(key: str, value: Any) -> str:
    """``section.field=value`` with the value as JSON (valid YAML), for :func:`kdtrack.config.apply_overrides`."""
    return f"{key}={json.dumps(value)}"


def load_sweep(name_or_path: str | Path, overrides: Sequence[str] = (), *, num_samples: int | None = None) -> SweepSpec:
    """Read and check a sweep preset. ``overrides``: ``tune.<field>=v`` change the sweep, any other
    ``section.field=v`` is one more fixed training override (after the preset's ``set``)."""
    path = sweep_path(name_or_path)
    source = str(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}' (known: {', '.join(SWEEP_KEYS)})")
    train_config = data.get("train_config")
    if not isinstance(train_config, str) or not train_config:
        raise ConfigError(f"{source}: 'train_config' must name a jobs.train preset (e.g. idf_cpu)")
    if not train_config.endswith((".yaml", ".yml")) or Path(train_config).is_absolute():
        resolved_train = train_config
    else:
        resolved_train = str(path.parent / train_config)
    fixed_map = data.get("set") or {}
    if not isinstance(fixed_map, Mapping):
        raise ConfigError(f"{source}: 'set' must map section.field to a value")
    fixed = [override_text(str(k), v) for k, v in fixed_map.items()]
    tune_data = dict(data.get("tune") or {})
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "tune":
            if len(parts) != 2:
                raise ConfigError(f"--set {text!r}: expected tune.<field>=value")
            tune_data[parts[1]] = value
        else:
            fixed.append(override_text(".".join(parts), value))
    if num_samples is not None:
        tune_data["num_samples"] = int(num_samples)
    sweep = build_dataclass(SweepConfig, tune_data, source, prefix="tune")
    broken = range_violations(sweep, SWEEP_RULES, prefix="tune.")
    if broken:
        raise ConfigError(f"{source}: {broken[0][1]}")
    base = load_config(resolved_train, fixed)
    search_data = data.get("search") or {}
    if not isinstance(search_data, Mapping) or not search_data:
        raise ConfigError(f"{source}: 'search' must map at least one config field to a distribution")
    search = {str(k): parse_distribution(str(k), v, source) for k, v in search_data.items()}
    spec = SweepSpec(source=source, train_config=resolved_train, fixed=tuple(fixed), search=search, tune=sweep,
                     base=base)
    check_sweep(spec)
    return spec


def parse_distribution(key: str, value: Any, source: str) -> Distribution:
    """``{kind: args}`` -> :class:`Distribution`, its arguments checked."""
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ConfigError(f"{source}: search.{key} must be one of {{{', '.join(DISTRIBUTIONS)}}}: args, got {value!r}")
    kind, args = next(iter(value.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{source}: search.{key}: unknown distribution '{kind}' (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{source}: search.{key}: {kind} takes a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{source}: search.{key}: {kind} takes [low, high], got {args!r}")
        low, high = args
        if not low < high:
            raise ConfigError(f"{source}: search.{key}: {kind} needs low < high, got {args!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{source}: search.{key}: loguniform needs low > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{source}: search.{key}: randint takes integers [low, high), got {args!r}")
    return Distribution(kind, tuple(args))


def sample_points(dist: Distribution) -> list[Any]:
    """Values that stand for the distribution when its type is checked: both ends, or every listed value."""
    if dist.kind == "randint":
        return [dist.args[0], dist.args[1] - 1]
    return list(dist.args)


def check_sweep(spec: SweepSpec) -> None:
    """Everything that can be known before a trial starts (see the module docstring)."""
    src, cfg, sweep = spec.source, spec.base, spec.tune
    recipe = cfg.train.recipe
    fixed_keys = {text.split("=", 1)[0] for text in spec.fixed}
    for key, dist in spec.search.items():
        section = key.split(".", 1)[0]
        if section in NOT_SEARCHABLE_SECTIONS:
            raise ConfigError(f"{src}: search.{key}: not searchable ({NOT_SEARCHABLE_SECTIONS[section]})")
        if key in NOT_SEARCHABLE_FIELDS:
            raise ConfigError(f"{src}: search.{key}: set by the sweep or fixed for all trials; put it under 'set'")
        if key in fixed_keys:
            raise ConfigError(f"{src}: search.{key} is also fixed by 'set' / --set: keep one")
        for value in sample_points(dist):
            try:
                apply_overrides(cfg, [override_text(key, value)])
            except ConfigError as exc:
                raise ConfigError(f"{src}: search.{key}: {exc}") from None
        users = RECIPE_ONLY_FIELDS.get(key)
        if users and recipe not in users:
            raise ConfigError(f"{src}: search.{key} is read only by train.recipe {' | '.join(users)}; this sweep "
                              f"trains '{recipe}' (every trial would differ by noise only)")
    if not recipe_of(cfg).sweepable:
        raise ConfigError(f"{src}: train.recipe '{recipe}' is not swept (its validation is jobs.evaluate market1501)")
    parts = sweep.metric.split("/")
    if len(parts) != 3 or parts[0] != "val":
        raise ConfigError(f"{src}: tune.metric must be a validation metric val/<protocol>/<metric> "
                          f"(e.g. val/person_search/mAP), never a training loss; got {sweep.metric!r}")
    if parts[1] not in cfg.train.val_protocols:
        raise ConfigError(f"{src}: tune.metric {sweep.metric!r} is not measured: train.val_protocols is "
                          f"{list(cfg.train.val_protocols)} (set train.val_protocols: [{parts[1]}])")
    if parts[1] == "person_search" and cfg.train.val_split == "test":
        raise ConfigError(f"{src}: train.val_split is 'test': the sweep objective must come from a validation "
                          f"split that no final report uses (the world's 'val' split)")
    if parts[1] == "mot":
        raise ConfigError(f"{src}: tune.metric on the 'mot' protocol reads MOT17 val-half frames, which the "
                          f"re-ID test reports also use: use val/person_search/<metric>")
    if cfg.train.max_iterations <= 0 or cfg.train.epochs != 0:
        raise ConfigError(f"{src}: a sweep runs on an iteration budget: set train.epochs: 0 and "
                          f"train.max_iterations > 0 (ASHA's max_t)")
    if cfg.train.report_every <= 0:
        raise ConfigError(f"{src}: set train.report_every > 0: the objective is measured at every report")
    from kdtrack.metrics.reid_probe import BASELINES

    unknown = [b for b in sweep.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"{src}: tune.baselines: unknown {unknown} (known: {', '.join(BASELINES)})")
    if sweep.searcher == "optuna" and any(d.kind == "grid" for d in spec.search.values()):
        raise ConfigError(f"{src}: the optuna searcher does not take grid distributions: use choice")


def trial_cpus_needed(spec: SweepSpec) -> float:
    """CPUs one trial holds: its driver actor, its Ray Train workers and its Ray Data decode actors."""
    return spec.tune.trial_cpus + training_cpus(spec.base)


def check_resources(spec: SweepSpec, cluster_cpus: float, cluster_gpus: float = 0.0) -> None:
    """A trial that needs more CPUs (or, with ``train.use_gpu``, GPUs) than the cluster has never starts:
    Tune waits forever (the classic hang on a 2-core machine). Refused with the numbers to change."""
    gpus = training_gpus(spec.base)
    if gpus > cluster_gpus + 1e-9:
        raise ConfigError(f"one trial needs {gpus:g} GPUs (train.num_workers {spec.base.train.num_workers} x 1 GPU "
                          f"per worker with train.use_gpu) but the cluster has {cluster_gpus:g}: it would never "
                          f"start; lower train.num_workers or set train.use_gpu=false")
    need = trial_cpus_needed(spec)
    if need > cluster_cpus + 1e-9:
        tc = spec.base.train
        decode = need - spec.tune.trial_cpus - tc.num_workers * tc.cpus_per_worker
        raise ConfigError(f"one trial needs {need:g} CPUs (tune.trial_cpus {spec.tune.trial_cpus:g} + "
                          f"train.num_workers {tc.num_workers} x train.cpus_per_worker {tc.cpus_per_worker:g} + "
                          f"{decode:g} for the Ray Data decode actors) but "
                          f"the cluster has {cluster_cpus:g}: it would never start; lower train.cpus_per_worker "
                          f"(e.g. --set train.cpus_per_worker={max(0.1, math.floor((cluster_cpus - spec.tune.trial_cpus - decode) * 10 / max(tc.num_workers, 1)) / 10):g})")
