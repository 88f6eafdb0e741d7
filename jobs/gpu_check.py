"""GPU readiness check, for the first machine with a GPU: one screen that says whether training is ready.

    python -m jobs.gpu_check                  # on a machine without a GPU: one "no GPU" line, exit 0
    python -m jobs.gpu_check --device cpu     # every check on the CPU at small sizes (what the tests run)

1. every recipe of ``jobs.train.RECIPES`` a few iterations on synthetic batches through the real train
   step (``kdtrack.engine``) on CUDA under AMP (a ``GradScaler``): losses finite, seconds per
   iteration, peak memory, the final loss scale; with 2 or more GPUs also two NCCL processes under DDP;
2. the deformable conv: torchvision's ``deform_conv2d`` (the GPU path) against the ``grid_sample``
   path (``kdtrack.models.layers``, the CPU path) in float32 and under autocast, and the tiny student's
   outputs on the GPU under AMP against the same weights on the CPU in float32 (an evaluation pool
   mixing both kinds of actor scores a sequence by whichever ran it, and reports it: ``numeric_paths``);
3. the DLA-34 student's network FPS (forward only, batch 1) at 1088 x 608, float32 and AMP.

Exit 1 when a check fails (a non-finite loss, an error, the deformable paths apart beyond tolerance).
Nothing here needs Ray, data or weights.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import torch

DEFORM_TOLERANCE = {"fp32": 1e-3, "amp": 5e-2}  # max |difference| / max |reference|
NO_GPU = "no GPU: torch.cuda.is_available() is False"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default; without a GPU: say so and exit 0) or cpu (the same checks, small sizes)")
    p.add_argument("--iterations", type=int, default=3, help="train steps per recipe")
    p.add_argument("--fps-size", default="1088x608", help="WxH of the FPS measurement")
    p.add_argument("--fps-iterations", type=int, default=20, help="timed forwards (after 5 warm-up ones)")
    p.add_argument("--skip", action="append", default=[], choices=("recipes", "deform", "fps", "nccl"),
                   help="leave a section out")
    return p


# --------------------------------------------------------------------------- recipes


RECIPE_OVERRIDES: dict[str, list[str]] = {
    "detection": ["train.recipe=detection", "loss.id_mode=none"],
    "contrastive": ["train.recipe=contrastive", "loss.id_mode=contrastive"],
    "video": ["train.recipe=video", "loss.id_mode=contrastive", "train.freeze=[detection]", "loss.heatmap_weight=0",
              "loss.size_weight=0", "loss.offset_weight=0", "loss.id_weight=1"],
    "kd": ["train.recipe=kd", "loss.id_mode=kd", "model.embedding_dim=128", "model.normalize_embedding=false",
           "loss.kd_reduction=sum_per_object"],
    "supervised": ["train.recipe=supervised", "loss.id_mode=supervised", "loss.num_id_classes=8"],
    "video_classify": ["train.recipe=video_classify", "loss.id_mode=supervised", "loss.num_id_classes=8",
                       "loss.supervised_memory=64", "train.freeze=[detection]", "loss.heatmap_weight=0",
                       "loss.size_weight=0", "loss.offset_weight=0", "loss.uncertainty=false"],
    "hybrid": ["train.recipe=hybrid", "loss.id_mode=hybrid", "model.embedding_dim=128", "model.normalize_embedding=false",
               "model.id_readout=centre_halves"],
    "teacher": ["train.recipe=teacher", "teacher.train_p=4", "teacher.train_k=2"],
}
STUDENT_SIZE = ["model.input_width=320", "model.input_height=192", "model.deformable=true", "loss.queue_size=256",
                "train.lr=1e-4"]


def recipe_config(recipe: str, *extra: str) -> Any:
    from kdtrack.config import load_config

    if recipe not in RECIPE_OVERRIDES:
        raise KeyError(f"jobs.gpu_check has no synthetic batch for train.recipe '{recipe}': add it to RECIPE_OVERRIDES")
    return load_config("tiny", [*STUDENT_SIZE, *RECIPE_OVERRIDES[recipe], *extra])


def synthetic_batch(cfg: Any, images: int, views: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``images`` noise canvases with 3 people each (class ids 0..3*images-1, unique person keys), the
    batch repeated ``views`` times (the contrastive recipes' two views, all view-0 images first), with the
    un-augmented canvas and slot-aligned boxes the online KD teacher crops."""
    from kdtrack.data.targets import encode_targets

    rng = np.random.default_rng(seed)
    h, w = cfg.model.input_height, cfg.model.input_width
    canvases, targets, slot_boxes = [], [], []
    for i in range(images):
        x1 = rng.uniform(0, w * 0.6, 3)
        y1 = rng.uniform(0, h * 0.4, 3)
        boxes = np.stack([x1, y1, x1 + rng.uniform(16, w * 0.35, 3), y1 + rng.uniform(32, h * 0.55, 3)], 1)
        boxes = np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)
        enc = encode_targets(boxes, np.arange(3) + 3 * i, None, (h, w), max_objects=8,
                             size_channels=cfg.model.size_channels)
        padded = np.zeros((8, 4), np.float32)
        padded[:3] = boxes
        canvases.append(torch.from_numpy(rng.random((3, h, w), dtype=np.float32)))
        targets.append(enc)
        slot_boxes.append(torch.from_numpy(padded))
    batch = {k: torch.stack([t[k] for t in targets] * views) for k in targets[0]}
    batch["image"] = torch.stack(canvases * views)
    batch["orig_image"] = batch["image"].clone()
    batch["teacher_boxes_xyxy"] = torch.stack(slot_boxes * views)
    return batch


