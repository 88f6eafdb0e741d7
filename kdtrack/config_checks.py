"""The allowed values of the config fields, and the rules that tie fields together, in one table.

A value out of range used to be found wherever it was first read: inside a Ray worker after the
cluster had reserved its CPUs and GPUs (``loss.queue_size``), in a job's own validator, or never.
Declared here, next to the dataclasses of :mod:`kdtrack.config`, they are checked when a config is
loaded (every job that reads a preset) and again by the training driver, before Ray starts.

This module reads configs by dotted field name and imports nothing of kdtrack: :mod:`kdtrack.config`
turns its messages into a ``ConfigError`` naming the file (or the ``--set``) the value came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Rule:
    """One field's allowed values: ``ok(value)``, and how the message states them (``must be >= 0``)."""

    field: str  # "section.name"
    ok: Callable[[Any], bool]
    allowed: str  # completes "<field> ..., got <value>"

    def message(self, value: Any) -> str:
        shown = repr(value) if isinstance(value, str) else value
        return f"{self.field} {self.allowed}, got {shown}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def at_least(field: str, low: float, note: str = "") -> Rule:
    return Rule(field, lambda v: _finite(v) and v >= low, f"must be >= {low:g}" + (f" ({note})" if note else ""))


def above(field: str, low: float, note: str = "") -> Rule:
    return Rule(field, lambda v: _finite(v) and v > low, f"must be > {low:g}" + (f" ({note})" if note else ""))


def within(field: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           what: str = "must be") -> Rule:
    """``low <= value <= high`` with either end open; ``what`` reads before the interval
    (``is a probability per view, in``)."""
    def ok(v: Any) -> bool:
        return _finite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    connector = "" if what.endswith(" in") else " in"
    return Rule(field, ok, f"{what}{connector} {interval}")


def each_within(field: str, low: float, high: float, what: str) -> Rule:
    """Every item of a tuple field strictly inside ``(low, high)``."""
    return Rule(field, lambda v: all(_finite(x) and low < x < high for x in v), f"{what} in ({low:g}, {high:g})")


# Every field with a range. Checked at every load (kdtrack.config.load_config / apply_overrides): a value
# outside is wrong for every job, whichever recipe or job reads it.
RULES: tuple[Rule, ...] = (
    # train
    at_least("train.epochs", 0, "0 = unbounded: the run length is train.max_iterations"),
    at_least("train.max_iterations", 0, "0 = no iteration budget"),
    each_within("train.lr_steps", 0, 1, "must be fractions of training"),
    above("train.classifier_lr_mult", 0),
    at_least("train.report_every", 0, "0 = report after epochs"),
    # loss
    above("loss.queue_size", 0, "the contrastive negative queue's length"),
    above("loss.temperature", 0),
    at_least("loss.nn_positives", 0, "0 = off"),
    at_least("loss.projection_dim", 0, "0 = off"),
    within("loss.eta", 0, 1),
    within("loss.key_momentum", 0, 1, high_open=True),
    at_least("loss.supervised_memory", 0, "0 = off"),
    above("loss.supervised_metric_weight", 0),
    above("loss.supervised_temperature", 0),
    at_least("loss.detection_anchor_weight", 0, "0 = off"),
    # data: the sample pipeline (the Ray Data stream's and the augmentation's)
    at_least("data.map_actors", 1),
    above("data.map_num_cpus", 0),
    at_least("data.prefetch_batches", 0),
    at_least("data.scheduling_min_step_s", 0),
    within("data.max_bad_fraction", 0, 1, high_open=True, what="is a share of the items read, in"),
    at_least("data.stream_buffer_mb", 0, "0 = Ray's own budget"),
    within("data.background_swap", 0, 1, what="is a probability per view, in"),
    within("data.white_balance", 0, 1, high_open=True, what="is a share of each channel's level, in"),
    within("data.random_erasing", 0, 1, what="is a probability per view, in"),
    Rule("data.paste_scale", lambda v: len(v) == 2 and all(_finite(x) and x > 0 for x in v) and v[0] <= v[1],
         "must be [low, high] zoom factors with 0 < low <= high"),
    within("data.paste_flip", 0, 1, what="is a probability per pasted person, in"),
    within("data.paste_erase", 0, 1, what="is a probability per pasted person, in"),
    # teacher: a PK batch that batch-hard mining can use, BoT's augmentation and warm-up
    at_least("teacher.train_p", 2, "batch-hard triplets need two identities per batch"),
    at_least("teacher.train_k", 2, "batch-hard triplets need two crops per identity"),
    within("teacher.flip_prob", 0, 1, what="is a probability, in"),
    within("teacher.random_erasing", 0, 1, what="is a probability, in"),
    at_least("teacher.pad", 0),
    at_least("teacher.warmup_epochs", 0),
    within("teacher.warmup_factor", 0, 1, low_open=True),
    # eval
    at_least("eval.reid_mot_frame_stride", 1),
    at_least("eval.reid_context_pad", 0),
    # synth
    at_least("synth.shard_size", 1),
)


