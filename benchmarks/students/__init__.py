"""The parts of ``benchmarks/models.py``, one concern per module.

- :mod:`.variants`: the teacher and its students, built as ``donut-hole compress`` builds them.
- :mod:`.passes`: one timed pass (encoder + generation) and its peak memory.
- :mod:`.schedule`: the plan within the time budget, warm-ups and interleaved rounds.
- :mod:`.results`: medians, speed-ups, targets and the markdown tables.
"""

from __future__ import annotations

from typing import Any

Donut = Any  # a VisionEncoderDecoderModel, possibly quantised or with 2:4 weights (no useful static type)
Samples = dict[tuple[str, str], list[dict[str, Any]]]  # (variant, config key) -> one dict per timed pass
Errors = dict[tuple[str, str], str]


class BenchmarkError(RuntimeError):
    """A benchmark that cannot run as asked (bad flag, unusable resolution, wrong token count)."""


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 240 else text[:237] + "..."
