"""Human review: documents that wait for a person, reviewers' corrections, and where each field was read.

- ``documents.status`` may be ``needs_review``: read, with a field below the review threshold.
- ``batches.review_threshold``: the batch's own threshold (null: the service's setting).
- ``extractions.source`` (``model`` or ``reviewer``) and ``extractions.reviewer`` (who); a reviewer's
  extraction has no model (``model_id`` null) and never overwrites the model's.
- ``fields.box``: where the field was read, ``[x0, y0, x1, y1]`` as fractions of the page.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'processing', 'done', 'failed')"
NEW = "status IN ('queued', 'processing', 'done', 'failed', 'needs_review')"
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint(op.f("ck_documents_document_status"), type_="check")
        batch.create_check_constraint("document_status", sa.text(NEW))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("review_threshold", sa.Float(), nullable=True))
    with op.batch_alter_table("extractions") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="model", nullable=False))
        batch.add_column(sa.Column("reviewer", sa.String(length=255), nullable=True))
        batch.alter_column("model_id", existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table("fields") as batch:
        batch.add_column(sa.Column("box", JSONType, nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM extractions WHERE model_id IS NULL")
    op.execute("UPDATE documents SET status = 'done' WHERE status = 'needs_review'")
    with op.batch_alter_table("fields") as batch:
        batch.drop_column("box")
    with op.batch_alter_table("extractions") as batch:
        batch.alter_column("model_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("reviewer")
        batch.drop_column("source")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("review_threshold")
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint(op.f("ck_documents_document_status"), type_="check")
        batch.create_check_constraint("document_status", sa.text(OLD))
