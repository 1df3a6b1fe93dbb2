"""``python -m donut_hole.cli``: the ``donut-hole`` command (``python -m donut_hole`` says the same)."""

from donut_hole.cli import app

app(prog_name="donut-hole")
