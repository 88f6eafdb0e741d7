"""Telling Ray's worker processes apart from its daemons, for the benches that count CPU per process."""

from __future__ import annotations


def is_ray_worker(proc) -> bool:
    """A Ray worker process (``ray::<task or actor>`` in its title), not a daemon (raylet, GCS, monitors)."""
    import psutil

    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return bool(cmdline) and cmdline[0].startswith("ray::")
