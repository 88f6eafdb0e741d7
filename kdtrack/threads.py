"""CPU thread policy of processes that run the network.

numpy's BLAS (OpenBLAS) starts as many threads as ``OMP_NUM_THREADS`` or the cores, and they spin for a
while after each call. Beside torch's own intra-op threads they take the cores torch is waiting for:
``jobs.evaluate mot --no-ray`` with two torch threads on 2 cores ran 4x slower with two BLAS threads than
with one (network 12 vs 74 FPS, association 264 vs 988 FPS; bench/README.md, "Batch evaluation"). numpy's
matrices here are small (tracker, box bookkeeping), so one BLAS thread costs nothing and torch keeps the
cores.
"""

from __future__ import annotations


def limit_blas_threads(limit: int = 1) -> None:
    """Cap every BLAS library loaded in this process (numpy's, scipy's) at ``limit`` threads, for good."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=limit, user_api="blas")
