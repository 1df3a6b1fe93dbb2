"""The hand-written migrations build exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from donut_hole.db import make_engine, metadata
from donut_hole.db.migrate import downgrade, head_revision, upgrade


def _diffs(url: str, target: sa.MetaData = metadata) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, target))
    finally:
        engine.dispose()


def _current(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_head_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    assert _diffs(db_url) == []
    assert _current(db_url) == head_revision()


def test_comparison_would_notice_a_difference(db_url: str) -> None:
    upgrade(db_url)
    changed = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["documents"].append_column(sa.Column("extra", sa.Integer()))
    assert _diffs(db_url, changed) != []


def test_constraints_carry_the_conventional_names(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        inspector = sa.inspect(engine)
        assert inspector.get_pk_constraint("documents")["name"] == "pk_documents"
        assert {c["name"] for c in inspector.get_unique_constraints("extractions")} == {
            "uq_extractions_document_id_model_id"
        }
        assert {c["name"] for c in inspector.get_foreign_keys("fields")} == {
            "fk_fields_extraction_id_extractions"
        }
        assert {c["name"] for c in inspector.get_check_constraints("documents")} == {
            "ck_documents_document_status"
        }
        assert {i["name"] for i in inspector.get_indexes("documents")} >= {
            "ix_documents_batch_id_status",
            "ix_documents_status",
        }
    finally:
        engine.dispose()


def test_upgrade_is_repeatable_and_downgrade_removes_everything(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)  # already at head: nothing to do
    downgrade(db_url, "base")
    engine = make_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(db_url)
    assert _diffs(db_url) == []


def test_alembic_ini_points_at_the_package_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    ini = Path(__file__).resolve().parents[2] / "alembic.ini"
    assert ScriptDirectory.from_config(Config(str(ini))).get_current_head() == head_revision()
