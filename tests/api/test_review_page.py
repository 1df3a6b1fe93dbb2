"""The review page in a real browser: Debian's headless Chromium driven through its ChromeDriver.

The API runs in uvicorn on loopback; the test signs in with a reviewer key, sees the scan with its field
boxes and the fields low confidence first (a value holding markup shown as text), corrects a field with
the keyboard, approves, and finds the correction in the database. ``DONUT_HOLE_REVIEW_SCREENSHOT=path``
also saves a screenshot of the page (the README's).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from test_api_reviews import HOSTILE, REVIEWER_KEY, waiting_document

from donut_hole.api import create_app
from donut_hole.db import Document, DocumentStatus, Extraction, session_scope
from donut_hole.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def review_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"reviewer_keys": [f"ana:{REVIEWER_KEY}"]})


@pytest.fixture(scope="module")
def server(review_settings: Settings) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(review_settings), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the API did not start under uvicorn", pytrace=False)
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the distribution's packages; a missing browser fails the test loudly."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(
            "Chromium and ChromeDriver are needed (apt-get install chromium chromium-driver; "
            "scripts/test_services.sh installs them)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _only_waiting(sessions: sessionmaker[Session], document_id: str) -> None:
    """Other tests' documents leave the review queue, so that the page opens this one."""
    with session_scope(sessions) as session:
        session.execute(
            update(Document)
            .where(Document.status == DocumentStatus.needs_review, Document.id != document_id)
            .values(status=DocumentStatus.done)
        )


def test_a_reviewer_corrects_a_field_in_the_browser(
    server: str, browser: Any, review_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    document_id = waiting_document(review_settings, sessions, value=HOSTILE)
    _only_waiting(sessions, document_id)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{server}/review")
    browser.find_element(By.ID, "key").send_keys(REVIEWER_KEY)
    browser.find_element(By.ID, "start").click()
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#fields tbody tr")))
    assert not browser.find_element(By.ID, "login").is_displayed()  # the key form gives way to the work
    wait.until(
        lambda d: d.execute_script(
            "const i = document.getElementById('scan'); return i.complete && i.naturalWidth > 0"
        )
    )

    # the fields, least sure first; the hostile value is text in its input, not markup in the page
    names = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#fields tbody th")]
    assert names == ["carrier", "weight"]
    inputs = browser.find_elements(By.CSS_SELECTOR, "#fields tbody input")
    assert inputs[0].get_attribute("value") == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "#fields script, #boxes script") == []
    assert browser.execute_script("return document.scripts.length") == 1
    assert browser.find_element(By.ID, "queue").text == "1 waiting"

    # the carrier's box is drawn where the reading says, over the scan, and outlined while its field is edited
    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes .box")
    assert len(boxes) == 1
    scan = browser.find_element(By.ID, "scan").rect
    box = boxes[0].rect
    assert box["x"] - scan["x"] == pytest.approx(0.1 * scan["width"], abs=3)
    assert box["width"] == pytest.approx(0.3 * scan["width"], abs=4)
    assert "active" in boxes[0].get_attribute("class")  # the first field has the focus
    if os.environ.get("DONUT_HOLE_REVIEW_SCREENSHOT"):
        browser.save_screenshot(os.environ["DONUT_HOLE_REVIEW_SCREENSHOT"])

    # correct it with the keyboard: select all, type, Ctrl+Enter approves and goes on
    inputs[0].send_keys(Keys.CONTROL, "a")
    inputs[0].send_keys("UPS")
    inputs[0].send_keys(Keys.CONTROL, Keys.ENTER)
    wait.until(ec.visibility_of_element_located((By.ID, "empty")))

    with session_scope(sessions) as session:
        rows = session.scalars(select(Extraction).where(Extraction.document_id == document_id)).all()
        review = next(e for e in rows if e.source == "reviewer")
        assert review.reviewer == "ana" and review.data == {"carrier": "UPS", "weight": "2 kg"}
        model = next(e for e in rows if e.source == "model")
        assert model.data["carrier"] == HOSTILE  # the model's reading is kept
        document = session.get(Document, document_id)
        assert document is not None and document.status == DocumentStatus.done


def test_the_page_fits_a_tablet_and_refuses_a_wrong_key(
    server: str, browser: Any, review_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.set_window_size(820, 1180)
    try:
        browser.get(f"{server}/review")
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{server}/review")
        browser.find_element(By.ID, "key").send_keys("not-a-key")
        browser.find_element(By.ID, "start").click()
        wait.until(lambda d: "not accepted" in d.find_element(By.ID, "status").text)

        document_id = waiting_document(review_settings, sessions)
        _only_waiting(sessions, document_id)
        key = browser.find_element(By.ID, "key")
        key.clear()
        key.send_keys(REVIEWER_KEY)
        browser.find_element(By.ID, "start").click()
        wait.until(ec.visibility_of_element_located((By.ID, "approve")))
        stage = browser.find_element(By.ID, "stage").rect
        panel = browser.find_element(By.ID, "panel").rect
        assert panel["y"] >= stage["y"] + stage["height"] - 1  # one column: the fields under the scan
        assert panel["width"] <= 820
        browser.find_element(By.ID, "approve").click()
        wait.until(ec.visibility_of_element_located((By.ID, "empty")))
    finally:
        browser.set_window_size(1280, 900)
    with session_scope(sessions) as session:
        document = session.get(Document, document_id)
        assert document is not None and document.status == DocumentStatus.done