def field_value(cfg: Any, field: str) -> Any:
    """``cfg.section.name`` from ``"section.name"``."""
    value = cfg
    for part in field.split("."):
        value = getattr(value, part)
    return value


def range_violations(cfg: Any, rules: Iterable[Rule] = RULES, prefix: str = "") -> list[tuple[str, str]]:
    """``[(field, message)]`` of every rule ``cfg`` breaks, in table order. ``prefix`` is stripped from
    the rule's field before it is read (``tune.num_samples`` on a ``SweepConfig``)."""
    broken = []
    for rule in rules:
        value = field_value(cfg, rule.field.removeprefix(prefix))
        if not rule.ok(value):
            broken.append((rule.field, rule.message(value)))
    return broken


def identity_readout_problems(loss: Any, id_readout: str) -> list[tuple[str, str]]:
    """``[(field, message)]``: where the identity is read (``model.id_readout``) against what the loss reads
    there. The driver refuses them before Ray starts (:func:`training_violations`), the criterion when it is
    built (``kdtrack.losses.Criterion``, also outside ``jobs.train``)."""
    problems = []
    if id_readout != "cell" and loss.id_mode == "kd":
        problems.append(("model.id_readout", f"model.id_readout = {id_readout!r}: loss.id_mode = 'kd' distils the "
                         f"teacher's feature into the centre cell: set model.id_readout=cell"))
    if loss.projection_dim > 0 and (id_readout == "cell" or not loss.contrasts_people):
        problems.append(("loss.projection_dim", f"loss.projection_dim = {loss.projection_dim}: the projection head "
                         f"sits between a person's pooled vector and the contrastive loss: it needs model.id_readout "
                         f"centre | centre_halves (got {id_readout!r}) and loss.id_mode contrastive | hybrid (got "
                         f"{loss.id_mode!r})"))
    return problems


def training_violations(cfg: Any) -> list[tuple[str, str]]:
    """``[(field, message)]`` of the rules between fields that a training run needs (``jobs.train``,
    each ``jobs.tune`` trial): an evaluation may read a config these do not hold for."""
    tc = cfg.train
    broken = []
    if tc.sync_batchnorm and not tc.use_gpu:
        broken.append(("train.sync_batchnorm", "train.sync_batchnorm syncs BatchNorm statistics between GPU workers "
                       "(torch's SyncBatchNorm takes CUDA tensors only): set train.use_gpu=true, or leave it false"))
    broken.extend(identity_readout_problems(cfg.loss, cfg.model.id_readout))
    data = cfg.data
    jittered = [f for f, on in (("paste_scale", tuple(data.paste_scale) != (1.0, 1.0)),
                                ("paste_flip", data.paste_flip > 0), ("paste_erase", data.paste_erase > 0)) if on]
    if jittered and not (data.background_swap > 0 and data.background_relayout):
        broken.append((f"data.{jittered[0]}", f"data.{jittered[0]} changes each person pasted into a swapped view, "
                       f"and none is (data.background_swap = {data.background_swap}, data.background_relayout = "
                       f"{data.background_relayout}): set data.background_swap > 0 and data.background_relayout=true"))
    if cfg.loss.detection_anchor_weight > 0 and not tc.init_from:
        broken.append(("loss.detection_anchor_weight", f"loss.detection_anchor_weight = "
                       f"{cfg.loss.detection_anchor_weight} keeps the detection outputs of the network the run starts "
                       f"from, and it starts from random weights: pass --init-from (train.init_from), or set it to 0"))
    if cfg.loss.key_positives and cfg.loss.contrasts_people and cfg.loss.key_momentum <= 0:
        broken.append(("loss.key_positives", f"loss.key_positives takes a person's positives from the momentum key "
                       f"encoder, and loss.key_momentum = {cfg.loss.key_momentum} builds none: set loss.key_momentum "
                       f"in (0, 1), or loss.key_positives=false"))
    if tc.epochs == 0 and tc.max_iterations <= 0:
        broken.append(("train.epochs", f"train.epochs = 0 (unbounded) needs train.max_iterations > 0 to end the run, "
                       f"got {tc.max_iterations}"))
    return broken
