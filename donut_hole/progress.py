"""Progress of long commands: a live bar on a terminal, plain periodic lines anywhere else.

Without a TTY (CI logs, ``nohup``, a pipe) a rich bar draws nothing, and a long ``evaluate`` or ``synth``
looks hung. :class:`Progress` draws the bar when stderr is a terminal and otherwise writes one line to
stderr every ``every_s`` seconds (and a last one at the end)::

    evaluate: 120/500 (24%), 3.1/s, about 2 min left

>>> import io
>>> out = io.StringIO()
>>> with Progress("evaluate", total=4, stream=out, every_s=0) as progress:
...     progress.advance(2)
...     progress.advance(2)
>>> print(out.getvalue().splitlines()[-1].split(",")[0])
evaluate: 4/4 (100%)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")

EVERY_S = 10.0


class Progress:
    """``advance(n)`` as work is done; a bar on a terminal, else a line every ``every_s`` seconds.
    ``enabled=False`` shows nothing."""

    def __init__(
        self,
        label: str,
        *,
        total: int,
        enabled: bool = True,
        stream: IO[str] | None = None,
        every_s: float = EVERY_S,
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        if enabled and stream is None and sys.stderr.isatty():
            from rich.progress import Progress as Bar

            self._bar = Bar(transient=True)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def set_total(self, total: int) -> None:
        """The amount of work changed (a batch that grew): ``total`` from now on."""
        self.total = total
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.label}: {self.done}/{self.total}{share}, {rate:.1f}/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        print(text, file=self.stream, flush=True)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and kind is None and self.done:
            self._line(time.monotonic())


def track(items: Iterable[T], label: str, *, total: int, enabled: bool = True) -> Iterator[T]:
    """``items``, with their progress shown as :class:`Progress` shows it."""
    with Progress(label, total=total, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.advance()


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
