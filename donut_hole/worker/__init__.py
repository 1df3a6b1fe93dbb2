"""The online half: Celery workers that read queued scans in batched forward passes and store the results.

- :mod:`.enqueue`: ``submit_uris`` / ``submit_prefix`` / ``submit_upload`` (rows first, then messages).
- :mod:`.app`: the Celery app from the settings (``make_celery``, ``celery_app``) and its delivery settings;
  :mod:`.broker`: the embedded SQLite broker, polled faster than kombu's default.
- :mod:`.tasks`: thin tasks (ids in, retries decided) over :mod:`.process`, the plain functions that fetch,
  decode, predict, validate and persist.
- :mod:`.runtime`: the per-process :class:`~donut_hole.services.Services` (engine, store, the worker's Celery
  app) and model; :mod:`.batching`: how documents are grouped;
  :mod:`.fields`: per-field confidences; :mod:`.metrics`: Prometheus (JSON logs: :mod:`donut_hole.logs`).

Importing this package is cheap; torch is imported when a worker process first needs the model.
"""
