"""Generate the synthetic crowd world (CrowdHuman, COCO, Kinetics, MOT17, person search, Market-1501 layouts).

    python -m jobs.generate_synth --preset tiny --out DIR --seed 0 [--workers N] [--set synth.field=value]

``--workers 1`` runs the work units in this process; ``--workers > 1`` (and the
``large`` preset) runs them as Ray tasks, connecting to an existing cluster
when ``RAY_ADDRESS`` is set. Every unit is a pure function, so the files are
the same either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from jobs._ray import ensure_ray, map_tasks
from kdtrack.config import PRESET_DIR, load_config
from kdtrack.synth.world import generate_world

RAY_PRESETS = ("large",)  # presets that always run over Ray


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny",
                        help="tiny | small | large (reads kdtrack/configs/synth_<name>.yaml) or a YAML path")
    parser.add_argument("--out", required=True, help="output root folder")
    parser.add_argument("--seed", type=int, default=None, help="overrides synth.seed")
    parser.add_argument("--workers", type=int, default=None, help="overrides synth.workers (>1: Ray tasks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="synth.FIELD=VALUE")
    return parser


def resolve_preset(name: str) -> str | Path:
    """``tiny`` -> ``synth_tiny.yaml`` when that synth-only preset exists, else the named preset / path."""
    candidate = PRESET_DIR / f"synth_{name}.yaml"
    return candidate if candidate.exists() else name


def ray_map_fn(num_cpus_per_task: float = 1.0) -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]:
    """An order-preserving ``map`` over Ray tasks (connects to ``RAY_ADDRESS`` if set, else starts locally)."""
    ensure_ray()

    def map_fn(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return map_tasks(fn, [(item,) for item in items], num_cpus=num_cpus_per_task)

    return map_fn


def main(args: argparse.Namespace) -> dict:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"synth.seed={args.seed}")
    if args.workers is not None:
        overrides.append(f"synth.workers={args.workers}")
    cfg = load_config(resolve_preset(args.preset), overrides).synth
    use_ray = cfg.workers > 1 or args.preset in RAY_PRESETS
    map_fn = ray_map_fn() if use_ray else map
    summary = generate_world(cfg, Path(args.out).resolve(), map_fn=map_fn, preset=str(args.preset))
    print(f"synthetic world '{args.preset}' (seed {cfg.seed}) -> {Path(args.out).resolve()}")
    print(f"  {summary['units']} work units {'on Ray' if use_ray else 'in-process'}, "
          f"{summary['generation_seconds']:.1f} s")
    for key, value in summary["counts"].items():
        print(f"  {key:<36} {value}")
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))
