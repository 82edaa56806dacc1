"""The images' HEALTHCHECK: exit 0 when the server's readiness endpoint answers 200, 1 otherwise (refused,
timed out, any other status). Docker reads exit 1 as unhealthy; no traceback, one line on stderr.

    python healthcheck.py [URL]     default http://127.0.0.1:8000/v2/health/ready
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

READY_URL = "http://127.0.0.1:8000/v2/health/ready"
TIMEOUT_S = 3.0


def main(argv: list[str]) -> int:
    url = argv[0] if argv else READY_URL
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # a 4xx/5xx answer, e.g. 503 while models load
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        print(f"unhealthy: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
