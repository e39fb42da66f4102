"""TLS for the link between clients and the aggregator, stdlib only (an edge client needs no
more): the server's context from its certificate and key, a client's from the CA it trusts.

TLS 1.2 at least; clients verify the chain and the host name they dial, always.
"""

from __future__ import annotations

import ssl
from pathlib import Path

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MIN_VERSION
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot load the TLS certificate {cert_file} with key {key_file}: {error}"
        ) from None
    return context


def client_context(*, ca_file: Path | None = None, ca_data: str | None = None) -> ssl.SSLContext:
    """Trust only the given CA (the job's), not the system's: the aggregator's certificate is
    the job's own, and no public CA should be able to stand in for it."""
    if (ca_file is None) == (ca_data is None):
        raise ValueError("give exactly one of ca_file and ca_data")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.minimum_version = MIN_VERSION
    try:
        context.load_verify_locations(cafile=ca_file, cadata=ca_data)
    except (OSError, ssl.SSLError) as error:
        where = ca_file if ca_file is not None else "the CA data"
        raise TlsConfigError(f"cannot load the CA certificate {where}: {error}") from None
    return context
