"""What every command module shares: the consoles, a typed exit with a readable error, the settings."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from donut_hole.settings import Settings, SettingsError, get_settings, without_credentials

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (``raise fail(...)``)."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def load_settings() -> Settings:
    """The process settings; a bad ``DONUT_HOLE_*`` variable ends the command with its name."""
    try:
        return get_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from exc


def database_problem(settings: Settings, exc: Any) -> str:
    """A sentence for an ``OperationalError``: where the database is (no credentials) and what to check."""
    where = without_credentials(settings.database_url)
    return f"cannot use the database {where}: {exc.orig}; is it running, and migrated (donut-hole migrate)?"
