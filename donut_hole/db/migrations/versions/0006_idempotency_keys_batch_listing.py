"""idempotency_keys: a client's ``Idempotency-Key`` and the batch its first request made; batches by age.

A request sent again with the same key (a client retrying after a lost answer) gets that batch back and
queues nothing; the same key with another request is refused. The key is stored as the sha256 of the
client's API key and the header, never in clear. ``ix_batches_created_at``: batches listed newest first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_idempotency_keys_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_sha256", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_batch_id"), "idempotency_keys", ["batch_id"])
    op.create_index("ix_batches_created_at", "batches", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_created_at", table_name="batches")
    op.drop_index(op.f("ix_idempotency_keys_batch_id"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
