"""One exit-code rule for the jobs (``jobs.train``, ``jobs.evaluate``, ``jobs.pseudo_label``, ...).

Exit 0 on success; 2 with one line (no traceback) when a config key, a path or an input file is
bad, found before any work; 1 when part of the work failed after what finished was written.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from kdtrack.config import ConfigError
from kdtrack.formats.common import FormatError


class InputError(ValueError):
    """A bad path or argument, found on the driver before any work starts; the message names it."""


BAD_INPUT = (ConfigError, InputError, FileNotFoundError, FormatError)


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
