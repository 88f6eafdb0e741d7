"""Every training recipe, declared once: what it trains, on what, which config fields only it reads, and
what it refuses.

Adding a recipe used to mean finding each place that compared ``train.recipe`` with a name (the job's
id-mode map, the contrastive and classifier lists, the sweep's recipe-only fields, the teacher checks
in four jobs). Those places now read a :class:`Recipe` from :data:`RECIPES`; a name is compared only
here. Pure Python (no torch at import): the driver checks a config against its recipe before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from kdtrack.config import Config, ConfigError

# the same people in several images (frames of one video; one person seen by several person-search cameras):
# never the "independent" images IDF stage 1 assumes
RECURRING_PEOPLE_SOURCES = ("mot17", "kinetics", "person_search")
KD_TEACHER_PASS = "pass --set teacher.checkpoint=T/checkpoint.pt"
KD_TEACHER_HELP = (f"train one with train.recipe=teacher (python -m jobs.train --config teacher_cpu --data-root W "
                   f"--out T) and {KD_TEACHER_PASS}")

Rule = Callable[[Config], "str | None"]  # a refusal's message, or None when the config is fine


@dataclass(frozen=True)
class Recipe:
    """One ``train.recipe``: read by ``jobs.train`` (driver and workers), ``jobs.tune``, ``jobs.gpu_check``,
    MLflow logging and the jobs that tell a teacher checkpoint from a student's."""

    name: str
    id_mode: str  # the loss.id_mode it trains with ("" = the Re-ID teacher: no student, loss.id_mode unused)
    items: Literal["records", "clips", "crops"] = "records"  # what the driver reads for the workers
    views: int = 1  # augmented views per training sample (2: IDF stage 1's pair of one image)
    key_encoder: bool = False  # the contrastive queue is filled by a momentum key encoder (loss.key_momentum > 0)
    # identity classifier over the people of the training data: "hard_labels" when loss.eta < 1 (KD),
    # "always" (supervised: training data without one identity label is refused)
    classifier: Literal["", "hard_labels", "always"] = ""
    distils: bool = False  # the student regresses a frozen Re-ID teacher's features (teacher.* read)
    sweep_fields: tuple[str, ...] = ()  # fields a sweep may search only for this recipe (others ignore them)
    sweepable: bool = True  # jobs.tune may sweep it (a validation metric its training reports)
    refuses: tuple[Rule, ...] = ()  # its own rules, in order, checked on the driver (check_recipe_rules)

    @property
    def student(self) -> bool:
        """Trains the student network (every recipe but the Re-ID teacher)."""
        return self.items != "crops"

    @property
    def reads_teacher(self) -> bool:
        """Reads the ``teacher`` config section (KD distils one; the teacher recipe trains one)."""
        return self.distils or not self.student


# --------------------------------------------------------------------------- rules


def _refuse_recurring_people(cfg: Config) -> str | None:
    recurring = sorted(set(cfg.data.sources) & set(RECURRING_PEOPLE_SOURCES))
    if recurring:
        return (f"train.recipe '{cfg.train.recipe}' (IDF stage 1's contrastive term) treats every person of every "
                f"image as a unique identity; "
                f"data.sources {recurring} hold the same people in several images (false negatives): use still "
                f"images only (--set data.sources=[crowdhuman,coco]); video belongs to stage 2 (pseudo-labels)")
    return None


def _refuse_without_pseudo_labels(cfg: Config) -> str | None:
    if not cfg.data.pseudo_labels:
        return (f"train.recipe '{cfg.train.recipe}' (IDF stage 2) trains on pseudo-labelled frame pairs: pass "
                "--set data.pseudo_labels=L/labels.parquet (from python -m jobs.pseudo_label) and "
                "--init-from the stage-1 checkpoint")
    return None


def _refuse_other_teacher_dim(cfg: Config) -> str | None:
    from kdtrack.models import teacher_feature_dim  # torch: only when a KD config is checked

    dim = teacher_feature_dim(cfg.teacher)
    if cfg.model.embedding_dim != dim:
        return (f"train.recipe '{cfg.train.recipe}': model.embedding_dim ({cfg.model.embedding_dim}) must equal the "
                f"teacher's feature dimension ({dim})")
    return None


def _refuse_untrained_teacher(cfg: Config) -> str | None:
    """KD distils a *trained* teacher: random teacher weights would teach the student nothing while every
    loss curve looks normal, so an untrained teacher is refused, not warned about. Its features come either
    from ``teacher.embeddings`` (offline, ``jobs.teacher_embeddings``) or from the checkpoint."""
    t = cfg.teacher
    if t.embeddings:
        if not Path(t.embeddings).exists():
            return (f"teacher.embeddings: {t.embeddings} does not exist (write it with python -m "
                    f"jobs.teacher_embeddings --teacher T/checkpoint.pt --data-root W --out E)")
        return None
    if not t.checkpoint:
        return (f"train.recipe '{cfg.train.recipe}' distils a trained Re-ID teacher, but teacher.checkpoint is "
                f"empty and teacher.embeddings is not set: {KD_TEACHER_HELP}")
    if not Path(t.checkpoint).is_file():
        return f"teacher.checkpoint: {t.checkpoint} is not a file ({KD_TEACHER_HELP})"
    return None


def _refuse_normalised_student(cfg: Config) -> str | None:
    if cfg.model.normalize_embedding:
        return (f"train.recipe '{cfg.train.recipe}' regresses the teacher's raw feature at each centre: set "
                "model.normalize_embedding=false (its contrastive term normalises what it reads)")
    return None


