"""Fixtures of the pipeline tests: real Redis, PostgreSQL, moto S3 and ``celery worker`` subprocesses.

Nothing is mocked. Redis must run (``DONUT_HOLE_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/13``);
every test session uses its own queue names and purges them at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from worker_helpers import Worker, free_port, purge

from donut_hole.db import migrate
from donut_hole.settings import Settings

REDIS_URL = os.environ.get("DONUT_HOLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
KINDS = ["shipping_label", "bill_of_lading", "delivery_note"]
CALLBACK_SECRET = "callback-secret-for-tests"
API_KEY = "pipeline-test-key-" + "w" * 20


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis; fails (never skips) when it cannot be reached."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL}: {exc}\n"
            "Start it (docker compose up -d redis) or set DONUT_HOLE_TEST_REDIS_URL.",
            pytrace=False,
        )
    return REDIS_URL


@pytest.fixture(scope="session")
def scan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 synthetic scans of the three kinds (DONUT dataset folder)."""
    from donut_hole.documents.synth import generate

    return generate(KINDS, n=20, out=tmp_path_factory.mktemp("scans"), seed=3, progress=False)


def save_tiny_model(scan_dir: Path, out: Path, *, image_size: tuple[int, int]) -> Path:
    """An untrained tiny DONUT whose tokenizer knows the fields of ``scan_dir``, saved in ``out``."""
    from donut_hole.evaluation.dataset import read_dataset
    from donut_hole.model.build import new_model, save_model

    documents = [sample.gt_parse for sample in read_dataset(scan_dir)]
    model, processor = new_model("tiny", documents=documents, image_size=image_size)
    return save_model(model, processor, out)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, scan_dir: Path) -> Path:
    """An untrained tiny DONUT at 160x160 pixels: fast, and enough to exercise the whole pipeline."""
    return save_tiny_model(scan_dir, tmp_path_factory.mktemp("model") / "tiny", image_size=(160, 160))


@pytest.fixture(scope="session")
def pipeline_settings(
    postgres_url: str,
    redis_url: str,
    s3_server: str,
    s3_bucket: str,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """Settings for PostgreSQL (migrated), Redis, moto S3 and the tiny model, on a queue of this session."""
    migrate.upgrade(postgres_url)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("var"),
        database_url=postgres_url,
        broker_url=redis_url,
        storage_url=f"s3://{s3_bucket}/pipeline",
        s3_endpoint_url=s3_server,
        model_path=tiny_model,
        max_new_tokens=16,
        batch_size=4,
        batch_wait_s=0.2,
        torch_threads=1,
        max_retries=2,
        task_time_limit_s=120,
        queue=f"test-{uuid.uuid4().hex[:10]}",
        callback_secret=CALLBACK_SECRET,
        callback_allowed_urls=["127.0.0.1"],  # the tests' receivers, on any port
        callback_backoff_max_s=1.0,
        api_keys=[API_KEY],
    )
    yield settings
    purge(settings)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``start_worker(settings, app=..., concurrency=..., **env)``; every worker is stopped after the test."""
    workers: list[Worker] = []

    def start(
        settings: Settings, *, app: str = "donut_hole.worker.app:celery_app", concurrency: int = 1, **env: str
    ) -> Worker:
        worker = Worker(
            settings, tmp_path / f"worker-{len(workers)}.log", app=app, concurrency=concurrency, **env
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="module")
def shared_worker(pipeline_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``donut-hole worker`` (2 pool processes, metrics on ``worker.metrics_port``) on the session queue."""
    worker = Worker(
        pipeline_settings,
        tmp_path_factory.mktemp("logs") / "worker.log",
        concurrency=2,
        metrics_port=free_port(),
    )
    yield worker
    worker.stop()
