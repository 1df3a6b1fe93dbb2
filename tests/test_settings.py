import pytest

from donut_hole.settings import Settings, SettingsError, get_settings


def test_embedded_defaults_live_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DONUT_HOLE_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'donut_hole.sqlite3'}"
    assert s.broker_url.startswith("sqla+sqlite:///")
    assert s.storage_url == str(tmp_path / "store")
    assert s.model_path.name == "donut-hole-small"


def test_environment_overrides_and_lists(monkeypatch):
    monkeypatch.setenv("DONUT_HOLE_DATABASE_URL", "postgresql+psycopg://u@localhost/db")
    monkeypatch.setenv("DONUT_HOLE_API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("DONUT_HOLE_LOG_LEVEL", "debug")
    s = Settings()
    assert s.database_url.startswith("postgresql")
    assert s.api_keys == ["k1", "k2"]
    assert s.log_level == "DEBUG"


def test_bad_values_fail_fast_naming_the_variable(monkeypatch):
    get_settings.cache_clear()
    monkeypatch.setenv("DONUT_HOLE_BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match="DONUT_HOLE_BATCH_SIZE"):
        get_settings()
    get_settings.cache_clear()
    monkeypatch.delenv("DONUT_HOLE_BATCH_SIZE")
    monkeypatch.setenv("DONUT_HOLE_DATABASE_URL", "mysql://x")
    with pytest.raises(SettingsError, match="sqlite or postgresql"):
        get_settings()
    get_settings.cache_clear()


def test_the_configuration_reference_is_current() -> None:
    """docs/configuration.md is what ``python -m donut_hole.settings`` writes: every setting, described."""
    from donut_hole.settings import REPO_ROOT, reference_markdown

    written = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == reference_markdown(), "stale: run python -m donut_hole.settings > docs/configuration.md"
    assert "|  |" not in written  # every setting has a description
    assert "/work/" not in written and "/root/" not in written  # no machine's paths
