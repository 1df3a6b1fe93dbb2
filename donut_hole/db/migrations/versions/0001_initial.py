"""Initial schema: models, batches, documents, extractions, fields.

Written out in full (no reference to ``donut_hole.db.models``) so that this revision keeps meaning the same
tables when the models change later. Constraint names follow the naming convention of
``donut_hole.db.models.NAMING_CONVENTION``.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamp(name: str, *, nullable: bool = False, now: bool = True) -> sa.Column:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), server_default=default, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("density", sa.Float(), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", "sha256", name=op.f("uq_models_name_sha256")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.CheckConstraint(
            "status IN ('expanding', 'accepted', 'failed')", name=op.f("ck_batches_batch_status")
        ),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("started_at", nullable=True, now=False),
        _timestamp("finished_at", nullable=True, now=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_documents_batch_id_batches"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("batch_id", "uri", name=op.f("uq_documents_batch_id_uri")),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'done', 'failed')", name=op.f("ck_documents_document_status")
        ),
    )
    op.create_index("ix_documents_batch_id_status", "documents", ["batch_id", "status"])
    op.create_index("ix_documents_status", "documents", ["status"])
    op.create_table(
        "extractions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("document_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("raw_sequence", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extractions")),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_extractions_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_extractions_model_id_models"), ondelete="RESTRICT"
        ),
        sa.UniqueConstraint("document_id", "model_id", name=op.f("uq_extractions_document_id_model_id")),
    )
    op.create_index("ix_extractions_model_id", "extractions", ["model_id"])
    op.create_table(
        "fields",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("extraction_id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fields")),
        sa.ForeignKeyConstraint(
            ["extraction_id"],
            ["extractions.id"],
            name=op.f("fk_fields_extraction_id_extractions"),
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_fields_extraction_id", "fields", ["extraction_id"])
    op.create_index("ix_fields_name_value", "fields", ["name", "value"])


def downgrade() -> None:
    op.drop_table("fields")
    op.drop_table("extractions")
    op.drop_table("documents")
    op.drop_table("batches")
    op.drop_table("models")
