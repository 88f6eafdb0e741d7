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

A sweep across recipes names no ``train_config`` or ``search`` of its own: the recipe itself is searched (every
recipe ``num_samples`` times), each with its own preset and parameters, searched only in its trials::

    recipes:
      supervised: {train_config: sup_cpu}
      contrastive:
        train_config: idf_cpu
        search: {loss.temperature: {loguniform: [0.03, 0.3]}}
    set: {train.max_iterations: 600, ...}   # every recipe's trials: one budget

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
from kdtrack.config_checks import at_least, field_value, range_violations
from kdtrack.recipes import recipe_of, recipe_only_fields

SWEEP_DIR = Path(__file__).parent / "configs"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
SWEEP_KEYS = ("train_config", "set", "search", "tune", "recipes")
RECIPE_KEYS = ("train_config", "set", "search")  # one recipe's part of a sweep across recipes
FINAL_EVALUATIONS = ("reid", "mot")  # tune.final_eval: the test reports of each recipe's best trial (jobs._final_eval)
RECIPE_FIELD = "train.recipe"  # a sweep across recipes searches it (a grid over its recipes)
ONE_BUDGET_FIELDS = ("train.max_iterations", "train.report_every", "train.val_protocols", "train.val_split",
                     "train.val_root")  # the same for every recipe of a sweep across recipes
