"""Docker HEALTHCHECK: exit 0 when the server's liveness route answers 200, 1 otherwise.

Python rather than curl, which the slim base image does not ship; reads the same PORT as entrypoint.sh.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: GET {url} failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
