"""The tracker benchmark script runs end to end (smoke test) and reports sane numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "tracker.py"), "--smoke-test"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(n, d) for d in (128, 2048) for n in (10, 50, 200)]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0 and r[4].endswith("x")
