"""docker-compose.yml, checked by a real compose parser (Debian's docker-compose, offline) and read back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploy_helpers import COMPOSE_FILE, COMPOSE_SECRETS, REPO, run_compose

APP_SERVICES = ("migrate", "api", "worker")


def test_compose_file_passes_the_compose_parser(empty_env_file: Path) -> None:
    result = run_compose(["config", "-q"], env=COMPOSE_SECRETS, env_file=empty_env_file)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_its_secrets(empty_env_file: Path) -> None:
    result = run_compose(["config", "-q"], env={}, env_file=empty_env_file)
    assert result.returncode != 0
    assert "set " in result.stderr, result.stderr  # the ${VAR:?set VAR} message names the variable


def test_every_secret_is_required_and_never_written_in_the_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name, dummy in COMPOSE_SECRETS.items():
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not used"
        assert all(u.startswith(":?") for u in uses), f"{name} must always be ${{{name}:?...}}"
        assert dummy not in text


def test_app_services_share_one_image_and_differ_by_command(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    images = {services[s]["image"] for s in APP_SERVICES}
    assert len(images) == 1
    assert services["migrate"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert [services[s]["command"] for s in APP_SERVICES] == [["migrate"], ["api"], ["worker"]]


def test_worker_can_be_scaled(compose_config: dict[str, Any]) -> None:
    worker = compose_config["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # `--scale worker=4` would collide on a fixed host port


def test_migrations_run_before_the_api_and_workers(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name in ("redis", "postgres", "minio", "api"):
        assert services[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
    # The image's HEALTHCHECK probes the API port; the migration turns it off, the worker has its own.
    assert services["migrate"]["healthcheck"]["test"] == ["NONE"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "donut_hole.worker.ready"]


def test_data_lives_in_named_volumes(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    declared = set(compose_config["volumes"])
    for name, target in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        sources = {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == target}
        assert sources and sources <= declared, name


def test_services_talk_to_each_other_by_service_name(compose_config: dict[str, Any]) -> None:
    env = compose_config["services"]["worker"]["environment"]
    assert env["DONUT_HOLE_DATABASE_URL"].startswith("postgresql+psycopg://donut:")
    assert env["DONUT_HOLE_DATABASE_URL"].endswith("@postgres:5432/donut")
    assert env["DONUT_HOLE_BROKER_URL"] == f"redis://:{COMPOSE_SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert env["DONUT_HOLE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["DONUT_HOLE_STORAGE_URL"] == "s3://scans"
    flower = compose_config["services"]["flower"]["environment"]
    assert flower["CELERY_BROKER_URL"] == env["DONUT_HOLE_BROKER_URL"]


def test_env_example_lists_every_variable_the_compose_file_reads() -> None:
    lines = COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used <= listed, f"missing from .env.example: {sorted(used - listed)}"
    for name in COMPOSE_SECRETS:
        line = re.search(rf"^{name}=(.*)$", example, flags=re.MULTILINE)
        assert line and "CHANGE-ME" in line.group(1), f"{name} needs a CHANGE-ME example value"
