"""Container health check for the adl worker: exit 0 when GET /health answers {"status": "ok"}."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8765/health"


def main() -> int:
    """Probe the worker's /health endpoint (with the bearer token when one is set)."""
    request = urllib.request.Request(os.environ.get("ADL_WORKER_HEALTH_URL", DEFAULT_URL))
    token = os.environ.get("ADL_WORKER_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # No proxies: the probe must reach this container's loopback even if http_proxy is set.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            status = json.loads(response.read()).get("status")
    except (OSError, ValueError, AttributeError) as exc:  # HTTP/URL errors, timeouts, bad JSON
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != "ok":  # "stopping" while the worker shuts down
        print(f"unhealthy: status {status!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
