"""How documents are grouped into forward passes.

The unit of work is a **group**: one Celery message carries the ids of up to ``batch_size`` documents, and
the worker that takes it reads them in one batched forward pass. Grouping happens where the documents are
known, when they are enqueued, instead of in a buffer inside the worker:

* a message is acknowledged only after its whole group is stored (``acks_late``), so a worker that dies
  loses no document and holds no documents that other messages are waiting on;
* ``worker_prefetch_multiplier = 1`` keeps exactly one group per pool process in flight, so an idle worker
  can always take the next group (a buffering worker would hoard messages to fill its batch);
* a lone upload is sent at once as a group of one: nobody waits for a batch to fill.

``batch_wait_s`` bounds how long a *growing* group may wait: the task that expands an S3 prefix lists
objects page by page and sends a partial group when its first document has waited that long
(:class:`Grouper`), so slow listings still start work early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive groups of at most ``size`` items.

    ``chunked(["a", "b", "c", "d", "e"], 2)`` → ``[["a", "b"], ["c", "d"], ["e"]]``
    """
    if size < 1:
        raise ValueError(f"group size must be at least 1, got {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


class Grouper:
    """Items in groups of ``size``; a partial group is due once its oldest item waited ``max_wait_s``.

    >>> grouper = Grouper(size=2, max_wait_s=0.5, clock=iter([0.0, 0.1, 0.2, 0.9]).__next__)
    >>> grouper.add(["a"]), grouper.add(["b", "c"]), grouper.due(), grouper.flush()
    ([], [['a', 'b']], False, [['c']])

    ``add`` returns the full groups; ``due()`` says whether the partial one should be sent now;
    ``flush()`` returns whatever is left (at the end of a listing).
    """

    def __init__(self, *, size: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"group size must be at least 1, got {size}")
        self.size = size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._pending: list[str] = []
        self._since: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, items: Iterable[str]) -> list[list[str]]:
        out: list[list[str]] = []
        for item in items:
            if not self._pending:
                self._since = self.clock()
            self._pending.append(item)
            if len(self._pending) == self.size:
                out.append(self._pending)
                self._pending, self._since = [], None
        return out

    def due(self) -> bool:
        """True when a partial group exists and its first item has waited at least ``max_wait_s``."""
        return self._since is not None and self.clock() - self._since >= self.max_wait_s

    def flush(self) -> list[list[str]]:
        out = [self._pending] if self._pending else []
        self._pending, self._since = [], None
        return out
