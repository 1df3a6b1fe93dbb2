"""``python -m donut_hole``: the ``donut-hole`` command, for machines where the package is on
``PYTHONPATH`` but not installed (no console script), such as the GPU machine of the ``device`` tool."""

from donut_hole.cli import app

app(prog_name="donut-hole")
