"""The README's demo: the main job end to end on the embedded synthetic world.

Stages (each prints what it did):
  1. generate the tiny synthetic crowd world in the real dataset formats;
  2. read every format back through kdtrack's readers and print a summary.

    python -m jobs.demo --out runs/demo [--preset tiny] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs import generate_synth, inspect_world


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (world, runs, metrics)")
    parser.add_argument("--preset", default="tiny", help="synthetic world preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    world = out / "world"

    t0 = time.perf_counter()
    print(f"[1/2] generating the '{args.preset}' synthetic world into {world}")
    generate_synth.main(generate_synth.get_args_parser().parse_args(
        ["--preset", args.preset, "--out", str(world), "--seed", str(args.seed)]))
    print(f"      done in {time.perf_counter() - t0:.1f}s")

    print("[2/2] reading it back through the real-format readers")
    summary = inspect_world.main(["--root", str(world), "--json", str(out / "world_summary.json")])
    return {"world": str(world), "summary": summary}


if __name__ == "__main__":
    main()
