"""The training loop without Ray: optimizer, lr schedule, one step, one epoch.

``train_step`` = forward (autocast on CUDA only) -> criterion (float32) ->
non-finite check -> backward -> gradient averaging of the criterion's own
parameters across processes (DDP only syncs the model) -> unscale -> clip ->
step. A non-finite loss is handled the same way on every rank: without a
gradient scaler every rank raises ``FloatingPointError`` (naming the
iteration, the ranks whose loss was not finite and, on those, every loss
term) before any weight is touched; with an enabled scaler (AMP) the
non-finite gradients reach every rank (DDP and :func:`average_gradients`
average them) and every rank's scaler skips the step and lowers its scale.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from kdtrack.config import TrainConfig
from kdtrack.data.uint8_canvas import float_canvases
from kdtrack.losses.anchor import ANCHOR_HEADS
from kdtrack.losses.distributed import is_distributed
from kdtrack.models.teacher_targets import teacher_embeddings

MODEL_INPUT_KEY = "image"
LogFn = Callable[[int, dict[str, float]], None]


def select_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else CPU (CUDA is never required)."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def amp_enabled(amp: bool, device: torch.device) -> bool:
    """Mixed precision only on CUDA; on CPU ``train.amp`` is ignored."""
    return bool(amp) and torch.device(device).type == "cuda"


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig,
                    classifier_params: Iterable[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """Adam (KD) or SGD with momentum (IDF); only parameters that require gradients.

    ``classifier_params`` (those of ``params`` that are an identity classifier, e.g.
    ``Criterion.classifier_parameters()``) form a second group at ``train.lr x train.classifier_lr_mult``;
    the lr schedule scales both groups alike.
    """
    if not cfg.classifier_lr_mult > 0:
        raise ValueError(f"train.classifier_lr_mult must be > 0, got {cfg.classifier_lr_mult}")
    fast = {id(p) for p in classifier_params} if cfg.classifier_lr_mult != 1.0 else set()
    params = [p for p in params if p.requires_grad]
    classifier = [p for p in params if id(p) in fast]
    groups: list[dict] = [{"params": [p for p in params if id(p) not in fast]}]
    if classifier:  # at a multiplier of 1 one group, as before (its checkpoints resume)
        groups.append({"params": classifier, "lr": cfg.lr * cfg.classifier_lr_mult})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer must be adam | sgd, got {cfg.optimizer!r}")


def total_iterations(cfg: TrainConfig, iterations_per_epoch: int) -> int:
    """The run length in iterations.

    Epoch schedules (``epochs > 0``, KD): ``epochs * iterations_per_epoch``, capped by
    ``max_iterations`` when that is > 0. Iteration budgets (``epochs == 0``, IDF's 25k):
    exactly ``max_iterations``, whatever the dataset size (the loader is re-iterated as
    often as needed).
    """
    if cfg.epochs < 0 or cfg.max_iterations < 0:
        raise ValueError(f"train.epochs and train.max_iterations must be >= 0, got {cfg.epochs} and {cfg.max_iterations}")
    if cfg.epochs == 0:
        if cfg.max_iterations == 0:
            raise ValueError("train.epochs = 0 (unbounded) needs train.max_iterations > 0 to end the run")
        return cfg.max_iterations
    total = cfg.epochs * int(iterations_per_epoch)
    return min(total, cfg.max_iterations) if cfg.max_iterations > 0 else total


def lr_milestones(cfg: TrainConfig, total: int) -> list[int]:
    """Iterations where the lr drops: ``round(f * total)`` for each ``lr_steps`` fraction.

    A milestone ``m`` means iterations ``0 .. m-1`` run at the old lr and iteration ``m``
    onwards at the new one. An epoch boundary is exact when the fraction is written to full
    double precision: KD's "lr / 10 at epoch 20 of 30" is ``2/3 = 0.6666666666666666``, and
    ``round(2/3 * 30 n) == 20 n`` for every n (a rounded ``0.6666667`` is off by one
    iteration from n = 500,001 iterations per epoch on).
    """
    for f in cfg.lr_steps:
        if not 0.0 < f < 1.0:
            raise ValueError(f"train.lr_steps must be fractions in (0, 1), got {cfg.lr_steps}")
    return sorted(max(1, round(f * total)) for f in cfg.lr_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step schedule stepped once per iteration: lr x ``lr_gamma`` at each milestone (``total`` from
    :func:`total_iterations`)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(cfg, total), gamma=cfg.lr_gamma)


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


@torch.no_grad()
def attach_teacher_targets(teacher: nn.Module, batch: dict[str, torch.Tensor],
                           crop_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """KD soft targets: crop ``teacher_boxes_xyxy`` of every filled slot from ``orig_image`` (the
    un-augmented canvas), run the frozen teacher, write ``batch["teacher"] (B, K, D)`` slot by slot."""
    if "orig_image" not in batch or "teacher_boxes_xyxy" not in batch:
        raise ValueError("KD needs samples built with with_original=True (orig_image, teacher_boxes_xyxy)")
    mask = batch["mask"].bool()
    boxes_list = [batch["teacher_boxes_xyxy"][b][mask[b]] for b in range(len(mask))]
    per_image = teacher_embeddings(teacher, batch["orig_image"], boxes_list, out_size=tuple(crop_size))
    dim = per_image[0].shape[1] if per_image else 0
    out = batch["orig_image"].new_zeros((*mask.shape, dim))
    for b, emb in enumerate(per_image):
        out[b][mask[b]] = emb.to(out)
    batch["teacher"] = out
    return batch


def average_gradients(module: nn.Module) -> None:
    """All-reduce-mean the gradients of ``module`` (the criterion's uncertainty weights / classifier,
    which DDP does not see); a no-op without an initialised multi-process group."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def check_finite_everywhere(terms: Mapping[str, Any], iteration: int) -> None:
    """Raise ``FloatingPointError`` on every rank when ``terms["total"]`` is not finite on any rank.

    One all-reduce of a per-rank flag, so a rank with a good loss does not go on into DDP's gradient
    all-reduce and wait there for a rank that stopped. The message names the ranks with a bad loss and,
    on those, every term. Costs one host sync per step (only the unscaled path runs it)."""
    total = terms["total"]
    bad = ~torch.isfinite(total.detach()).all()
    if is_distributed():
        flags = torch.zeros(dist.get_world_size(), device=total.device)
        flags[dist.get_rank()] = bad.float()
        dist.all_reduce(flags)
        bad_ranks = [int(r) for r in torch.nonzero(flags).flatten().tolist()]
        where = f" on rank(s) {bad_ranks}" if bad_ranks else ""
    else:
        bad_ranks = [0] if bool(bad) else []
        where = ""
    if not bad_ranks:
        return
    if bool(bad):
        values = {k: float(v.detach().float().mean()) for k, v in terms.items() if torch.is_tensor(v)}
        raise FloatingPointError(f"iteration {iteration}: loss is {float(total.detach())}{where}, stopping "
                                 f"training on every rank; terms: {values}")
    raise FloatingPointError(f"iteration {iteration}: the loss is not finite{where}, stopping training on every "
                             f"rank (the terms are in that rank's error)")


def backward_and_step(total: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      scaler: torch.amp.GradScaler | None = None, grad_clip: float = 0.0,
                      sync: Callable[[], None] | None = None) -> None:
    """zero_grad -> (scaled) backward -> ``sync()`` (e.g. averaging gradients DDP does not see) ->
    unscale -> clip -> (scaled) step: the update shared by the student and the teacher steps.

    ``sync`` runs before ``scaler.unscale_``: the scale is the same on every rank, so averaging the scaled
    gradients first lets each rank's inf check see the same (averaged) gradients, and an inf on one rank
    skips the step on every rank instead of being spread by the average into the ranks that stepped."""
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        scaler.scale(total).backward()
    else:
        total.backward()
    if sync is not None:
        sync()
    if scaled:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# Student parts ``train.freeze`` names (module paths of ``kdtrack.models.student.Student``).
FREEZABLE_PARTS: dict[str, tuple[str, ...]] = {
    "body": ("body",),
    "identity": ("heads.embedding", "embedding_norm"),
    "detection": ("heads.heatmap", "heads.size", "heads.offset"),
}
FROZEN_ATTR = "_kdtrack_frozen_modules"


def freeze_parts(model: nn.Module, parts: Iterable[str]) -> list[str]:
    """Fix the named student parts (IDF stages 2 and 3): no gradient, and their BatchNorm statistics
    kept (the modules stay in eval mode through :func:`set_train_mode`). Returns the module paths."""
    net = getattr(model, "module", model)  # DDP wraps the student
    paths: list[str] = []
    for part in parts:
        if part not in FREEZABLE_PARTS:
            raise ValueError(f"train.freeze: unknown part '{part}' (known: {', '.join(FREEZABLE_PARTS)})")
        paths.extend(FREEZABLE_PARTS[part])
    modules = dict(net.named_modules())
    for path in paths:
        if path not in modules:
            raise ValueError(f"train.freeze: the student has no module '{path}'")
        for p in modules[path].parameters():
            p.requires_grad_(False)
    setattr(net, FROZEN_ATTR, tuple(paths))
    set_train_mode(model)
    return paths


def leave_out_unused_heads(model: nn.Module, criterion: nn.Module) -> list[str]:
    """Train only the student heads ``criterion`` reads (``Criterion.required_outputs``); returns the heads
    left out (e.g. the embedding of the detection recipe). Call it before DDP wraps the model: DDP waits
    for a gradient of every parameter that requires one, and a head no loss reads never gives one (the
    "Expected to have finished reduction" crash). Not computing such a head also saves its forward and
    backward, which ``find_unused_parameters=True`` would pay for plus a graph walk every step."""
    net = getattr(model, "module", model)
    required = getattr(criterion, "required_outputs", None)
    if required is None or not hasattr(net, "train_only"):
        return []
    return net.train_only(required)


def sync_batchnorm(model: nn.Module, world_size: int) -> nn.Module:
    """``train.sync_batchnorm``: every BatchNorm of ``model`` as a ``SyncBatchNorm`` (statistics over all
    ranks' images), before DDP wraps it; with one process there is nothing to sync and the model is returned
    as it is. Weights, frozen flags and modules kept in eval mode by :func:`freeze_parts` carry over.
    torch syncs only CUDA tensors (the config refuses the option without ``train.use_gpu``)."""
    if world_size <= 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except the parts :func:`freeze_parts` fixed, which stay in eval mode."""
    model.train()
    net = getattr(model, "module", model)
    modules = dict(net.named_modules())
    for path in getattr(net, FROZEN_ATTR, ()):
        modules[path].eval()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def detection_anchor(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` as it is now, for ``loss.detection_anchor_weight``: build it after
    ``train.init_from``'s weights are loaded and ``train.freeze`` is applied, before anything trains. It runs in
    the student's modes (:func:`set_train_mode`: BatchNorm on the batch's statistics, as the student's forward
    in training), so on the first batch it gives exactly the student's outputs and the term measures how far
    the weights moved, not the gap between batch and running statistics; its running statistics never change
    (momentum 0) and nothing in it takes a gradient."""
    anchor = copy.deepcopy(getattr(model, "module", model))
    for p in anchor.parameters():
        p.requires_grad_(False)
    for m in anchor.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    set_train_mode(anchor)
    return anchor


def forward_by_views(network: Callable[..., Any], images: torch.Tensor, views: int, **kwargs: Any) -> Any:
    """``network(images)`` with each view's canvases (collate puts all view-0 rows first) in a forward of their
    own, so that BatchNorm's batch statistics are never shared by a person's two views (MoCo's shuffle BN in one
    process); the outputs concatenated back in the batch's order. ``views`` 1: one forward."""
    if views <= 1:
        return network(images, **kwargs)
    if images.shape[0] % views:
        raise ValueError(f"{images.shape[0]} canvases do not split into {views} views")
    parts = [network(chunk, **kwargs) for chunk in images.chunk(views)]
    if torch.is_tensor(parts[0]):
        return torch.cat(parts)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    batch: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float = 0.0,
    gather_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    teacher_crop_size: tuple[int, int] = (256, 128),
    iteration: int = 0,
    key_encoder: nn.Module | None = None,
    host_terms: bool = True,
    anchor: nn.Module | None = None,
    batchnorm_views: int = 1,
) -> dict[str, Any]:
    """One optimisation step on ``batch`` (a ``kdtrack.data.dataset.collate`` dict, its canvases float32 or, from a
    feed, uint8 made float32 on ``device`` by ``kdtrack.data.uint8_canvas.float_canvases``); returns the loss terms.
    A non-finite loss: see the module docstring (raised on every rank, or under AMP skipped on every rank).

    ``host_terms=False`` (the steps between logging steps, :func:`train_one_epoch`): the terms stay detached
    device tensors and the collapse monitor is not computed, so the step reads nothing back to the host
    for them (each ``float()`` of a CUDA tensor waits for the GPU to drain).

    ``gather_fn`` (e.g. ``all_gather_cat``) replaces the contrastive loss's queue gather;
    ``teacher`` computes KD soft targets on the fly (see ``attach_teacher_targets``);
    ``key_encoder`` (a ``kdtrack.models.momentum.MomentumEncoder``) fills the contrastive
    queue and takes one EMA step after the optimizer's. A contrastive criterion with
    ``loss.key_momentum > 0`` refuses to run without one (a stale queue collapses).
    ``anchor`` (:func:`detection_anchor`) gives the detection outputs ``loss.detection_anchor_weight`` keeps.
    """
    device = torch.device(device)
    set_train_mode(model)
    criterion.train()
    if gather_fn is not None and getattr(criterion, "contrastive", None) is not None:
        criterion.contrastive.gather_fn = gather_fn
    batch = float_canvases(move_batch(batch, device))  # a feed's uint8 canvases become float32 here, once
    if teacher is not None:
        batch = attach_teacher_targets(teacher, batch, teacher_crop_size)
    use_amp = amp_enabled(amp, device)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        outputs = forward_by_views(model, batch[MODEL_INPUT_KEY], batchnorm_views)
    outputs = {k: v.float() for k, v in outputs.items()}
    extra: dict[str, Any] = {}
    if getattr(criterion, "contrastive", None) is not None:
        if key_encoder is None and criterion.cfg.key_momentum > 0:
            raise ValueError("loss.key_momentum > 0: pass key_encoder=MomentumEncoder(model, m) to train_step "
                             "(or set loss.key_momentum=0 to fill the queue with the student's own embeddings)")
        if key_encoder is not None:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                extra["key_embedding"] = forward_by_views(key_encoder, batch[MODEL_INPUT_KEY], batchnorm_views).float()
    if anchor is not None:
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            extra["anchor"] = {k: v.float() for k, v in forward_by_views(
                anchor, batch[MODEL_INPUT_KEY], batchnorm_views, heads=ANCHOR_HEADS).items()}
    if not host_terms:
        extra["monitor"] = False
    terms = criterion(outputs, batch, **extra)
    total = terms["total"]
    if scaler is None or not scaler.is_enabled():  # with a scaler the step is skipped on every rank instead
        check_finite_everywhere(terms, iteration)
    backward_and_step(total, optimizer, scaler=scaler, grad_clip=grad_clip, sync=lambda: average_gradients(criterion))
    if key_encoder is not None:
        key_encoder.update(model)
    if host_terms:
        out: dict[str, Any] = {k: float(v.detach().float().mean()) for k, v in terms.items() if torch.is_tensor(v)}
    else:
        out = {k: v.detach().float().mean() for k, v in terms.items() if torch.is_tensor(v)}
    out["lr"] = float(optimizer.param_groups[0]["lr"])  # a Python float already: no sync
    return out


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    epoch: int,
    *,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float = 0.0,
    teacher: nn.Module | None = None,
    teacher_crop_size: tuple[int, int] = (256, 128),
    start_iteration: int = 0,
    max_iterations: int = 0,
    log_every: int = 10,
    log_fn: LogFn | None = None,
    key_encoder: nn.Module | None = None,
    anchor: nn.Module | None = None,
    batchnorm_views: int = 1,
) -> tuple[int, dict[str, float]]:
    """Run until the loader is exhausted or the global iteration reaches ``max_iterations`` (> 0).

    ``log_fn(iteration, terms)`` is called at the first iteration, every ``log_every`` and
    at the last one. Returns ``(global iteration, last terms)``.
    """
    def step(batch: Mapping[str, Any], iteration: int) -> dict[str, Any]:
        logged = log_fn is not None and is_log_step(iteration, start_iteration=start_iteration,
                                                    log_every=log_every, max_iterations=max_iterations)
        return train_step(model, criterion, batch, optimizer, device=device, scaler=scaler, amp=amp,
                          grad_clip=grad_clip, teacher=teacher, teacher_crop_size=teacher_crop_size,
                          iteration=iteration, key_encoder=key_encoder, host_terms=logged, anchor=anchor,
                          batchnorm_views=batchnorm_views)

    return run_epoch(step, data_loader, epoch, scheduler=scheduler, start_iteration=start_iteration,
                     max_iterations=max_iterations, log_every=log_every, log_fn=log_fn)


