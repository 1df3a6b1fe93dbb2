"""``donut-hole export --reviewed``: the documents people reviewed, as a DONUT dataset to train on."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.db import make_engine, repository, session_factory, session_scope
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.settings import Settings
from donut_hole.storage import open_store

runner = CliRunner()


def _read(settings: Settings, name: str, *, stored: bool = True) -> str:
    """A document read by a model (a PNG in the store, unless ``stored`` is false)."""
    store = open_store(settings.storage_url)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buffer, format="PNG")
    uri = store.put(f"in/{name}.png", buffer.getvalue()) if stored else store.uri(f"in/{name}.png")
    engine = make_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            document_id = repository.create_batch(session, source="t", uris=[uri]).documents[0].id
            model_id = repository.get_or_create_model(session, name="m", path="/m", sha256="c" * 64).id
            repository.save_extraction(
                session,
                document_id=document_id,
                model_id=model_id,
                raw_sequence="",
                data={"document_type": "shipping_label", "carrier": "DHI"},
                confidence=0.5,
                latency_ms=1.0,
                fields=[("document_type", "shipping_label", 0.99), ("carrier", "DHI", 0.3)],
            )
    finally:
        engine.dispose()
    return document_id


def _review(settings: Settings, document_id: str, carrier: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            repository.save_review(
                session,
                document_id=document_id,
                reviewer="ana",
                values=[("document_type", "shipping_label"), ("carrier", carrier)],
            )
    finally:
        engine.dispose()


def test_export_writes_the_reviewed_documents_as_a_dataset(settings: Settings, tmp_path: Path) -> None:
    reviewed = _read(settings, "a")
    _review(settings, reviewed, "DHL")
    _read(settings, "b")  # read, never reviewed: not exported
    gone = _read(settings, "c", stored=False)  # reviewed, but its scan is not in the store
    _review(settings, gone, "UPS")

    out = tmp_path / "reviewed"
    result = runner.invoke(app, ["export", "--reviewed", "--out", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "wrote 1 reviewed document(s)" in said and f"left out {gone}" in said
    (sample,) = read_dataset(out)
    assert sample.gt_parse == {"document_type": "shipping_label", "carrier": "DHL"}
    assert Image.open(sample.image_path).size == (40, 30)
    line = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert line["document_id"] == reviewed and line["reviewer"] == "ana"

    again = runner.invoke(app, ["export", "--reviewed", "--out", str(out)])
    assert again.exit_code == 2 and "not an empty folder" in " ".join(again.output.split())
    nothing = runner.invoke(app, ["export", "--out", str(tmp_path / "other")])
    assert nothing.exit_code == 2 and "--reviewed" in nothing.output
