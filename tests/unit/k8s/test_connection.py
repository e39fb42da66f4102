"""What kopf logged in with becomes the official client's Configuration: the Authorization
header as kopf would send it, PEM data in private files, no proxy from the environment."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from flotilla.k8s.connection import Connection, authorize, configuration

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _header(connection: Connection, files: Path) -> str | None:
    settings = configuration(connection, files=files, pool_size=4)
    found: str | None = settings.auth_settings().get("BearerToken", {}).get("value")
    return found


def test_the_authorization_header_is_kopfs(tmp_path: Path) -> None:
    server = "https://api.example:6443"
    basic = base64.b64encode(b"ann:secret").decode()

    assert _header(Connection(server=server, token="t0k"), tmp_path) == "Bearer t0k"
    assert _header(Connection(server=server, token="t0k", scheme="Token"), tmp_path) == "Token t0k"
    both = Connection(server=server, username="ann", password="secret", token="ignored")
    assert _header(both, tmp_path) == f"Basic {basic}"
    assert _header(Connection(server=server), tmp_path) is None


def test_new_credentials_replace_the_old(tmp_path: Path) -> None:
    settings = configuration(
        Connection(server="https://a", token="old"), files=tmp_path, pool_size=4
    )

    authorize(settings, Connection(server="https://a", token="rotated"))

    assert settings.auth_settings()["BearerToken"]["value"] == "Bearer rotated"


def test_pem_data_goes_to_private_files_and_paths_stay(tmp_path: Path) -> None:
    connection = Connection(
        server="https://a",
        ca_data=base64.b64encode(PEM.encode()).decode(),  # as in a kubeconfig
        certificate_data=PEM,  # as some login handlers give it
        private_key_path="/var/run/key.pem",
    )

    settings = configuration(connection, files=tmp_path, pool_size=4)

    assert Path(settings.ssl_ca_cert).read_text() == PEM
    assert Path(settings.cert_file).read_text() == PEM
    assert Path(settings.ssl_ca_cert).stat().st_mode & 0o077 == 0
    assert settings.key_file == "/var/run/key.pem"
    assert settings.verify_ssl is True


def test_no_proxy_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")

    plain = configuration(Connection(server="https://a"), files=tmp_path, pool_size=4)
    named = Connection(server="https://a", proxy_url="http://named:3128")

    assert plain.proxy is None
    assert configuration(named, files=tmp_path, pool_size=4).proxy == "http://named:3128"
