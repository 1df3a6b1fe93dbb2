"""The image: deploy/entrypoint.sh rendered as the container runs it, the Dockerfile, and the worker command
and settings that compose and Kubernetes give it (they must agree)."""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    DEPLOY,
    DOCKERFILE,
    ENTRYPOINT,
    REPO,
    dockerfile_instructions,
    find,
    image_env,
    render_entrypoint,
    runtime_stage,
)

from donut_hole.queue import time_limits
from donut_hole.settings import DEFAULT_MODEL_PATH, Settings

Manifests = list[tuple[str, dict[str, Any]]]


# ---- entry point -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "argv"),
    [
        ([], {}, ["donut-hole", "api", "--host", "0.0.0.0", "--port", "8000"]),
        (
            ["api"],
            {"DONUT_HOLE_API_PORT": "9000"},
            ["donut-hole", "api", "--host", "0.0.0.0", "--port", "9000"],
        ),
        (["worker"], {}, ["donut-hole", "worker", "--concurrency", "1", "--queues", "cpu"]),
        (
            ["worker", "--loglevel", "INFO"],
            {"DONUT_HOLE_WORKER_CONCURRENCY": "3", "DONUT_HOLE_QUEUE": "gpu"},
            ["donut-hole", "worker", "--concurrency", "3", "--queues", "gpu", "--loglevel", "INFO"],
        ),
        (
            ["worker"],
            {"DONUT_HOLE_METRICS_PORT": "9100"},
            ["donut-hole", "worker", "--concurrency", "1", "--queues", "cpu", "--metrics-port", "9100"],
        ),
        (["migrate"], {}, ["donut-hole", "migrate"]),
        (["enqueue", "s3://scans/in box/"], {}, ["donut-hole", "enqueue", "s3://scans/in box/"]),
        (["donut-hole", "results", "7"], {}, ["donut-hole", "results", "7"]),
        (["purge", "--older-than", "90d"], {}, ["donut-hole", "purge", "--older-than", "90d"]),
        (["sh", "-c", "echo 'a b'"], {}, ["sh", "-c", "echo 'a b'"]),
    ],
)
def test_entrypoint_dispatches_each_role(args: list[str], env: dict[str, str], argv: list[str]) -> None:
    assert render_entrypoint(args, env).argv == argv


def test_entrypoint_dry_run_masks_secrets() -> None:
    rendered = render_entrypoint(
        ["worker"],
        {
            "DONUT_HOLE_BROKER_URL": "redis://:s3cret@redis:6379/0",
            "DONUT_HOLE_DATABASE_URL": "postgresql+psycopg://donut:s3cret@postgres:5432/donut",
            "DONUT_HOLE_API_KEYS": '["s3cret"]',
            "DONUT_HOLE_QUEUE": "cpu",
        },
    )
    assert rendered.settings == {
        "DONUT_HOLE_API_KEYS": "***",
        "DONUT_HOLE_BROKER_URL": "redis://:***@redis:6379/0",
        "DONUT_HOLE_DATABASE_URL": "postgresql+psycopg://donut:***@postgres:5432/donut",
        "DONUT_HOLE_QUEUE": "cpu",
    }


def test_entrypoint_execs_so_signals_reach_the_process(tmp_path: Path) -> None:
    """The shell that starts the entry point and the final donut-hole process are one process (exec)."""
    fake = tmp_path / "donut-hole"
    fake.write_text('#!/bin/sh\necho "pid=$$ args=$*"\nexit 7\n')
    fake.chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", f'echo "pid=$$"; exec bash {shlex.quote(str(ENTRYPOINT))} worker'],
        env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "DONUT_HOLE_QUEUE": "cpu"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    shell, worker = result.stdout.splitlines()
    assert worker == f"{shell} args=worker --concurrency 1 --queues cpu"
    assert result.returncode == 7  # the exit status is the process's own


def test_entrypoint_is_executable_and_strict() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert "set -euo pipefail" in ENTRYPOINT.read_text()
    assert ENTRYPOINT.read_text().rstrip().endswith('exec "$@"')


# ---- the worker as compose and Kubernetes run it -----------------------------------------------------------


def compose_worker_env(compose_config: dict[str, Any]) -> dict[str, str]:
    return {**image_env(), **compose_config["services"]["worker"]["environment"]}


