"""The connection kopf logged in with, as the official client's Configuration: server, TLS
(urllib3 reads certificates and keys only from files), credentials, no proxy from the
environment (kopf takes none either)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    scheme: str | None = None  # of the Authorization header; Bearer by default
    username: str | None = None
    password: str | None = None
    ca_path: str | None = None
    ca_data: str | None = None  # PEM, or base64 PEM as in a kubeconfig
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: str | None = None
    private_key_path: str | None = None
    private_key_data: str | None = None
    proxy_url: str | None = None


Login = Callable[[], Connection | None]


def configuration(
    connection: Connection, *, files: Path, pool_size: int
) -> k8s_client.Configuration:
    """`files`: a private directory for PEM data; `pool_size`: connections kept open."""
    settings = k8s_client.Configuration(host=connection.server.rstrip("/"))
    settings.proxy = connection.proxy_url  # not the environment's: as kopf does
    settings.no_proxy = None
    settings.connection_pool_maxsize = pool_size
    settings.retries = 0  # the reconcile retries, with its backoff (failures.py)
    settings.verify_ssl = not connection.insecure
    settings.ssl_ca_cert = _pem(files, "ca.crt", connection.ca_path, connection.ca_data)
    settings.cert_file = _pem(
        files, "client.crt", connection.certificate_path, connection.certificate_data
    )
    settings.key_file = _pem(
        files, "client.key", connection.private_key_path, connection.private_key_data
    )
    authorize(settings, connection)
    return settings


def authorize(configuration: k8s_client.Configuration, connection: Connection) -> None:
    """The Authorization header, as kopf builds it (ConnectionInfo.as_http_headers)."""
    configuration.api_key.pop("BearerToken", None)
    if connection.username and connection.password:
        basic = f"{connection.username}:{connection.password}".encode()
        configuration.api_key["BearerToken"] = base64.b64encode(basic).decode()
        configuration.api_key_prefix["BearerToken"] = "Basic"
    elif connection.token:
        configuration.api_key["BearerToken"] = connection.token
        configuration.api_key_prefix["BearerToken"] = connection.scheme or "Bearer"


def _pem(files: Path, name: str, path: str | None, data: str | None) -> str | None:
    """A file for urllib3, which reads certificates and keys only from files."""
    if not data:
        return path
    target = files / name
    target.write_bytes(data.encode() if data.startswith("-----BEGIN ") else base64.b64decode(data))
    target.chmod(0o600)
    return str(target)