# Fields only some recipes read (kdtrack.recipes): searching one the trial's recipe ignores would make
# trials differ by noise only.
RECIPE_ONLY_FIELDS: dict[str, tuple[str, ...]] = recipe_only_fields()
# IDF stage 2's clustering: a trial of a clip recipe may re-cluster the stage-1 embeddings cached beside
# data.pseudo_labels (jobs.pseudo_label's parts/) with its own values, without running the network again
CLUSTERING_FIELDS = ("pseudo.eps", "pseudo.min_samples", "pseudo.metric", "pseudo.min_track_frames")
NOT_SEARCHABLE_SECTIONS = {
    "data": "the training records are read once per sweep, on the driver",
    "pseudo": "the other pseudo.* fields (frame sampling, detection threshold) change what the stage-1 network "
              "embeds: re-run jobs.pseudo_label; a stage-2 sweep may search the clustering, "
              + ", ".join(CLUSTERING_FIELDS),
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
    trial_max_failures: int = 2  # restarts of a trial whose process died (a lost node): it resumes from its checkpoint; a trial that raised is not rerun
    seed: int = 0  # seed of the search algorithm's draws
    experiment: str = ""  # MLflow experiment of the parent and child runs ("" = the training config's)
    baselines: tuple[str, ...] = ("random", "colour")  # embedders scored once on the same validation boxes (kdtrack.metrics.reid_probe)
    final_eval: tuple[str, ...] = ()  # then each recipe's best trial on the test reports: reid | mot (jobs._final_eval)


# The ranges of the ``tune:`` fields, checked as the training config's are (``kdtrack.config_checks``).
SWEEP_RULES = (
    at_least("tune.num_samples", 1),
    at_least("tune.max_concurrent_trials", 1),
    at_least("tune.reduction_factor", 2, "ASHA keeps the best 1/reduction_factor"),
    at_least("tune.trial_cpus", 0),
    at_least("tune.trial_max_failures", 0),
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
    # a sweep across recipes: {recipe: that recipe's own sweep} (its preset, fixed fields and search); ``base`` is
    # then the first recipe's, ``search`` the grid over the recipes
    recipes: dict[str, "SweepSpec"] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return self.tune.metric.split("/")[1]

    @property
    def arms(self) -> dict[str, "SweepSpec"]:
        """``{recipe: its sweep}``: the recipes of a sweep across recipes, else this sweep's one recipe."""
        return self.recipes or {self.base.train.recipe: self}

    def arm(self, recipe: str) -> "SweepSpec":
        """The sweep a trial of ``recipe`` runs (``KeyError`` for a recipe this sweep does not train)."""
        return self.arms[recipe]

    @property
    def searched(self) -> tuple[str, ...]:
        """Every field a trial may get a value for (the recipe first, in a sweep across recipes)."""
        fields = list(self.search)
        for arm in self.recipes.values():
            fields += [f for f in arm.search if f not in fields]
        return tuple(fields)


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
    if "recipes" in data:
        return _load_across_recipes(path, data, overrides, num_samples)
    train_config = data.get("train_config")
    if not isinstance(train_config, str) or not train_config:
        raise ConfigError(f"{source}: 'train_config' must name a jobs.train preset (e.g. idf_cpu)")
    resolved_train = _resolve_train_config(path, train_config)
    fixed, later, sweep = _fixed_and_tune(source, data, overrides, num_samples)
    fixed += later
    base = load_config(resolved_train, fixed)
    search_data = data.get("search") or {}
    if not isinstance(search_data, Mapping) or not search_data:
        raise ConfigError(f"{source}: 'search' must map at least one config field to a distribution")
    search = {str(k): parse_distribution(str(k), v, source) for k, v in search_data.items()}
    spec = SweepSpec(source=source, train_config=resolved_train, fixed=tuple(fixed), search=search, tune=sweep,
                     base=base)
    check_sweep(spec)
    return spec


def _resolve_train_config(path: Path, train_config: str) -> str:
    """A preset name or absolute path as is; a relative ``.yaml`` path from the sweep file's folder."""
    if not train_config.endswith((".yaml", ".yml")) or Path(train_config).is_absolute():
        return train_config
    return str(path.parent / train_config)


def _fixed_and_tune(source: str, data: Mapping[str, Any], overrides: Sequence[str], num_samples: int | None
                    ) -> tuple[list[str], list[str], SweepConfig]:
    """``(the sweep's 'set', the caller's --set training fields, the checked tune: section)``."""
    fixed_map = data.get("set") or {}
    if not isinstance(fixed_map, Mapping):
        raise ConfigError(f"{source}: 'set' must map section.field to a value")
    fixed = [override_text(str(k), v) for k, v in fixed_map.items()]
    later: list[str] = []
    tune_data = dict(data.get("tune") or {})
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "tune":
            if len(parts) != 2:
                raise ConfigError(f"--set {text!r}: expected tune.<field>=value")
            tune_data[parts[1]] = value
        else:
            later.append(override_text(".".join(parts), value))
    if num_samples is not None:
        tune_data["num_samples"] = int(num_samples)
    sweep = build_dataclass(SweepConfig, tune_data, source, prefix="tune")
    broken = range_violations(sweep, SWEEP_RULES, prefix="tune.")
    if broken:
        raise ConfigError(f"{source}: {broken[0][1]}")
    return fixed, later, sweep


def _load_across_recipes(path: Path, data: Mapping[str, Any], overrides: Sequence[str],
                         num_samples: int | None) -> SweepSpec:
    """A sweep whose search space holds the recipe: each ``recipes.<name>`` its own checked sweep (the shared
    ``set``, then its own ``set``, then the caller's ``--set``), all at one budget."""
    from kdtrack.recipes import get_recipe

    source = str(path)
    misplaced = [k for k in ("train_config", "search") if k in data]
    if misplaced:
        raise ConfigError(f"{source}: '{misplaced[0]}' belongs under recipes.<name> in a sweep across recipes")
    recipes_data = data["recipes"]
    if not isinstance(recipes_data, Mapping) or len(recipes_data) < 2:
        raise ConfigError(f"{source}: 'recipes' must map two or more train.recipe names to their "
                          f"{{train_config, set, search}}")
    shared, later, sweep = _fixed_and_tune(source, data, overrides, num_samples)
    if sweep.searcher != "random":
        raise ConfigError(f"{source}: tune.searcher '{sweep.searcher}' is not built for a sweep across recipes "
                          f"(each recipe's parameters are conditional on it): use tune.searcher=random")
    arms: dict[str, SweepSpec] = {}
    for name, arm_data in recipes_data.items():
        where = f"{source}: recipes.{name}"
        try:
            get_recipe(str(name))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not isinstance(arm_data, Mapping):
            raise ConfigError(f"{where} must map {', '.join(RECIPE_KEYS)}")
        unknown = sorted(set(arm_data) - set(RECIPE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(RECIPE_KEYS)})")
        train_config = arm_data.get("train_config")
        if not isinstance(train_config, str) or not train_config:
            raise ConfigError(f"{where}: 'train_config' must name a jobs.train preset")
        own = arm_data.get("set") or {}
        if not isinstance(own, Mapping):
            raise ConfigError(f"{where}: 'set' must map section.field to a value")
        budget = sorted(set(own) & set(ONE_BUDGET_FIELDS))
        if budget:
            raise ConfigError(f"{where}: set.{budget[0]} is the sweep's one budget: set it once, in the top 'set'")
        fixed = [*shared, *(override_text(str(k), v) for k, v in own.items()), *later]
        resolved = _resolve_train_config(path, train_config)
        base = load_config(resolved, fixed)
        if base.train.recipe != name:
            raise ConfigError(f"{where}: train_config {train_config} trains train.recipe '{base.train.recipe}', "
                              f"not '{name}'")
        search_data = arm_data.get("search") or {}
        if not isinstance(search_data, Mapping):
            raise ConfigError(f"{where}: 'search' must map config fields to distributions")
        search = {str(k): parse_distribution(str(k), v, f"{where}") for k, v in search_data.items()}
        grids = [k for k, d in search.items() if d.kind == "grid"]
        if grids:
            raise ConfigError(f"{where}: search.{grids[0]}: a grid inside one recipe of a sweep across recipes is "
                              f"not built (the recipes are the grid): use choice")
        arm = SweepSpec(source=f"{where}", train_config=resolved, fixed=tuple(fixed), search=search, tune=sweep,
                        base=base)
        check_sweep(arm, require_search=False)
        arms[str(name)] = arm
    first = next(iter(arms.values()))
    for name, arm in arms.items():
        for key in ONE_BUDGET_FIELDS:
            if field_value(arm.base, key) != field_value(first.base, key):
                raise ConfigError(f"{source}: {key} is {field_value(arm.base, key)!r} for recipes.{name} but "
                                  f"{field_value(first.base, key)!r} for the first recipe: one budget for every "
                                  f"recipe (set it in the top 'set')")
    return SweepSpec(source=source, train_config=first.train_config, fixed=first.fixed,
                     search={RECIPE_FIELD: Distribution("grid", tuple(arms))}, tune=sweep, base=first.base,
                     recipes=arms)


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


def check_sweep(spec: SweepSpec, require_search: bool = True) -> None:
    """Everything that can be known before a trial starts (see the module docstring)."""
    src, cfg, sweep = spec.source, spec.base, spec.tune
    if require_search and not spec.search:
        raise ConfigError(f"{src}: 'search' must map at least one config field to a distribution")
    recipe = cfg.train.recipe
    fixed_keys = {text.split("=", 1)[0] for text in spec.fixed}
    for key, dist in spec.search.items():
        section = key.split(".", 1)[0]
        if key in CLUSTERING_FIELDS:
            _check_reclustering(src, key, cfg)
        elif section in NOT_SEARCHABLE_SECTIONS:
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
            raise ConfigError(f"{src}: search.{key} is read only by train.recipe {' | '.join(users)}; these "
                              f"trials train '{recipe}' (every trial would differ by noise only)")
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
        _check_mot_objective(src, sweep, cfg)
    if cfg.train.max_iterations <= 0 or cfg.train.epochs != 0:
        raise ConfigError(f"{src}: a sweep runs on an iteration budget: set train.epochs: 0 and "
                          f"train.max_iterations > 0 (ASHA's max_t)")
    if cfg.train.report_every <= 0:
        raise ConfigError(f"{src}: set train.report_every > 0: the objective is measured at every report")
    from kdtrack.metrics.reid_probe import BASELINES

    unknown = [b for b in sweep.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"{src}: tune.baselines: unknown {unknown} (known: {', '.join(BASELINES)})")
    unknown = [e for e in sweep.final_eval if e not in FINAL_EVALUATIONS]
    if unknown:
        raise ConfigError(f"{src}: tune.final_eval: unknown {unknown} (known: {', '.join(FINAL_EVALUATIONS)})")
    if sweep.searcher == "optuna" and any(d.kind == "grid" for d in spec.search.values()):
        raise ConfigError(f"{src}: the optuna searcher does not take grid distributions: use choice")


def _check_mot_objective(src: str, sweep: SweepConfig, cfg: Config) -> None:
    """The MOT17 val halves as the objective, FairMOT's train-half / val-half protocol: the trials train on no
    val-half frame, the objective reads the val halves, and no final report of the sweep reads them again (its
    held-out MOT17 report is the test split, scored by the MOTChallenge server)."""
    if cfg.eval.reid_mot_split != "val_half":
        raise ConfigError(f"{src}: tune.metric {sweep.metric!r} validates on the MOT17 val halves: set "
                          f"eval.reid_mot_split=val_half (got {cfg.eval.reid_mot_split!r})")
    if "mot17" in cfg.data.sources and cfg.data.mot_split != "train_half":
        raise ConfigError(f"{src}: tune.metric {sweep.metric!r} validates on the MOT17 val halves, and "
                          f"data.mot_split={cfg.data.mot_split!r} trains on them: set data.mot_split=train_half")
    if "mot" in sweep.final_eval:
        raise ConfigError(f"{src}: tune.final_eval 'mot' tracks the MOT17 val halves, this sweep's validation "
                          f"frames: drop it (the held-out MOT17 report is its test split, on the MOTChallenge "
                          f"server); 'reid' then scores person search alone")


def held_out_protocols(spec: SweepSpec) -> tuple[str, ...]:
    """The re-ID protocols a final report may score: not the one the objective validated on when that is the
    MOT17 val halves (the person-search val split is not the test split, so it stays)."""
    return ("person_search",) if spec.protocol == "mot" else ("person_search", "mot")


def reclusters(spec: SweepSpec) -> bool:
    """Its trials re-cluster the cached stage-1 embeddings (a clustering field is searched)."""
    return any(key in CLUSTERING_FIELDS for key in spec.search)


def _check_reclustering(src: str, key: str, cfg: Config) -> None:
    """A clustering field is searchable for a recipe trained on pseudo-labelled clips whose labels folder
    holds the cached embeddings (``parts/``) the trials re-cluster."""
    recipe = recipe_of(cfg)
    if recipe.items != "clips":
        raise ConfigError(f"{src}: search.{key}: train.recipe '{recipe.name}' does not train on pseudo-labels "
                          f"(a clustering field is searched by stage-2 sweeps: video, video_classify)")
    labels = cfg.data.pseudo_labels
    if not labels or "://" in labels:
        raise ConfigError(f"{src}: search.{key}: the trials re-cluster the stage-1 embeddings cached beside "
                          f"data.pseudo_labels (its parts/ folder): set data.pseudo_labels to a local or shared "
                          f"L/labels.parquet of jobs.pseudo_label, got {labels!r}")
    parts = Path(labels).parent / "parts"
    if not any(parts.rglob("*.npz")):
        raise ConfigError(f"{src}: search.{key}: {parts} holds no cached embeddings to re-cluster (jobs.pseudo_label "
                          f"--out {Path(labels).parent} writes them; an --oracle-truth run has none)")


def trial_cpus_needed(spec: SweepSpec) -> float:
    """CPUs one trial holds: its driver actor, its Ray Train workers and its Ray Data decode actors."""
    return spec.tune.trial_cpus + training_cpus(spec.base)


def check_every_resources(spec: SweepSpec, cluster_cpus: float, cluster_gpus: float = 0.0) -> None:
    """:func:`check_resources` for every recipe of the sweep (each a trial's needs)."""
    for arm in spec.arms.values():
        check_resources(arm, cluster_cpus, cluster_gpus)


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
