"""What the fault-injection tests share: a thread that injects one fault while ``jobs.train.main`` runs in the
test's own thread, and the iteration of the latest checkpoint Ray Train V2 has registered."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints it registered


def registered_iteration(read_snapshot: Callable[[], "str | bytes"]) -> int | None:
    """The iteration of the latest registered checkpoint, from the snapshot ``read_snapshot`` returns; None
    while there is none (or the file is missing or being rewritten)."""
    try:
        latest = json.loads(read_snapshot()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    return int(latest.get("metrics", {}).get("iteration", 0)) if latest else None


def loadable_checkpoints(run_dir: Path, known: dict[str, int] | None = None) -> dict[str, int]:
    """``{checkpoint folder: iteration}`` of every ``checkpoint_*/checkpoint.pt`` under a local ``run_dir`` that
    loads (a file still being copied in does not); folders already in ``known`` are not read again."""
    from kdtrack.checkpoint import load_checkpoint

    found = dict(known or {})
    for path in sorted(run_dir.glob("checkpoint_*/checkpoint.pt")):
        if path.parent.name in found:
            continue
        try:
            found[path.parent.name] = int(load_checkpoint(path)["iteration"])
        except (OSError, ValueError, RuntimeError, EOFError):
            continue
    return found


class FaultThread(threading.Thread):
    """Injects one fault (``_run``) beside a training run. ``error`` says what went wrong, a crash of the thread
    itself included (the test fails with it); the test sets ``stop`` when ``main`` has returned."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            self.error = f"watcher crashed: {type(exc).__name__}: {exc}"

    def _run(self) -> None:
        raise NotImplementedError
