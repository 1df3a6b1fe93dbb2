"""The pipeline's SQL database: models, engine and session helpers, repository functions, migrations.

>>> engine = make_engine("sqlite:///var/donut_hole.sqlite3")  # doctest: +SKIP
>>> factory = session_factory(engine)  # doctest: +SKIP
>>> with session_scope(factory) as session:  # doctest: +SKIP
...     batch = repository.create_batch(session, source="cli", uris=["s3://scans/a.png"])
"""

from donut_hole.db import repository
from donut_hole.db.models import (
    Base,
    Batch,
    BatchStatus,
    Document,
    DocumentStatus,
    Extraction,
    Field,
    Model,
    metadata,
)
from donut_hole.db.session import make_engine, normalize_url, session_factory, session_scope

__all__ = [
    "Base",
    "Batch",
    "BatchStatus",
    "Document",
    "DocumentStatus",
    "Extraction",
    "Field",
    "Model",
    "make_engine",
    "metadata",
    "normalize_url",
    "repository",
    "session_factory",
    "session_scope",
]
