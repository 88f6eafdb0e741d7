"""The one place that makes motmetrics 1.4.0 run on NumPy 2.

motmetrics 1.4.0 calls ``np.asfarray`` in ``motmetrics/distances.py``
(``iou_matrix``); NumPy 2 removed it. Rather than patching the global ``numpy``
module for everybody, the ``np`` name inside ``motmetrics.distances`` only is
pointed at a thin proxy that forwards to NumPy and adds ``asfarray``. Every
kdtrack module gets motmetrics through :func:`import_motmetrics`.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np


def _asfarray(a: Any, dtype: Any = np.float64) -> np.ndarray:
    """NumPy 1.x semantics: a float array (float64 unless a float dtype is given)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.inexact):
        dtype = np.dtype(np.float64)
    return np.asarray(a, dtype=dtype)


class _NumpyWithAsfarray(types.ModuleType):
    """Forwards every attribute to ``numpy``; only ``asfarray`` is added."""

    asfarray = staticmethod(_asfarray)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def import_motmetrics() -> types.ModuleType:
    """Import motmetrics and apply the shim (idempotent). Returns the ``motmetrics`` module."""
    import motmetrics
    import motmetrics.distances as distances

    if not hasattr(distances.np, "asfarray"):
        distances.np = _NumpyWithAsfarray("numpy")
    return motmetrics
