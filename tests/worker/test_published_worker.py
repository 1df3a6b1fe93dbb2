"""A worker on a published DONUT folder: it checks its model before it starts, then reads and says so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from published import write_published
from worker_helpers import REPO_ROOT, Worker, free_port, wait_for_batch

from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import open_store
from donut_hole.worker.enqueue import submit_uris
from donut_hole.worker.ready import is_ready

CORD = "<s_cord-v2>"


@pytest.fixture(scope="module")
def cord(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_published(tmp_path_factory.mktemp("pub") / "donut-base-finetuned-cord-v2")


def _start_cli_worker(tmp_path: Path, model: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DONUT_HOLE_")}
    environ.update(
        DONUT_HOLE_DATA_DIR=str(tmp_path / "var"),
        DONUT_HOLE_MODEL_PATH=str(model),
        DONUT_HOLE_READY_FILE=str(tmp_path / "ready"),
        **env,
    )
    command = [sys.executable, "-m", "donut_hole", "worker", "--concurrency", "1"]
    return subprocess.run(command, cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("folder", "env", "says"),
    [
        ("empty", {}, "config.json is missing"),
        ("cord", {}, "--task-prompt"),
        ("cord", {"DONUT_HOLE_TASK_PROMPT": "<s_nope>"}, "<s_nope>"),
        ("cord", {"DONUT_HOLE_TASK_PROMPT": CORD, "DONUT_HOLE_PRECISION": "fp8"}, "DONUT_HOLE_PRECISION"),
    ],
)
@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_the_worker_refuses_to_start_on_a_model_it_cannot_use(tmp_path, cord, folder, env, says):
    model = cord if folder == "cord" else tmp_path / "empty"
    model.mkdir(exist_ok=True)
    result = _start_cli_worker(tmp_path, model, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ready").exists()


@pytest.mark.services
def test_a_worker_reads_a_published_cord_folder_and_says_when_it_is_ready(
    pipeline_settings: Settings, cord: Path, scan_dir: Path, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(update={"model_path": cord, "max_new_tokens": 4})
    ready = tmp_path / "ready"
    worker = Worker(
        settings,
        tmp_path / "worker.log",
        metrics_port=free_port(),
        DONUT_HOLE_TASK_PROMPT=CORD,
        DONUT_HOLE_READY_FILE=str(ready),
    )
    try:
        deadline = time.monotonic() + 90
        while not is_ready(ready)[0]:
            assert worker.process.poll() is None, worker.log_tail()
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        store = open_store(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
        prefix = f"cord-{uuid.uuid4().hex[:6]}"
        uris = [store.put(f"{prefix}/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:4]]
        with Services(settings) as services:
            batch_id = submit_uris(services, uris=uris, source="test")
        counts = wait_for_batch(settings, batch_id, worker=worker)
        assert counts["done"] == 4, worker.log_tail()
        assert '"task_prompt": "<s_cord-v2>"' in ready.read_text().replace("'", '"')
        info = f'donut_hole_model_info{{density="1",device="cpu",name="{cord.name}",precision="fp32"}}'
        assert worker.metrics()[info] == 1.0
        assert (
            subprocess.run(
                [sys.executable, "-m", "donut_hole.worker.ready"],
                env={**os.environ, "DONUT_HOLE_READY_FILE": str(ready)},
                check=False,
            ).returncode
            == 0
        )
    finally:
        worker.stop()
    assert not ready.exists()  # removed at shutdown
