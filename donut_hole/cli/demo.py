"""``donut-hole demo``: the whole pipeline on the embedded defaults (see :mod:`donut_hole.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from donut_hole.cli.common import console, fail, load_settings


def demo(
    n: Annotated[int, typer.Option(min=1, max=500, help="Synthetic scans to read.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic scans.")] = 0,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: 2).")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Run the pipeline end to end on the embedded defaults: scans → queue → workers → SQLite → table."""
    from donut_hole.demo import DemoError, run_demo
    from donut_hole.worker.enqueue import EnqueueError
    from donut_hole.worker.sending import BrokerUnavailable

    try:
        run_demo(load_settings(), n=n, seed=seed, concurrency=concurrency, timeout_s=timeout, console=console)
    except (DemoError, EnqueueError, BrokerUnavailable) as exc:
        raise fail(str(exc), code=1) from exc
