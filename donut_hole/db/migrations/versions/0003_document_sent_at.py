"""documents.sent_at: when a message carrying the document was last handed to the broker.

A ``queued`` document with no ``sent_at`` was never sent (the broker was down when its batch was stored);
one whose ``sent_at`` is older than the retry budget lost its message (its sender gave up). A worker's
watchdog sends both again. Existing documents count as sent when they were last updated.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE on both backends (SQLite >= 3.35 drops columns): a batch-mode copy of ``documents``
    # would cascade-delete its extractions on SQLite.
    op.add_column("documents", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE documents SET sent_at = updated_at")


def downgrade() -> None:
    op.drop_column("documents", "sent_at")
