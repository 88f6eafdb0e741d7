"""Benchmark the student and teacher presets: parameters, train-step throughput, peak memory.

For each preset: parameter count, forward+backward images/s at the preset's
own input size and at a common size (320x192 for students, 256x128 for
teachers), and peak memory. Every measurement runs in a fresh subprocess so
that memory is that preset's alone: on GPU ``torch.cuda.max_memory_allocated``
(tensor memory), on CPU the process's peak resident set size
(``ru_maxrss``) minus the RSS right before the model is built (so the torch
runtime itself is not counted).

    .venv/bin/python bench/models.py               # full table (minutes on a 2-core CPU)
    .venv/bin/python bench/models.py --smoke-test  # every preset at a tiny size, seconds each
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMMON_STUDENT_SIZE = (192, 320)  # (H, W)
COMMON_TEACHER_SIZE = (256, 128)
THREADS = 2

# name -> (kind, config overrides, preset input (H, W), batch at the preset size, batch at the common size)
PRESETS: dict[str, tuple[str, dict, tuple[int, int], int, int]] = {
    "tiny": ("student", dict(backbone="tiny", deformable=False, head_conv=64, embedding_dim=128), (192, 320), 8, 8),
    "tiny_dcn": ("student", dict(backbone="tiny", deformable=True, head_conv=64, embedding_dim=128), (192, 320), 8, 8),
    "resnet18_unet": ("student", dict(backbone="resnet18_unet", embedding_dim=256), (608, 1088), 1, 8),
    "resnet50_unet": ("student", dict(backbone="resnet50_unet", embedding_dim=256), (608, 1088), 1, 8),
    "dla34_plain": ("student", dict(backbone="dla34", deformable=False, embedding_dim=2048), (608, 1088), 1, 8),
    "dla34_dcn": ("student", dict(backbone="dla34", deformable=True, embedding_dim=2048), (608, 1088), 1, 8),
    "teacher_tiny": ("teacher", dict(backbone="tiny", width=32, crop_height=128, crop_width=64), (128, 64), 32, 32),
    "teacher_r50_ibn": ("teacher", dict(backbone="resnet50_ibn"), (256, 128), 16, 16),
}
SMOKE_SIZE = (64, 64)
SMOKE_BATCH = 2


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(name: str, size: tuple[int, int], batch: int, iterations: int, device: str) -> dict:
    """One preset at one input size, in this process; returns a result row."""
    import torch

    from kdtrack.config import ModelConfig, TeacherConfig
    from kdtrack.models import build_student, build_teacher
    from kdtrack.models.reid_losses import reid_loss

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    kind, overrides, _, _, _ = PRESETS[name]
    base_rss = _rss_mb()
    if kind == "student":
        model = build_student(ModelConfig(**overrides))
    else:
        model = build_teacher(TeacherConfig(**overrides), num_classes=100)
    model = model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, *size, device=device)
    labels = torch.arange(batch, device=device) // 2

    def step() -> None:
        if kind == "student":
            loss = sum(v.float().square().mean() for v in model(images).values())
        else:
            loss = reid_loss(model(images), labels, smoothing=0.1, margin=0.3)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up: allocator, cuDNN autotune, lazy init
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync()
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak_mb, memory = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak_mb, memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss, "cpu_peak_rss_delta"
    return {"preset": name, "kind": kind, "params_m": params / 1e6, "input": f"{size[1]}x{size[0]}",
            "batch": batch, "images_per_s": batch * iterations / seconds, "step_s": seconds / iterations,
            "peak_mb": peak_mb, "memory": memory, "device": device}


def _run_isolated(spec: dict) -> dict:
    """Run ``measure`` in a fresh interpreter so peak memory belongs to this preset only."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="every preset at 64x64, batch 2, one step")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of {', '.join(PRESETS)}")
    parser.add_argument("--iterations", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file (atomically)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["name"], tuple(spec["size"]), spec["batch"], spec["iterations"],
                                 spec["device"])))
        return 0

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = args.only or list(PRESETS)
    unknown = sorted(set(names) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown} (known: {', '.join(PRESETS)})")
    specs = []
    for name in names:
        kind, _, preset_size, preset_batch, common_batch = PRESETS[name]
        if args.smoke_test:
            specs.append(dict(name=name, size=SMOKE_SIZE, batch=SMOKE_BATCH, iterations=1, device=device))
            continue
        common = COMMON_STUDENT_SIZE if kind == "student" else COMMON_TEACHER_SIZE
        specs.append(dict(name=name, size=preset_size, batch=preset_batch, iterations=args.iterations, device=device))
        if tuple(common) != tuple(preset_size):
            specs.append(dict(name=name, size=common, batch=common_batch, iterations=args.iterations, device=device))

    header = f"{'preset':<16} {'params(M)':>9} {'input (WxH)':>11} {'batch':>5} {'img/s':>8} {'s/step':>7} {'peak MiB':>9}  memory"
    print(f"device={device} threads={THREADS} (forward+backward+SGD step; peak memory per preset)")
    print(header)
    rows = []
    for spec in specs:
        row = _run_isolated(spec)
        rows.append(row)
        print(f"{row['preset']:<16} {row['params_m']:>9.2f} {row['input']:>11} {row['batch']:>5} "
              f"{row['images_per_s']:>8.2f} {row['step_s']:>7.2f} {row['peak_mb']:>9.0f}  {row['memory']}", flush=True)
    if args.json:
        from kdtrack.io import atomic_write_json

        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
