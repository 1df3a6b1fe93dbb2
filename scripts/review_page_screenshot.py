"""The README's picture of the review page: one held-out scan read by the shipped student, waiting for
review, in headless Chromium.

    .venv/bin/python scripts/review_page_screenshot.py runs/val-pages/000011.jpg docs/images/review-page.png
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from donut_hole.api import create_app
from donut_hole.db import migrate, repository, session_scope
from donut_hole.settings import Settings
from donut_hole.storage import open_store
from donut_hole.worker.process import process_group
from donut_hole.worker.runtime import Runtime

KEY = "screenshot-reviewer-key-0123456789"


def main(scan: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), reviewer_keys=[f"ana:{KEY}"], review_threshold=0.999)
        migrate.upgrade(settings.database_url)
        uri = open_store(settings.storage_url).put(f"scans/{scan.name}", scan.read_bytes())
        runtime = Runtime(settings)
        with session_scope(runtime.sessions) as session:
            document_id = repository.create_batch(session, source="screenshot", uris=[uri]).documents[0].id
        process_group(runtime, [document_id])
        runtime.close()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=8765, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            driver.get("http://127.0.0.1:8765/review")
            driver.find_element(By.ID, "key").send_keys(KEY)
            driver.find_element(By.ID, "start").click()
            WebDriverWait(driver, 30).until(
                ec.visibility_of_element_located((By.CSS_SELECTOR, "#boxes .box"))
            )
            time.sleep(0.5)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
            server.should_exit = True


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
