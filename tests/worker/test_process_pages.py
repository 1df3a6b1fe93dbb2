"""Pages of PDFs and TIFFs in the plain processing functions (this process, SQLite, a local store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from multipage import broken, coloured_pages, encrypted, pdf_of, tiff_of, with_unloadable_page
from sqlalchemy import func, select

from donut_hole.db import Document, Extraction, migrate, repository, session_scope
from donut_hole.settings import Settings
from donut_hole.storage import open_store
from donut_hole.worker.process import process_group
from donut_hole.worker.runtime import Runtime


@pytest.fixture
def runtime(tmp_path: Path, tiny_model: Path) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path, model_path=tiny_model, max_new_tokens=4, batch_size=2, max_pages=4)
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    yield rt
    rt.close()


def _batch(rt: Runtime, files: dict[str, bytes]) -> list[str]:
    store = open_store(rt.settings.storage_url)
    uris = [store.put(f"in/{name}", data) for name, data in files.items()]
    with session_scope(rt.sessions) as session:
        return [d.id for d in repository.create_batch(session, source="test", uris=uris).documents]


def _rows(rt: Runtime, batch_id: str) -> list[dict]:
    with session_scope(rt.sessions) as session:
        return [dict(row) for row in repository.results_for_batch(session, batch_id=batch_id)]


def test_a_pdf_becomes_one_document_per_page_sent_in_groups_and_read_once(
    runtime: Runtime, scan_dir: Path
) -> None:
    scans = sorted(scan_dir.glob("*.jpg"))
    pdf = pdf_of(scans[:3])
    ids = _batch(runtime, {"bol.pdf": pdf, "label.jpg": scans[3].read_bytes()})
    sent: list[list[str]] = []

    first = process_group(runtime, ids, send=sent.append)

    assert sorted(first.done) == sorted(ids)  # page 1 read in the same forward pass as the JPEG
    assert len(sent) == 1 and len(sent[0]) == 2  # pages 2 and 3: one group (batch_size 2)
    again = process_group(runtime, ids, send=sent.append)  # a redelivered message adds no page
    assert sorted(again.skipped) == sorted(ids) and len(sent) == 1
    pages = process_group(runtime, sent[0], send=sent.append)
    assert sorted(pages.done) == sorted(sent[0]) and len(sent) == 1

    with session_scope(runtime.sessions) as session:
        batch_id = repository.get_document(session, document_id=ids[0]).batch_id
        assert session.scalar(select(func.count()).select_from(Document)) == 4
        assert session.scalar(select(func.count()).select_from(Extraction)) == 4
        page_one = repository.get_document(session, document_id=ids[0])
        assert [
            (p.page, p.uri.rsplit("/", 1)[-1]) for p in repository.pages_of(session, document=page_one)
        ] == [
            (1, "bol.pdf"),
            (2, "bol.pdf#page=2"),
            (3, "bol.pdf#page=3"),
        ]
    rows = _rows(runtime, batch_id)
    assert [(r["uri"].rsplit("/", 1)[-1], r["page"], r["page_count"], r["status"]) for r in rows] == [
        ("bol.pdf", 1, 3, "done"),
        ("bol.pdf#page=2", 2, 3, "done"),
        ("bol.pdf#page=3", 3, 3, "done"),
        ("label.jpg", 1, 1, "done"),
    ]
    with session_scope(runtime.sessions) as session:
        shas = {d.source_sha256 for d in session.scalars(select(Document).where(Document.page_count == 3))}
    assert len(shas) == 1 and None not in shas


def test_bad_pdfs_and_too_many_pages_fail_alone_with_reasons(runtime: Runtime, scan_dir: Path) -> None:
    good = pdf_of(coloured_pages(2))
    files = {
        "a-encrypted.pdf": encrypted(good),
        "b-broken.pdf": broken(good),
        "c-long.tiff": tiff_of(coloured_pages(5)),  # the limit is 4 pages
        "d-good.pdf": good,
    }
    ids = _batch(runtime, files)
    sent: list[list[str]] = []

    outcome = process_group(runtime, ids, send=sent.append)

    assert outcome.done == [ids[3]] and len(sent) == 1
    assert outcome.failed == {
        ids[0]: "encrypted PDF: it cannot be opened without its password",
        ids[1]: outcome.failed[ids[1]],
        ids[2]: "too many pages: 5, the limit is 4 (DONUT_HOLE_MAX_PAGES)",
    }
    assert outcome.failed[ids[1]].startswith("not a readable PDF: ")
    with session_scope(runtime.sessions) as session:
        long = repository.get_document(session, document_id=ids[2])
        assert (long.page_count, long.status.value) == (5, "failed")  # counted, and nothing added for it
        assert session.scalar(select(func.count()).select_from(Document)) == 5  # + page 2 of the good PDF


def test_a_source_replaced_after_its_pages_were_counted_fails_its_later_pages(
    runtime: Runtime,
) -> None:
    ids = _batch(runtime, {"swap.pdf": pdf_of(coloured_pages(3))})
    sent: list[list[str]] = []
    process_group(runtime, ids, send=sent.append)
    open_store(runtime.settings.storage_url).put("in/swap.pdf", pdf_of(coloured_pages(4)))

    outcome = process_group(runtime, sent[0], send=sent.append)

    assert outcome.done == [] and set(outcome.failed.values()) == {
        "the source file changed after its pages were counted (its sha256 differs): submit it again"
    }


@pytest.mark.parametrize("loop", [False, True], ids=["missing page", "page-tree loop"])
def test_a_pdf_page_pdfium_cannot_load_fails_alone(runtime: Runtime, scan_dir: Path, loop: bool) -> None:
    """Its page fails with a reason; the PDF's good page and a scan read in the same group are stored."""
    scan = sorted(scan_dir.glob("*.jpg"))[0].read_bytes()
    ids = _batch(runtime, {"bad.pdf": with_unloadable_page(loop=loop), "label.jpg": scan})
    sent: list[list[str]] = []
    first = process_group(runtime, ids, send=sent.append)
    assert sorted(first.done) == sorted(ids)  # page 1 of the PDF and the scan
    (page_two,) = sent[0]
    outcome = process_group(runtime, [page_two, ids[1]], send=sent.append)
    assert outcome.failed == {page_two: "page 2 of the PDF cannot be loaded: Failed to load page."}
    assert outcome.skipped == [ids[1]]
