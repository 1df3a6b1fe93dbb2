"""The ``donut-hole`` Typer app: the one place where the commands of every module are registered.

Registration goes one way: this module imports the command modules (plain functions over the package's
plain functions), and they import only :mod:`.common`. Heavy imports (torch, transformers) happen inside
the commands, so that ``--help`` stays instant.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from donut_hole.cli import compression, demo, documents, models, pipeline, retention

COMMANDS: tuple[Callable[..., Any], ...] = (
    documents.synth,
    models.evaluate,
    models.predict,
    models.calibrate,
    compression.train,
    compression.compress,
    compression.train_default,
    models.ship,
    demo.demo,
    pipeline.worker,
    pipeline.enqueue,
    pipeline.results,
    pipeline.export,
    pipeline.batches,
    retention.delete,
    retention.purge,
    pipeline.migrate,
    pipeline.api,
)
"""Every command, in the order ``--help`` lists them."""

app = typer.Typer(
    name="donut-hole",
    help="DONUT-hole: compress DONUT document readers and run them over queues of logistics scans.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


for command in COMMANDS:
    app.command()(command)
