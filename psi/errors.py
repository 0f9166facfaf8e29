"""Every exception xmatch raises on purpose.

One flat module (after ``cryptography.exceptions``) so that every layer can
import it: ``psi`` depends on nothing of ours, and everything else depends on
``psi``. Callers catch the exact failure; the CLI catches :class:`XmatchError`
once and prints :meth:`XmatchError.diagnostics` as one line.

Messages never contain an identity number or a payload value. Where a message
must point at a bad value it names the file, line and column instead.
"""

from __future__ import annotations


class XmatchError(Exception):
    """Base class: an expected failure with a one-line, privacy-safe cause."""

    def diagnostics(self) -> str:
        """The one line the CLI prints to stderr."""
        text = str(self) or type(self).__name__
        return " ".join(text.split())


class ProtocolError(XmatchError):
    """A malformed, out-of-order, wrong-round or wrong-size protocol message."""


class VerificationError(XmatchError):
    """A cryptographic check failed: a signature, a chain hash, a transcript."""


class InvalidKey(XmatchError):
    """Key material is malformed, of the wrong type, or cannot be decrypted."""


class AlreadyUsed(XmatchError):
    """A single-use secret or role object was used again (per-round secrets)."""


class InvalidIdentifier(XmatchError, ValueError):
    """An identity number that cannot be normalized (GB 11643).

    ``reason`` is a short code (``length``, ``check``, ``birth_date``,
    ``future_birth_date``, ``scientific_notation``, ``characters``, ``empty``)
    so that callers and tests can branch without parsing the message.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InputError(XmatchError):
    """Bad operator input: a file, a row, a column, a configuration key.

    The message already names the file, line and field.
    """


class ConfigError(InputError):
    """A configuration file is invalid (unknown key, missing file, bad address)."""


class PeerError(XmatchError):
    """A remote party failed, refused, or answered out of protocol.

    ``peer`` names the node or requester, ``reason`` says why.
    """

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class Refused(PeerError):
    """A node refused a request (authorization, purpose, query size, budget)."""
