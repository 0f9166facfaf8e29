"""The ``xmatch`` command's entry point: :func:`xmatch.cli.main` with Ctrl-C handled end to end.

``main`` turns a Ctrl-C into ``xmatch: interrupted`` and exit 130 while a
command runs. This module covers the moments around it: the imports before
``main`` (about 0.15 s, when an impatient Ctrl-C gave a traceback) and the
interpreter's shutdown after it, when the outcome is decided and a Ctrl-C
must not print a traceback from a thread being joined or change the code.
It imports only the standard library and the exit codes before ``main``'s.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from coordinator.exit_codes import INTERRUPTED


def run() -> NoReturn:
    """Run the command line and exit with its code."""
    try:
        from xmatch.cli import main

        code = main()
    except KeyboardInterrupt:  # before main's own handler: during the imports
        print("xmatch: interrupted", file=sys.stderr)
        code = INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # decided: shutdown runs to the end
    sys.exit(code)
