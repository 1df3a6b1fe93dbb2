"""documents.page, page_count, source_sha256: one document row per page of a PDF or multi-page TIFF.

Page 1 keeps the submitted URI, page k > 1 is ``<uri>#page=<k>``, so ``UNIQUE(batch_id, uri)`` is kept as
it is (a batch-mode copy of ``documents`` would cascade-delete its extractions on SQLite). Existing
documents are page 1; their page count is unknown until a worker opens them again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("page", sa.Integer(), server_default="1", nullable=False))
    op.add_column("documents", sa.Column("page_count", sa.Integer(), nullable=True))
    op.add_column("documents", sa.Column("source_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("documents", "source_sha256")
    op.drop_column("documents", "page_count")
    op.drop_column("documents", "page")
