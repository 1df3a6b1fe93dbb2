"""extractions.note: what is off in a reading stored all the same (a schema mismatch).

Until now the note went into ``documents.error`` of a ``done`` document; existing notes move over, and
``documents.error`` of done documents is cleared.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("extractions") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.execute(
        "UPDATE extractions SET note = (SELECT documents.error FROM documents "
        "WHERE documents.id = extractions.document_id) "
        "WHERE note IS NULL AND EXISTS (SELECT 1 FROM documents WHERE documents.id = extractions.document_id "
        "AND documents.status = 'done' AND documents.error LIKE 'schema: %')"
    )
    op.execute("UPDATE documents SET error = NULL WHERE status = 'done' AND error LIKE 'schema: %'")


def downgrade() -> None:
    op.execute(
        "UPDATE documents SET error = (SELECT extractions.note FROM extractions "
        "WHERE extractions.document_id = documents.id AND extractions.note IS NOT NULL "
        "ORDER BY extractions.created_at DESC, extractions.id DESC LIMIT 1) "
        "WHERE status = 'done' AND error IS NULL"
    )
    with op.batch_alter_table("extractions") as batch:
        batch.drop_column("note")
