"""batches.callback_*: a batch's completion webhook and its delivery state.

``callback_status`` is ``waiting`` (documents left), ``due`` (a try is on its way or scheduled at
``callback_next_at``), ``delivered`` or ``failed``; NULL for a batch without a callback. Recorded so that a
callback is delivered at least once and never again after a success.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("batches", sa.Column("callback_status", sa.String(length=16), nullable=True))
    op.add_column("batches", sa.Column("callback_attempts", sa.Integer(), server_default="0", nullable=False))
    op.add_column("batches", sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("batches", sa.Column("callback_delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("batches", sa.Column("callback_error", sa.Text(), nullable=True))
    op.create_index("ix_batches_callback_status", "batches", ["callback_status"])


def downgrade() -> None:
    op.drop_index("ix_batches_callback_status", table_name="batches")
    for column in (
        "callback_error",
        "callback_delivered_at",
        "callback_next_at",
        "callback_attempts",
        "callback_status",
        "callback_url",
    ):
        op.drop_column("batches", column)