def _refuse_hard_labels(cfg: Config) -> str | None:
    if cfg.loss.eta < 1.0:
        return (f"train.recipe 'hybrid' distils soft targets only (loss.eta = 1, got {cfg.loss.eta}): its samples' "
                "ids are the contrastive term's person keys, not identity labels")
    return None


def _refuse_teacher_reports(cfg: Config) -> str | None:
    if cfg.train.report_every or cfg.train.val_protocols:
        return ("train.recipe 'teacher' reports after epochs and is validated with python -m "
                "jobs.evaluate market1501: leave train.report_every at 0 and train.val_protocols empty")
    return None


def _refuse_teacher_checkpoint(cfg: Config) -> str | None:
    t = cfg.teacher
    if t.checkpoint:
        return (f"train.recipe 'teacher' trains the teacher and writes <out>/checkpoint.pt; "
                f"teacher.checkpoint must be empty, got {t.checkpoint!r}")
    if t.pretrained and not Path(t.pretrained).is_file():
        return f"teacher.pretrained: {t.pretrained} is not a file"
    return None


# --------------------------------------------------------------------------- the table

CONTRASTIVE_FIELDS = ("loss.temperature", "loss.queue_size", "loss.key_momentum", "loss.batch_negatives",
                      "loss.id_weight", "loss.centre_region_radius", "loss.nn_positives", "loss.key_positives")
CLASSIFIER_FIELDS = ("loss.num_id_classes", "loss.s_det_init", "loss.s_id_init", "train.classifier_lr_mult")
# the hybrid's weights: the initial Kendall log-variances of detection, KD and the contrastive term (under
# loss.uncertainty, the hybrid's default, these replace the contrastive lambda, loss.id_weight)
HYBRID_WEIGHT_FIELDS = ("loss.s_det_init", "loss.s_id_init", "loss.s_contrastive_init")
METRIC_MEMORY_FIELDS = ("loss.supervised_memory", "loss.supervised_metric_weight", "loss.supervised_temperature")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("detection", id_mode="none"),
    Recipe("contrastive", id_mode="contrastive", views=2, key_encoder=True, sweep_fields=CONTRASTIVE_FIELDS,
           refuses=(_refuse_recurring_people,)),
    Recipe("kd", id_mode="kd", classifier="hard_labels", distils=True,
           sweep_fields=("loss.eta", *CLASSIFIER_FIELDS, "loss.kd_reduction"),
           refuses=(_refuse_other_teacher_dim, _refuse_untrained_teacher)),
    Recipe("video", id_mode="contrastive", items="clips", key_encoder=True, sweep_fields=CONTRASTIVE_FIELDS,
           refuses=(_refuse_without_pseudo_labels,)),
    Recipe("supervised", id_mode="supervised", classifier="always",
           sweep_fields=(*CLASSIFIER_FIELDS, *METRIC_MEMORY_FIELDS)),
    # IDF stage 2 with the supervised recipe's loss over the pseudo-identities (this project's addition, not
    # PointID's): each DBSCAN cluster is a class, contrasted over a memory (cluster-based unsupervised re-ID)
    Recipe("video_classify", id_mode="supervised", items="clips", classifier="always",
           sweep_fields=(*CLASSIFIER_FIELDS, *METRIC_MEMORY_FIELDS), refuses=(_refuse_without_pseudo_labels,)),
    # KD and IDF stage 1 in one run (this project's addition, in neither paper): the teacher's feature at each
    # centre and the dense contrastive term between two views of a still image, Kendall-weighted over the three
    Recipe("hybrid", id_mode="hybrid", views=2, key_encoder=True, distils=True,
           sweep_fields=(*(f for f in CONTRASTIVE_FIELDS if f != "loss.id_weight"), *HYBRID_WEIGHT_FIELDS,
                         "loss.kd_reduction"),
           refuses=(_refuse_recurring_people, _refuse_hard_labels, _refuse_normalised_student,
                    _refuse_other_teacher_dim, _refuse_untrained_teacher)),
    Recipe("teacher", id_mode="", items="crops", sweepable=False,
           refuses=(_refuse_teacher_reports, _refuse_teacher_checkpoint)),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown one is a :class:`ConfigError` listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"train.recipe '{name}' is not a recipe (known: {', '.join(RECIPES)})") from None


def recipe_of(cfg: Any) -> Recipe:
    """The recipe ``cfg.train.recipe`` names."""
    return get_recipe(cfg.train.recipe)


def recipe_only_fields() -> dict[str, tuple[str, ...]]:
    """``{field: recipes that read it}`` for the fields only some recipes read (a sweep searching one for
    another recipe would make its trials differ by noise only)."""
    fields: dict[str, tuple[str, ...]] = {}
    for recipe in RECIPES.values():
        for name in recipe.sweep_fields:
            fields[name] = (*fields.get(name, ()), recipe.name)
    return fields


def check_recipe_rules(cfg: Config) -> Recipe:
    """The recipe of ``cfg``, checked: a student recipe's ``loss.id_mode``, then the recipe's own rules in
    order; the first one broken is a :class:`ConfigError`."""
    recipe = recipe_of(cfg)
    if recipe.student and cfg.loss.id_mode != recipe.id_mode:
        raise ConfigError(f"train.recipe '{recipe.name}' needs loss.id_mode={recipe.id_mode}, got "
                          f"loss.id_mode={cfg.loss.id_mode} (add --set loss.id_mode={recipe.id_mode})")
    for rule in recipe.refuses:
        message = rule(cfg)
        if message:
            raise ConfigError(message)
    return recipe