def run_recipe(recipe: str, device: torch.device, *, iterations: int, amp: bool,
               wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
               overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``iterations`` train steps of ``recipe`` on one synthetic batch; the losses, seconds per
    iteration (after the first), the final loss scale and the peak CUDA memory. ``overrides``: config
    fields on top of the check's (the tests shrink the student)."""
    from kdtrack.engine import (build_optimizer, detection_anchor, freeze_parts, leave_out_unused_heads,
                                teacher_train_step, train_step, trainable_parameters)
    from kdtrack.losses import Criterion
    from kdtrack.models import build_student, build_teacher, freeze_teacher
    from kdtrack.models.momentum import MomentumEncoder
    from kdtrack.recipes import get_recipe

    torch.manual_seed(0)
    cfg = recipe_config(recipe, *overrides)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16, enabled=amp)
    wrap = wrap or (lambda m: m)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    spec = get_recipe(recipe)
    if not spec.student:
        p, k = cfg.teacher.train_p, cfg.teacher.train_k
        model = wrap(build_teacher(cfg.teacher, num_classes=p).to(device))
        optimizer = build_optimizer(model.parameters(), cfg.train)
        batch = {"image": torch.rand(p * k, 3, cfg.teacher.crop_height, cfg.teacher.crop_width),
                 "label": torch.arange(p).repeat_interleave(k)}

        def step(i: int) -> dict[str, float]:
            return teacher_train_step(model, batch, optimizer, label_smoothing=0.1, triplet_margin=0.3,
                                      device=device, scaler=scaler, amp=amp, iteration=i)
    else:
        student = build_student(cfg.model)
        freeze_parts(student, cfg.train.freeze)
        anchor = detection_anchor(student).to(device) if cfg.loss.detection_anchor_weight > 0 else None
        criterion = Criterion.from_config(cfg).to(device)
        leave_out_unused_heads(student, criterion)
        model = wrap(student.to(device))
        optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), cfg.train)
        contrastive = spec.key_encoder
        keys = MomentumEncoder(model, cfg.loss.key_momentum).to(device) if contrastive else None
        teacher = None
        if spec.distils:
            teacher = freeze_teacher(build_teacher(cfg.teacher)).to(device)
        batch = synthetic_batch(cfg, images=2, views=2 if contrastive else 1)

        def step(i: int) -> dict[str, float]:
            return train_step(model, criterion, batch, optimizer, device=device, scaler=scaler, amp=amp,
                              teacher=teacher, teacher_crop_size=(cfg.teacher.crop_height, cfg.teacher.crop_width),
                              iteration=i, key_encoder=keys, anchor=anchor)
    for i in range(iterations):
        start = time.perf_counter()
        terms = step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(float(terms["total"]))
    return {"losses": losses, "finite": bool(np.isfinite(losses).all()),
            "seconds_per_iteration": float(np.mean(times[1:] if len(times) > 1 else times)),
            "scale": float(scaler.get_scale()) if scaler.is_enabled() else 1.0,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else 0.0}


