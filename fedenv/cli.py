"""What every ``python -m`` command of the project does with bad input.

A command's ``main`` raises the exception that names the problem (a missing file, an invalid
config key or value): callers in Python catch it. Run from the shell through
:func:`run_command`, it becomes one line on stderr and exit status 2 (argparse's status for a
usage error) instead of a traceback; ``FEDENV_TRACEBACK=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: Bad input, as the commands report it (``ConfigError`` is a ``ValueError``).
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError)


def run_command(main: Callable[[], object]) -> None:
    """Call ``main()``; a :data:`USER_ERRORS` exception exits with status 2 and its message."""
    try:
        main()
    except USER_ERRORS as exc:
        if os.environ.get("FEDENV_TRACEBACK"):
            raise
        print(f"error: {exc}\n(FEDENV_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
