"""The parts of a synthetic world a benchmark needs, generated once into a folder it reuses."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def world_parts(preset: str, out: Path, sources: Sequence[str], ready: Sequence[str]) -> Path:
    """``out`` holding the ``sources`` units (``plan_units`` names: crowdhuman, coco, mot17, ...) of the
    ``synth_<preset>`` world; generated unless every path in ``ready`` (relative to ``out``) exists."""
    from kdtrack.config import load_config
    from kdtrack.synth.world import generate_world, plan_units

    if all((out / path).exists() for path in ready):
        return out
    cfg = load_config(f"synth_{preset}").synth
    units = [u for u in plan_units(cfg) if u[0] in sources]
    print(f"generating the {', '.join(sources)} parts of the '{preset}' world into {out} ...", flush=True)
    generate_world(cfg, out, preset=preset, units=units)
    return out
