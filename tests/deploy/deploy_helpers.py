"""Helpers for the deployment tests: the compose parser, the Kubernetes manifests, the Dockerfile, and the
entry point rendered in dry-run mode.

No Docker engine runs here. The validators are real and required: a missing one fails the tests (with the
command that installs it), it never skips them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"

# Dummy values for the ${VAR:?} secrets of docker-compose.yml.
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "test-pg-password",
    "REDIS_PASSWORD": "test-redis-password",
    "MINIO_ROOT_USER": "test-minio-user",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
    "DONUT_HOLE_API_KEYS": '["test-api-key"]',
    "FLOWER_BASIC_AUTH": "admin:test-flower-password",
}


def docker_compose_binary() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose (the offline compose parser) is not on PATH: "
            "`apt-get update && apt-get install -y docker-compose` "
            "(`make test` does this: scripts/test_services.sh)"
        )
    return path


def run_compose(args: list[str], *, env: dict[str, str], env_file: Path) -> subprocess.CompletedProcess[str]:
    """docker-compose ARGS on the repository's compose file, with only ``env`` as the variables it reads.

    ``--env-file`` points at an empty file so that a developer's ``.env`` never leaks into the test.
    """
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}}
    return subprocess.run(
        [docker_compose_binary(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every Kubernetes object in deploy/k8s (the kustomization file excluded)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def find(manifests: list[tuple[str, dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(matches)}"
    return matches[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    """The ENV of the runtime stage, without values that refer to other variables (PATH=...:$PATH)."""
    env: dict[str, str] = {}
    for instruction, args in runtime_stage():
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                if "$" not in value:
                    env[key] = value
    return env


@dataclass(frozen=True)
class Rendered:
    argv: list[str]
    settings: dict[str, str]  # DONUT_HOLE_* as printed (secrets masked)


def render_entrypoint(args: list[str], env: dict[str, str]) -> Rendered:
    """What deploy/entrypoint.sh would exec for ``args`` in environment ``env`` (DONUT_HOLE_DRY_RUN=1)."""
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={"PATH": os.environ["PATH"], **env, "DONUT_HOLE_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    words = shlex.split(first)
    assert words[0] == "exec", first
    settings = dict(line.split("=", 1) for line in rest)
    return Rendered(argv=words[1:], settings=settings)
