"""What the node and the coordinator processes share, beyond the protocol.

``runtime.config``: the base of ``node.toml`` and ``coordinator.toml`` (TOML
reading, strict models, path resolution, one-line errors). ``runtime.signals``:
starting worker processes with Ctrl-C held back. ``runtime.csv_faults``: the
line of a malformed CSV row, worded the same for rosters and match sets.
``runtime.text``: control and format characters refused in the text we send,
replaced in the text we print from the other side.
Uses only :mod:`psi`, so both ``nodes`` and ``coordinator`` may import it
(tests/test_architecture.py).
"""
