"""``donut-hole synth``: synthetic logistics scans with their ground truth, in DONUT's dataset format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from donut_hole.cli.common import console, fail


def synth(
    out: Annotated[Path, typer.Option(help="Output folder (DONUT dataset format).")],
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Document type, or reading/easy, reading/medium, reading/document for reading pages "
            "(text in reading order); repeat for a mix, or 'all' (the three document types)."
        ),
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Number of scans.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    width: Annotated[int | None, typer.Option(help="Image width (default per document type).")] = None,
    height: Annotated[int | None, typer.Option(help="Image height (default per document type).")] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Processes (0: one per core); the bytes are the same for any number.")
    ] = 0,
) -> None:
    """Generate synthetic logistics scans with ground truth (images + metadata.jsonl)."""
    from donut_hole.documents.schemas import DOCUMENT_TYPES
    from donut_hole.documents.synth import SOURCES, generate

    kind = kind or ["shipping_label"]
    kinds = sorted(DOCUMENT_TYPES) if kind == ["all"] else kind
    unknown = [k for k in kinds if k not in SOURCES]
    if unknown:
        raise fail(f"unknown document type {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    size = (width, height) if width and height else None
    generate(kinds, n=n, out=out, seed=seed, image_size=size, workers=workers)
    console.print(f"wrote {n} scans ({', '.join(kinds)}) to {out}")
