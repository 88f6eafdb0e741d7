"""bench/pseudo_label.py compares one core with N: its loop must really run on one BLAS thread, and its
CPU split must add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loop_process_has_one_blas_thread():
    """Importing the bench caps numpy's BLAS before numpy loads (until 2026-12-03 the cap came after
    ``import numpy`` and the "single-process" loop had a second BLAS thread)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MKL_NUM_THREADS")}
    code = ("import json, runpy, sys; sys.argv = ['x']; runpy.run_path(%r, "
            "run_name='not_main'); from threadpoolctl import threadpool_info; "
            "print(json.dumps([(i['user_api'], i['num_threads']) for i in threadpool_info()]))"
            % str(ROOT / "bench" / "pseudo_label.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(api == "blas" for api, _ in pools)  # numpy's OpenBLAS is loaded and seen
    assert all(threads == 1 for _, threads in pools), pools


def _bench_module():
    """bench/pseudo_label.py as a module; the thread caps it sets on import are undone, so that they do not
    leak into the processes later tests start."""
    import importlib.util

    saved = dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location("_bench_pseudo_label", ROOT / "bench" / "pseudo_label.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


def test_cpu_split_by_role():
    cpu_split = _bench_module().cpu_split
    before = {(1, 0.0): ("driver", 2.0), (2, 0.0): ("ray_workers", 5.0), (3, 0.0): ("other", 1.0)}
    after = {(1, 0.0): ("driver", 2.5), (2, 0.0): ("ray_workers", 9.0), (3, 0.0): ("other", 1.25),
             (4, 7.0): ("ray_workers", 3.0)}  # a worker started in between counts from zero
    assert cpu_split(before, after) == {"ray_workers": 7.0, "driver": 0.5, "other": 0.25}