def k8s_container_env(manifests: Manifests, deployment: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: image ENV < envFrom (in order) < env."""
    doc = find(manifests, "Deployment", deployment)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    env = dict(image_env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(find(manifests, "Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def k8s_args(manifests: Manifests, deployment: str) -> list[str]:
    (container,) = find(manifests, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert "command" not in container, "the image's ENTRYPOINT must stay in charge"
    return container["args"]


def effective_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The real Settings class reading exactly ``env`` (fails on a value the service would reject)."""
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("DONUT_HOLE_"):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


def test_worker_command_agrees_between_compose_and_kubernetes(
    compose_config: dict[str, Any], manifests: Manifests
) -> None:
    compose = render_entrypoint(
        compose_config["services"]["worker"]["command"], compose_worker_env(compose_config)
    )
    k8s = render_entrypoint(
        k8s_args(manifests, "donut-hole-worker-cpu"), k8s_container_env(manifests, "donut-hole-worker-cpu")
    )
    metrics = ["--metrics-port", "9100"]
    assert (
        compose.argv
        == k8s.argv
        == ["donut-hole", "worker", "--concurrency", "1", "--queues", "cpu", *metrics]
    )
    gpu = render_entrypoint(
        k8s_args(manifests, "donut-hole-worker-gpu"), k8s_container_env(manifests, "donut-hole-worker-gpu")
    )
    assert gpu.argv == ["donut-hole", "worker", "--concurrency", "1", "--queues", "gpu", *metrics]


def test_worker_settings_agree_between_compose_and_kubernetes(
    compose_config: dict[str, Any], manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = effective_settings(compose_worker_env(compose_config), monkeypatch)
    k8s = effective_settings(k8s_container_env(manifests, "donut-hole-worker-cpu"), monkeypatch)
    same = (
        "queue",
        "device",
        "torch_threads",
        "batch_size",
        "batch_wait_s",
        "model_path",
        "task_time_limit_s",
        "storage_url",
        "s3_region",
        "allowed_buckets",
        "log_level",
        "data_dir",
    )
    assert {f: getattr(compose, f) for f in same} == {f: getattr(k8s, f) for f in same}
    for settings in (compose, k8s):
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url.startswith("redis://") and settings.broker_url.endswith("/0")
        assert settings.storage_url.startswith("s3://")
        assert settings.model_path == Path("/app/models/donut-hole-small")
    compose_env = compose_worker_env(compose_config)
    k8s_env = k8s_container_env(manifests, "donut-hole-worker-cpu")
    for key in ("DONUT_HOLE_WORKER_CONCURRENCY", "DONUT_HOLE_METRICS_PORT"):
        assert compose_env[key] == k8s_env[key], key
    compose_grace = compose_config["services"]["worker"]["stop_grace_period"]
    assert compose_grace.endswith("s") and int(compose_grace[:-1]) > time_limits(compose)[1]
    gpu = effective_settings(k8s_container_env(manifests, "donut-hole-worker-gpu"), monkeypatch)
    assert (gpu.queue, gpu.device) == ("gpu", "cuda")


def test_api_settings_are_accepted(
    compose_config: dict[str, Any], manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose_env = {**image_env(), **compose_config["services"]["api"]["environment"]}
    for env in (compose_env, k8s_container_env(manifests, "donut-hole-api")):
        settings = effective_settings(env, monkeypatch)
        assert settings.api_keys and settings.allowed_buckets == ["scans"]
        assert render_entrypoint(["api"], env).argv == [
            "donut-hole",
            "api",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ]


# ---- Dockerfile --------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_a_non_root_runtime() -> None:
    stages = [args for ins, args in dockerfile_instructions() if ins == "FROM"]
    assert [s.split()[-1] for s in stages] == ["builder", "runtime"]
    runtime = runtime_stage()
    (user,) = [args for ins, args in runtime if ins == "USER"]
    assert int(user.split(":")[0]) > 0
    copies = [args for ins, args in runtime if ins == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)
    assert any(c.split()[0] == "models/" for c in copies), "the shipped model is baked in"
    (entrypoint,) = [args for ins, args in runtime if ins == "ENTRYPOINT"]
    assert entrypoint == '["tini", "--", "donut-hole-entrypoint"]'
    assert any(ins == "HEALTHCHECK" and "donut-hole-healthcheck" in args for ins, args in runtime)


def test_dockerfile_installs_the_cpu_torch_pinned_in_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    args = dict(a.split("=", 1) for ins, a in dockerfile_instructions() if ins == "ARG" and "=" in a)
    assert pin == f"torch=={args['TORCH_VERSION']}"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    text = DOCKERFILE.read_text()
    assert text.index('--index-url "${TORCH_INDEX_URL}"') < text.index("RUN pip install .")


def test_image_model_path_is_the_baked_in_student() -> None:
    env = image_env()
    assert env["DONUT_HOLE_MODEL_PATH"] == f"/app/models/{DEFAULT_MODEL_PATH.name}"
    copies = [args.split() for ins, args in runtime_stage() if ins == "COPY"]
    assert ["models/", "/app/models/"] in copies


def test_copied_sources_exist_and_are_not_ignored() -> None:
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = args.split()
        for source in sources:
            source = source.rstrip("/")
            assert not any(fnmatch.fnmatch(source, p.lstrip("*/")) for p in ignore), source
            assert (REPO / source).exists(), source  # models/ too: a fresh clone has models/README.md
    student = f"models/{DEFAULT_MODEL_PATH.name}"
    assert not any(fnmatch.fnmatch(student, p) for p in ignore), "the served student must reach the image"
    assert "models/teacher-small" in ignore  # the teacher is not served


# ---- health check ------------------------------------------------------------------------------------------


@pytest.fixture
def healthz_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def healthcheck(port: int) -> int:
    env = {"PATH": os.environ["PATH"], "DONUT_HOLE_API_PORT": str(port)}
    script = DEPLOY / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_passes_on_a_healthy_api(healthz_server: int) -> None:
    assert healthcheck(healthz_server) == 0


def test_healthcheck_fails_without_an_api(healthz_server: int) -> None:
    assert healthcheck(1) == 1  # nothing listens on port 1


# ---- the CLI the image runs --------------------------------------------------------------------------------


def test_cli_has_the_commands_and_options_the_image_runs() -> None:
    from typer.main import get_command

    from donut_hole.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    options = {
        "api": {"--host", "--port"},
        "worker": {"--concurrency", "--queues", "--metrics-port"},
        "migrate": set(),
        "enqueue": set(),
    }
    for name, wanted in options.items():
        assert name in commands, f"`donut-hole {name}` is missing (deploy/entrypoint.sh runs it)"
        declared = {opt for param in commands[name].params for opt in getattr(param, "opts", [])}
        assert wanted <= declared, f"donut-hole {name}: missing {sorted(wanted - declared)}"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["donut-hole"] == "donut_hole.cli:app"
    assert re.search(r"\bdonut-hole\b", ENTRYPOINT.read_text())