def recipe_lines(device: torch.device, iterations: int, amp: bool) -> tuple[list[str], bool]:
    from jobs.train import RECIPES

    lines, ok = [f"recipes ({iterations} steps each, {'AMP' if amp else 'float32'}, {device.type}):"], True
    for recipe in RECIPES:
        try:
            r = run_recipe(recipe, device, iterations=iterations, amp=amp)
        except Exception as exc:  # reported, the other checks still run
            ok = False
            lines.append(f"  {recipe:<12} FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        ok &= r["finite"]
        lines.append(f"  {recipe:<12} {'ok ' if r['finite'] else 'NON-FINITE'} loss {r['losses'][0]:.4g} -> "
                     f"{r['losses'][-1]:.4g}  {r['seconds_per_iteration'] * 1000:7.1f} ms/it  scale "
                     f"{r['scale']:g}  peak {r['peak_mib']:.0f} MiB")
    return lines, ok


# --------------------------------------------------------------------------- NCCL, two GPUs


def _nccl_worker(rank: int, world: int, port: int, iterations: int, out: Any) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank)
        result = {}
        for recipe in ("detection", "contrastive"):
            r = run_recipe(recipe, device, iterations=iterations, amp=True,
                           wrap=lambda m: DistributedDataParallel(m, device_ids=[rank]))
            result[recipe] = r["finite"]
        out[rank] = result
    finally:
        dist.destroy_process_group()


def nccl_lines(iterations: int) -> tuple[list[str], bool]:
    """Two processes (GPUs 0 and 1) under DDP over NCCL: the detection and contrastive recipes."""
    count = torch.cuda.device_count()
    if count < 2:
        return [f"NCCL, 2 workers: skipped ({count} GPU)"], True
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    try:
        mp.spawn(_nccl_worker, args=(2, port, iterations, out), nprocs=2, join=True)
    except Exception as exc:
        return [f"NCCL, 2 workers: FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"], False
    ok = all(all(r.values()) for r in out.values()) and len(out) == 2
    return [f"NCCL, 2 workers (DDP, AMP): {'ok' if ok else 'NON-FINITE'} {dict(out)}"], ok


# --------------------------------------------------------------------------- deformable conv


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-12))


def deform_comparison(device: torch.device, *, size: tuple[int, int] = (76, 136), channels: int = 64,
                      batch: int = 2, seed: int = 0) -> dict[str, float]:
    """torchvision ``deform_conv2d`` (the reference, float32) against the ``grid_sample`` path, each in
    float32 and under autocast (float16 on CUDA, bfloat16 on CPU): max |difference| / max |reference|.
    The default size is a DLA-34 stride-8 map at 1088 x 608."""
    from torchvision.ops import deform_conv2d

    from kdtrack.models.layers import deform_conv2d_sampled

    g = torch.Generator().manual_seed(seed)
    h, w = size
    x = torch.randn(batch, channels, h, w, generator=g).to(device)
    offset = (2.0 * torch.randn(batch, 18, h, w, generator=g)).to(device)  # taps up to a few pixels off the grid
    mask = torch.rand(batch, 9, h, w, generator=g).to(device)
    weight = (torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels ** 0.5)).to(device)
    bias = torch.randn(channels, generator=g).to(device)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    out = {"fp32/grid_sample": _relative(deform_conv2d_sampled(x, offset, mask, weight, bias), ref)}
    with torch.autocast(device.type, dtype=dtype):
        out["amp/torchvision"] = _relative(deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask), ref)
        out["amp/grid_sample"] = _relative(deform_conv2d_sampled(x, offset, mask, weight, bias), ref)
    return out


