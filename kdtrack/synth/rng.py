"""Named random streams: every work unit draws from its own seeded generator.

A unit's stream depends only on ``(seed, unit name)``, never on the order in
which units run, so units can be generated in any order, on any worker, and
give byte-identical files.
"""

from __future__ import annotations

import hashlib

import numpy as np


def unit_rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and a name built from ``parts`` (stable across processes)."""
    if seed < 0:
        raise ValueError(f"synth seed must be >= 0, got {seed}")
    key = "/".join(str(p) for p in parts).encode()
    digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))