def train_in_process(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Any,
    iterations: int,
    *,
    batch_size: int,
    seed: int,
    scheduler: Any | None = None,
    key_encoder: nn.Module | None = None,
    log_every: int = 10,
    log_fn: LogFn | None = None,
    epoch_batches: Callable[[int], Sequence[Sequence[int]]] | None = None,
    anchor: nn.Module | None = None,
    batchnorm_views: int = 1,
) -> int:
    """Single-process training on CPU without a DataLoader, for benches and tests: each epoch
    ``dataset.set_epoch(e)``, then :func:`kdtrack.data.order.epoch_order` cut to whole batches (or the item
    indices ``epoch_batches(e)`` gives), collated, through :func:`train_one_epoch` until ``iterations``.
    Returns the iteration reached."""
    from kdtrack.data.dataset import collate
    from kdtrack.data.order import epoch_order

    it, epoch = 0, 0
    while it < iterations:
        dataset.set_epoch(epoch)
        if epoch_batches is not None:
            batches = list(epoch_batches(epoch))
        else:
            order = epoch_order(len(dataset), seed, epoch)
            batches = [order[s:s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]
        if not batches:
            raise ValueError(f"{len(dataset)} samples do not fill one batch of {batch_size}")
        loader = (collate([dataset[int(i)] for i in batch], uint8=True) for batch in batches)
        it, _ = train_one_epoch(model, criterion, optimizer, loader, "cpu", epoch, scheduler=scheduler,
                                start_iteration=it, max_iterations=iterations, log_every=log_every,
                                log_fn=log_fn, key_encoder=key_encoder, anchor=anchor,
                                batchnorm_views=batchnorm_views)
        epoch += 1
    return it


def batch_images(batch: Any) -> int:
    """Images in a batch: a collate dict's ``image`` rows (both views count), else the first tensor's rows."""
    if isinstance(batch, Mapping) and MODEL_INPUT_KEY in batch:
        return int(len(batch[MODEL_INPUT_KEY]))
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return int(len(first)) if hasattr(first, "__len__") else 0


def is_log_step(iteration: int, *, start_iteration: int, log_every: int, max_iterations: int) -> bool:
    """Whether the step at (0-based) ``iteration`` is reported: the first of the stretch, every ``log_every``-th
    and the last of the budget (:func:`run_epoch`'s rule; :func:`train_one_epoch` reads the terms back to the
    host on these steps only)."""
    done = iteration + 1
    return done == start_iteration + 1 or done % max(log_every, 1) == 0 or (0 < max_iterations <= done)


def run_epoch(
    step: Callable[[Mapping[str, Any], int], dict[str, float]],
    data_loader: Iterable[Mapping[str, Any]],
    epoch: int,
    *,
    scheduler: Any | None = None,
    start_iteration: int = 0,
    max_iterations: int = 0,
    log_every: int = 10,
    log_fn: LogFn | None = None,
) -> tuple[int, dict[str, float]]:
    """The epoch loop shared by the student and the teacher: ``step(batch, iteration)`` per batch,
    the scheduler stepped every iteration, ``log_fn`` at the first, every ``log_every``-th and the
    last iteration; stops at ``max_iterations`` (> 0) without fetching one more batch.

    Each report also carries, since the previous one, ``perf/images_per_s`` (this worker's images,
    both views counted), ``perf/data_wait`` (the share of wall time spent waiting for the next batch:
    near 1 means the input pipeline, not the network, sets the pace) and ``perf/seconds_per_iteration``.
    """
    iteration = start_iteration
    terms: dict[str, float] = {}
    window_start = time.perf_counter()
    waited, images, steps = 0.0, 0, 0
    batches = iter(data_loader)
    while not (max_iterations > 0 and iteration >= max_iterations):  # never fetch (decode) a batch past the budget
        fetch_start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            break
        waited += time.perf_counter() - fetch_start
        terms = step(batch, iteration)
        iteration += 1
        images += batch_images(batch)
        steps += 1
        if scheduler is not None:
            scheduler.step()
        if log_fn is not None and is_log_step(iteration - 1, start_iteration=start_iteration, log_every=log_every,
                                              max_iterations=max_iterations):
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            perf = {"perf/images_per_s": images / elapsed, "perf/data_wait": min(1.0, waited / elapsed),
                    "perf/seconds_per_iteration": elapsed / steps}
            log_fn(iteration, {**terms, **perf, "epoch": float(epoch)})
            window_start, waited, images, steps = time.perf_counter(), 0.0, 0, 0
    return iteration, {k: float(v) for k, v in terms.items()}  # the epoch's one read-back when it ends unlogged


# --------------------------------------------------------------------------- the Re-ID teacher (train.recipe=teacher)


def build_warmup_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int, *,
                           warmup_iterations: int, warmup_factor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """BoT's WarmupMultiStepLR, stepped once per iteration: lr x ``lr_gamma`` at each milestone of
    :func:`lr_milestones`, times a linear warm-up from ``warmup_factor`` (iteration 0) to 1 (iteration
    ``warmup_iterations``). BoT steps it per epoch; per iteration the ramp is smooth, same end points."""
    milestones = lr_milestones(cfg, total)
    warmup_iterations = max(int(warmup_iterations), 0)
    if not 0.0 < warmup_factor <= 1.0:
        raise ValueError(f"warm-up factor must be in (0, 1], got {warmup_factor}")

    def factor(it: int) -> float:
        scale = cfg.lr_gamma ** sum(it >= m for m in milestones)
        if it < warmup_iterations:
            scale *= warmup_factor + (1.0 - warmup_factor) * it / warmup_iterations
        return scale

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def teacher_train_step(
    teacher: nn.Module,
    batch: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    *,
    label_smoothing: float,
    triplet_margin: float,
    device: torch.device | str,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float = 0.0,
    iteration: int = 0,
) -> dict[str, float]:
    """One BoT step of the Re-ID teacher on a PK batch (``kdtrack.data.reid_data``: ``image`` (B, 3, H, W)
    float [0, 1], ``label`` (B,) contiguous class ids); returns the terms as floats.

    total = label-smoothed ID cross-entropy on the BNNeck classifier logits + batch-hard triplet on
    the pooled features before the BNNeck (``kdtrack.models.reid_losses.reid_loss``); ``accuracy`` =
    the batch's top-1 ID accuracy. A non-finite loss is handled as :func:`train_step` does.
    """
    from kdtrack.models.reid_losses import reid_loss

    device = torch.device(device)
    teacher.train()
    images = batch["image"].to(device, non_blocking=True).float()
    labels = batch["label"].to(device, non_blocking=True).long()
    use_amp = amp_enabled(amp, device)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        outputs = teacher(images)
    outputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in outputs.items()}
    terms = reid_loss(outputs, labels, label_smoothing, triplet_margin)
    total = terms["loss"]
    if scaler is None or not scaler.is_enabled():
        check_finite_everywhere({"total": total, **terms}, iteration)
    backward_and_step(total, optimizer, scaler=scaler, grad_clip=grad_clip)
    accuracy = (outputs["logits"].detach().argmax(dim=1) == labels).float().mean()
    return {"total": float(total.detach()), "id": float(terms["id"]), "triplet": float(terms["triplet"]),
            "accuracy": float(accuracy), "lr": float(optimizer.param_groups[0]["lr"])}


def teacher_train_one_epoch(
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    epoch: int,
    *,
    label_smoothing: float,
    triplet_margin: float,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    grad_clip: float = 0.0,
    start_iteration: int = 0,
    max_iterations: int = 0,
    log_every: int = 10,
    log_fn: LogFn | None = None,
) -> tuple[int, dict[str, float]]:
    """:func:`train_one_epoch` for the teacher: :func:`teacher_train_step` over ``data_loader`` (PK
    batches) until it is exhausted or the global iteration reaches ``max_iterations`` (> 0); the
    scheduler steps every iteration; ``log_fn`` as there. Returns ``(global iteration, last terms)``."""
    def step(batch: Mapping[str, Any], iteration: int) -> dict[str, float]:
        return teacher_train_step(teacher, batch, optimizer, label_smoothing=label_smoothing,
                                  triplet_margin=triplet_margin, device=device, scaler=scaler, amp=amp,
                                  grad_clip=grad_clip, iteration=iteration)

    return run_epoch(step, data_loader, epoch, scheduler=scheduler, start_iteration=start_iteration,
                     max_iterations=max_iterations, log_every=log_every, log_fn=log_fn)