def student_cpu_vs_device(device: torch.device, amp: bool) -> dict[str, float]:
    """The tiny student with deformable convs, same weights and image: on ``device`` (torchvision deformable
    conv, autocast when ``amp``) against the CPU in float32 (the ``grid_sample`` path). Max |difference| of
    the heatmap probabilities and the smallest cosine between the two embedding maps' vectors."""
    from kdtrack.models import build_student

    cfg = recipe_config("contrastive")
    torch.manual_seed(0)
    model = build_student(cfg.model).eval()
    image = torch.rand(1, 3, cfg.model.input_height, cfg.model.input_width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model(image)
        model.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            dev = {k: v.float().cpu() for k, v in model(image.to(device)).items()}
    cos = torch.nn.functional.cosine_similarity(cpu["embedding"], dev["embedding"], dim=1)
    return {"heatmap_max_abs": float((cpu["heatmap"].sigmoid() - dev["heatmap"].sigmoid()).abs().max()),
            "embedding_min_cos": float(cos.min())}


def deform_lines(device: torch.device, amp: bool) -> tuple[list[str], bool]:
    d = deform_comparison(device, **({} if device.type == "cuda" else {"size": (24, 40), "channels": 32}))
    ok = d["fp32/grid_sample"] <= DEFORM_TOLERANCE["fp32"] and max(d["amp/torchvision"], d["amp/grid_sample"]) <= \
        DEFORM_TOLERANCE["amp"]
    s = student_cpu_vs_device(device, amp)
    return [f"deformable conv vs torchvision fp32 (max |diff| / max |ref|): grid_sample fp32 "
            f"{d['fp32/grid_sample']:.1e}; autocast: torchvision {d['amp/torchvision']:.1e}, grid_sample "
            f"{d['amp/grid_sample']:.1e}  {'ok' if ok else 'APART'}",
            f"tiny student {device.type}{' AMP' if amp and device.type == 'cuda' else ' fp32'} vs CPU fp32: heatmap "
            f"max |diff| {s['heatmap_max_abs']:.1e}, embedding min cosine {s['embedding_min_cos']:.5f}"], ok


# --------------------------------------------------------------------------- FPS


def network_fps(device: torch.device, *, width: int, height: int, amp: bool, iterations: int,
                warmup: int = 5) -> float:
    """Forwards per second of the DLA-34 student (``kd_paper``'s network: deformable IDA-up, 2048-d
    embedding head) on one ``width`` x ``height`` image, network only (no decode, no data)."""
    from kdtrack.config import load_config
    from kdtrack.models import build_student

    cfg = load_config("kd_paper", [f"model.input_width={width}", f"model.input_height={height}"])
    model = build_student(cfg.model).to(device).eval()
    image = torch.rand(1, 3, height, width, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        for _ in range(warmup):
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return iterations / (time.perf_counter() - start)


def fps_lines(device: torch.device, size: str, iterations: int) -> tuple[list[str], bool]:
    width, height = (int(v) for v in size.lower().split("x"))
    fp32 = network_fps(device, width=width, height=height, amp=False, iterations=iterations)
    line = f"DLA-34 student network FPS at {width}x{height}, batch 1: float32 {fp32:.1f}"
    if device.type == "cuda":
        line += f", AMP {network_fps(device, width=width, height=height, amp=True, iterations=iterations):.1f}"
    return [line + " (KDMOT reports 21.4 FPS end to end)"], True


# --------------------------------------------------------------------------- main


def environment_line(device: torch.device) -> str:
    line = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
    import torchvision

    line += f", torchvision {torchvision.__version__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        line += (f"; {torch.cuda.device_count()} GPU(s), {props.name}, {props.total_memory / 2 ** 30:.0f} GiB, "
                 f"capability {props.major}.{props.minor}")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{NO_GPU} (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): nothing to check "
              f"here; run it on a GPU machine (or --device cpu for the same checks on the CPU)", flush=True)
        return 0
    device = torch.device(args.device)
    amp = device.type == "cuda"
    if device.type == "cpu" and args.fps_size == "1088x608":
        args.fps_size = "320x192"  # the full size takes minutes per forward on a small CPU
    print(environment_line(device), flush=True)
    sections: list[tuple[str, Callable[[], tuple[list[str], bool]]]] = [
        ("recipes", lambda: recipe_lines(device, args.iterations, amp)),
        ("nccl", lambda: nccl_lines(args.iterations) if device.type == "cuda" else (["NCCL: skipped (CPU)"], True)),
        ("deform", lambda: deform_lines(device, amp)),
        ("fps", lambda: fps_lines(device, args.fps_size, args.fps_iterations)),
    ]
    ok = True
    for name, section in sections:
        if name in args.skip:
            continue
        start = time.perf_counter()
        try:
            lines, passed = section()
        except Exception as exc:
            lines, passed = [f"{name}: FAILED {type(exc).__name__}: {exc}"], False
            traceback.print_exc()
        ok &= passed
        print("\n".join(lines) + f"  [{time.perf_counter() - start:.0f} s]", flush=True)
    print("GPU check: " + ("ready" if ok else "NOT ready (see the lines above)"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
