"""Small helpers shared by the command-line scripts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Errors that carry a message written for the user: print it, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, PermissionError)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Runs `main`; a user error prints `error: <message>` and exits 2 (RLVR_DEBUG=1 shows the traceback)."""
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get("RLVR_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
