"""Progress of long work: a tqdm bar on a terminal, plain lines elsewhere.

tqdm redraws its bar with carriage returns and cursor-up escapes; sent to a log file or a CI
console (not a terminal) that becomes one long line of `\\r` and `ESC[A` per refresh. So when the
stream is not a terminal, progress is one plain line every LORAFIT_PROGRESS_SECONDS (default 30)
and a last line when the work ends, each readable on its own:

    training: 1,280/3,200 samples (40%), 51.2 samples/s, 25 s elapsed, ~38 s left
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional, TextIO

INTERVAL_ENV = "LORAFIT_PROGRESS_SECONDS"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


class LineProgress:
    """tqdm's update/close/iteration interface, written as whole lines (for streams that are not terminals).
    leave=False (short inner work: evaluation, tokenising) prints only when it ran past one interval."""

    def __init__(self, total: Optional[int], desc: str, unit: str, *, initial: int = 0, leave: bool = True,
                 file: TextIO | None = None, interval: float | None = None):
        self.total, self.desc, self.unit, self.n, self.leave = total, desc, unit.strip() or "items", initial, leave
        self.file = file or sys.stderr
        self.interval = _interval() if interval is None else interval
        self._start = self._last = time.monotonic()
        self._initial, self._printed, self._closed = initial, False, False
        self.postfix = ""

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "")
        parts = [f"{self.desc}: {done} {self.unit}" + (f" ({self.n / self.total:.0%})" if self.total else "")]
        if rate > 0:
            parts.append(f"{rate:,.1f} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        return ", ".join(parts + ([self.postfix] if self.postfix else []))

    def set_postfix_str(self, text: str) -> None:
        """Said at the end of each line (tqdm's set_postfix_str): counts beside the measured unit."""
        self.postfix = text

    def _emit(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self._printed, self._last = True, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._emit()

    def close(self) -> None:
        if not self._closed and (self.leave or self._printed):
            self._emit()
        self._closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Iterating:
    """Wraps an iterable and counts each item it yields on a progress object."""

    def __init__(self, iterable: Iterable, bar):
        self.iterable, self.bar = iterable, bar

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.bar.update(1)
        finally:
            self.bar.close()

    def __len__(self) -> int:
        return len(self.iterable)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: Optional[int] = None, desc: str = "", unit: str = " items",
             initial: int = 0, leave: bool = True, disable: bool = False, file: TextIO | None = None):
    """A progress object with tqdm's interface (update, close, `with`, iteration over `iterable`):
    tqdm on a terminal, LineProgress on anything else; nothing at all when disabled."""
    stream = file or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if disable or _is_terminal(stream):
        from tqdm.auto import tqdm

        bar = tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True, initial=initial, leave=leave,
                   disable=disable, file=stream)
        return bar
    bar = LineProgress(total, desc, unit, initial=initial, leave=leave, file=stream)
    return bar if iterable is None else _Iterating(iterable, bar)
