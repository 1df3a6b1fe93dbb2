"""Fixtures for the deployment tests (helpers in deploy_helpers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import COMPOSE_SECRETS, load_manifests, run_compose


@pytest.fixture(scope="session")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def compose_config(empty_env_file: Path) -> dict[str, Any]:
    """The compose file after the compose parser validated and interpolated it (``docker-compose config``)."""
    result = run_compose(["config"], env=COMPOSE_SECRETS, env_file=empty_env_file)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="session")
def manifests() -> list[tuple[str, dict[str, Any]]]:
    return load_manifests()
