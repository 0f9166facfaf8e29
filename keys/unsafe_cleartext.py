"""WARNING: cleartext private key export. Read this before importing it.

Everything here turns a key handle into unencrypted private key bytes. The only
legitimate caller is gRPC credential construction (``grpc.ssl_server_credentials``
and ``grpc.ssl_channel_credentials`` take PEM private keys, not key objects), which
:class:`keys.handles.TlsMaterial` does for you. Never write these bytes to a file,
a log, a message or an exception, and never keep them longer than the call that
needs them. Audit signing keys have no cleartext export at all.
"""

from __future__ import annotations

from keys.handles import SecretKeyAccess, TlsMaterial

#: the access token for cleartext export (Tink's ``InsecureSecretKeyAccess.get()``)
INSECURE_SECRET_KEY_ACCESS = SecretKeyAccess()


def tls_private_key_pem(material: TlsMaterial) -> bytes:
    """The TLS private key of ``material`` as unencrypted PKCS#8 PEM, in memory only."""
    return material.private_key_pem(INSECURE_SECRET_KEY_ACCESS)
