"""The ``donut-hole`` command (Typer): one module per group of commands, registered in :mod:`.main`.

- :mod:`.documents`: ``synth``; :mod:`.models`: ``evaluate``, ``predict``, ``ship``;
  :mod:`.compression`: ``train``, ``compress``; :mod:`.demo`: ``demo``;
  :mod:`.pipeline`: ``worker``, ``enqueue``, ``results``, ``migrate``, ``api``.
- :mod:`.common`: the consoles, :func:`~.common.fail` and the settings, shared by the command modules.

``donut-hole`` (the console script), ``python -m donut_hole`` and ``python -m donut_hole.cli`` all run
:data:`app`.
"""

from donut_hole.cli.main import app

__all__ = ["app"]
