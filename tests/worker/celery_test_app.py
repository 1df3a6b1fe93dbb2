"""The pipeline's Celery app with a short Redis visibility timeout, for the worker-loss test.

``celery -A tests.worker.celery_test_app:celery_app worker`` (run from the repository root): a message whose
worker was killed comes back after ``TEST_VISIBILITY_TIMEOUT_S`` seconds instead of an hour, and idle
consumers look for such messages every second.
"""

import os

import donut_hole.worker.app  # noqa: F401  # the worker hooks, as a real worker has them
from donut_hole.queue import celery_config, make_celery
from donut_hole.settings import get_settings

_settings = get_settings()
_options = dict(celery_config(_settings)["broker_transport_options"])
_options.update(
    visibility_timeout=int(os.environ.get("TEST_VISIBILITY_TIMEOUT_S", "4")),
    unacked_restore_interval=1,
    unacked_restore_throttle=1,
)
celery_app = make_celery(_settings, overrides={"broker_transport_options": _options})
