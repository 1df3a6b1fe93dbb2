"""Pipeline commands of ``donut-hole`` (demo, worker, api, enqueue, results, migrate).

Registered on the main :data:`donut_hole.cli.app` when :mod:`donut_hole.cli` is imported.
"""

from __future__ import annotations

from donut_hole.cli import app  # noqa: F401
