"""Carve an identity-disjoint validation split out of a person-search manifest's train split (CUHK-SYSU, PRW).

    python -m jobs.carve_val --manifest cuhk/manifest.json --out DATA/person_search/manifest.json \\
        --identities 500 --seed 0

Sweeps (``jobs.tune``) and ``train.val_protocols`` validate on the val split it writes; the picked people
leave training with every image that shows them (``kdtrack.formats.person_search_val``). Made once: a
manifest that already has a val split is refused, and so is an ``--out`` that exists (``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from jobs._cli import InputError, run_cli
from kdtrack.formats.person_search import read_manifest, write_manifest
from kdtrack.formats.person_search_val import DEFAULT_VAL_GALLERY_SIZES, carve_validation, relocate_images


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="a manifest with train and test splits "
                        "(person_search.convert_cuhk_sysu / convert_prw, then write_manifest)")
    parser.add_argument("--out", required=True, help="the manifest to write (e.g. DATA/person_search/manifest.json)")
    parser.add_argument("--identities", type=int, required=True, help="train people moved to the val split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gallery-sizes", default=",".join(map(str, DEFAULT_VAL_GALLERY_SIZES)),
                        help="val gallery sizes under the CUHK-SYSU protocol (comma-separated)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    source, out = Path(args.manifest), Path(args.out)
    if not source.is_file():
        raise InputError(f"--manifest {source}: no such file")
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out} exists: a validation split is carved once (--overwrite replaces it)")
    try:
        sizes = [int(s) for s in args.gallery_sizes.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--gallery-sizes {args.gallery_sizes!r}: comma-separated integers expected") from None
    if not sizes or min(sizes) < 1:
        raise InputError(f"--gallery-sizes {args.gallery_sizes!r}: positive sizes expected")
    manifest = read_manifest(source, check_images=False)
    try:
        carved, counts = carve_validation(manifest, args.identities, args.seed, sizes)
    except ValueError as exc:
        raise InputError(f"--manifest {source}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, relocate_images(carved, source.parent, out.parent))
    print(json.dumps({"manifest": str(out), **counts}))
    return counts


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "jobs.carve_val", partial_failure=()))
