"""A driver's progress over work items that finish out of order (an actor pool's sequences, image
batches, clips): a tqdm bar of units done, with items done / failed beside it, on stderr."""

from __future__ import annotations

import sys


class Progress:
    """tqdm on the driver, fed by finished work items: items done / total, units/s, ETA."""

    def __init__(self, total_units: int, total_items: int, *, unit: str, items: str, desc: str, enabled: bool):
        from tqdm import tqdm

        self.items, self.total_items, self.done, self.failed = items, total_items, 0, 0
        self.bar = tqdm(total=total_units, unit=unit, desc=desc, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        self.bar.set_postfix_str(f"{items} 0/{total_items}")

    def update(self, units: int, ok: bool, line: str = "") -> None:
        self.done += 1
        self.failed += not ok
        self.bar.update(units)
        failed = f", {self.failed} failed" if self.failed else ""
        self.bar.set_postfix_str(f"{self.items} {self.done}/{self.total_items}{failed}")
        if line:
            self.write(line)

    def write(self, line: str) -> None:
        if self.bar.disable:
            print(line, file=sys.stderr, flush=True)
        else:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
