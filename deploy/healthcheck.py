#!/usr/bin/env python3
"""Container health check of the API role: exit 0 when GET /healthz answers 2xx within the timeout.

Standard library only (the slim image has no curl). Used by the image's HEALTHCHECK and by compose;
Kubernetes probes call /healthz directly.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("DONUT_HOLE_API_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"healthcheck: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
