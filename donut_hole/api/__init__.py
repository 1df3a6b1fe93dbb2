"""The HTTP API (FastAPI): queue scans, follow batches, read and search extracted fields.

- :mod:`.main`: ``create_app(settings)``, which only wires the parts below.
- :mod:`.deps`: settings, a database session per request, the bearer API-key check.
- :mod:`.schemas`: request and response bodies; :mod:`.queries`: reads beyond the repository.
- :mod:`.routes`: ``batches``, ``documents``, ``search``, ``health`` (``/healthz``, ``/metrics``).
- :mod:`.images`, :mod:`.limits`, :mod:`.metrics`, :mod:`.errors`: content sniffing, body-size limits,
  Prometheus metrics, and HTTP answers to the lower layers' typed errors.
"""

from donut_hole.api.main import create_app

__all__ = ["create_app"]
