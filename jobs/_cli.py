"""One exit-code rule for the jobs (``jobs.train``, ``jobs.evaluate``, ``jobs.pseudo_label``, ...).

Exit 0 on success; 2 with one line (no traceback) when a config key, a path or an input file is
bad, found before any work; 1 when part of the work failed after what finished was written. Code
that runs once the work started sits in ``work_phase()``, so a missing file there is a failure
(exit 1 with its traceback), never "bad input".
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Sequence

from kdtrack.config import ConfigError
from kdtrack.formats.common import FormatError


class InputError(ValueError):
    """A bad path or argument, found on the driver before any work starts; the message names it."""


BAD_INPUT = (ConfigError, InputError, FileNotFoundError, FormatError)


class WorkFailed(RuntimeError):
    """An input-error type raised after the work started: a failure of the work (exit 1, traceback), not bad
    input (``--out`` vanished mid-run is no reason to tell the user their arguments were wrong)."""


@contextlib.contextmanager
def work_phase() -> Iterator[None]:
    """Code past the input checks: a ``BAD_INPUT`` error raised inside becomes :class:`WorkFailed`."""
    try:
        yield
    except BAD_INPUT as exc:
        raise WorkFailed(f"after the work started: {type(exc).__name__}: {exc}") from exc


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None, prog: str, *,
            partial_failure: tuple[type[BaseException], ...]) -> int:
    """``main(argv)`` mapped to an exit code; every error is one line ``prog: message`` on stderr."""
    try:
        main(argv)
    except BAD_INPUT as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except partial_failure as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
