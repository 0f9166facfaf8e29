"""The ``xmatch`` command's entry point: :func:`xmatch.cli.main` with Ctrl-C handled end to end.

``main`` turns a Ctrl-C into ``xmatch: interrupted`` and exit 130 while a
command runs. This module covers the moments around it: the imports before
``main`` (about 0.15 s, when an impatient Ctrl-C gave a traceback) and the
interpreter's shutdown after it, when the outcome is decided and a Ctrl-C
must not print a traceback from a thread being joined or change the code.
It imports only the standard library and the exit codes before ``main``'s.

It also sets gRPC's log threshold before anything imports gRPC (see
:func:`quiet_grpc_core`): without it, gRPC's C core prints a raw line of its
own on stderr for every refused TLS handshake, beside the node's and the
coordinator's own one-line messages.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import MutableMapping
from typing import NoReturn

from coordinator.exit_codes import INTERRUPTED

#: gRPC's own log threshold unless the user set one: its C core logs through absl,
#: which gRPC Python never initialises, so every INFO line reached stderr (each
#: refused handshake: another CA, no certificate, plain text, a port scanner).
#: ERROR, not NONE: under NONE absl drops FATAL messages too, and gRPC aborting
#: without its reason would be a silent exit.
GRPC_VERBOSITY_DEFAULT = "ERROR"


def quiet_grpc_core(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``GRPC_VERBOSITY`` to :data:`GRPC_VERBOSITY_DEFAULT` where it is unset or empty.

    gRPC reads the variable once, when ``grpc`` is first imported, so this must
    run before that. A value the user set (``DEBUG``, ``INFO``,
    ``NONE``) is kept, so gRPC's log can still be turned on for debugging; an
    empty one counts as unset, as gRPC itself treats it. Processes the command
    starts (the demo's nodes) inherit the value.
    """
    if not environ.get("GRPC_VERBOSITY"):
        environ["GRPC_VERBOSITY"] = GRPC_VERBOSITY_DEFAULT


def run() -> NoReturn:
    """Run the command line and exit with its code."""
    quiet_grpc_core()
    try:
        from xmatch.cli import main

        code = main()
    except KeyboardInterrupt:  # before main's own handler: during the imports
        print("xmatch: interrupted", file=sys.stderr)
        code = INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # decided: shutdown runs to the end
    sys.exit(code)
