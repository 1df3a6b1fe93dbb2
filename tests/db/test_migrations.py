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


def test_0002_moves_schema_notes_from_documents_to_extractions_and_back(db_url: str) -> None:
    downgrade(db_url, "base")
    upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO models (id, name, path, sha256) VALUES (1, 'tiny', '/m', :sha)"),
                {"sha": "0" * 64},
            )
            connection.execute(
                sa.text("INSERT INTO batches (id, source, status) VALUES ('b', 'test', 'accepted')")
            )
            for doc, status, error in (
                ("d1", "done", "schema: shipping_label lacks tracking_number"),
                ("d2", "failed", "not an image"),
                ("d3", "done", None),
            ):
                connection.execute(
                    sa.text(
                        "INSERT INTO documents (id, batch_id, uri, status, error) "
                        "VALUES (:id, 'b', :uri, :s, :e)"
                    ),
                    {"id": doc, "uri": f"s3://x/{doc}", "s": status, "e": error},
                )
            for i, doc in enumerate(("d1", "d3"), start=1):
                connection.execute(
                    sa.text(
                        "INSERT INTO extractions (id, document_id, model_id, raw_sequence, data) "
                        "VALUES (:id, :doc, 1, '', '{}')"
                    ),
                    {"id": i, "doc": doc},
                )

        upgrade(db_url)
        with engine.connect() as connection:
            notes = dict(connection.execute(sa.text("SELECT document_id, note FROM extractions")).all())
            errors = dict(connection.execute(sa.text("SELECT id, error FROM documents")).all())
        assert notes == {"d1": "schema: shipping_label lacks tracking_number", "d3": None}
        assert errors == {"d1": None, "d2": "not an image", "d3": None}

        downgrade(db_url, "0001")
        with engine.connect() as connection:
            errors = dict(connection.execute(sa.text("SELECT id, error FROM documents")).all())
        assert errors == {
            "d1": "schema: shipping_label lacks tracking_number",
            "d2": "not an image",
            "d3": None,
        }
    finally:
        engine.dispose()
        downgrade(db_url, "base")
        upgrade(db_url)


def test_0007_keeps_every_reading_and_allows_review(db_url: str) -> None:
    """Adding review copies tables on SQLite: nothing that refers to them may be lost on the way (foreign
    keys are off while a table is copied); back down, reviews go and waiting documents are done."""
    upgrade(db_url, "0006")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO models (id, name, path, sha256) VALUES (1, 'm', '/m', :s)"),
                {"s": "0" * 64},
            )
            connection.execute(
                sa.text("INSERT INTO batches (id, source, status) VALUES ('b', 't', 'accepted')")
            )
            connection.execute(
                sa.text(
                    "INSERT INTO documents (id, batch_id, uri, status) VALUES ('d', 'b', 's3://x/d', 'done')"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO extractions (id, document_id, model_id, raw_sequence, data) "
                    "VALUES (1, 'd', 1, '', '{}')"
                )
            )
            connection.execute(
                sa.text("INSERT INTO fields (id, extraction_id, name, value) VALUES (1, 1, 'carrier', 'DHL')")
            )

        upgrade(db_url)
        with engine.begin() as connection:
            assert connection.execute(sa.text("SELECT name, value, box FROM fields")).all() == [
                ("carrier", "DHL", None)
            ]
            assert connection.execute(sa.text("SELECT source, reviewer FROM extractions")).all() == [
                ("model", None)
            ]
            connection.execute(sa.text("UPDATE documents SET status = 'needs_review'"))
            connection.execute(sa.text(
                "INSERT INTO extractions (id, document_id, model_id, source, reviewer, raw_sequence, data) "
                "VALUES (2, 'd', NULL, 'reviewer', 'ana', '', '{}')"
            ))  # fmt: skip

        downgrade(db_url, "0006")
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT id FROM extractions")).all() == [(1,)]
            assert connection.execute(sa.text("SELECT status FROM documents")).all() == [("done",)]
            assert connection.execute(sa.text("SELECT value FROM fields")).all() == [("DHL",)]
    finally:
        engine.dispose()
