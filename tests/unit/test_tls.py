"""The per-job PKI and the client's trust: the serving certificate verifies against its CA
and names the Service, and a client that trusts another CA stops at once, saying why."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flotilla.fl.certs import make_tls, service_dns_names
from flotilla.fl.client.transport import AggregatorConnection, AggregatorUntrusted, Backoff
from flotilla.fl.tls import TlsConfigError, client_context, server_context
from flotilla.local.tls import write_local_tls

NAMES = service_dns_names("digits-aggregator", "ml")


def test_the_serving_certificate_is_signed_by_the_ca_and_names_the_service() -> None:
    material = make_tls(common_name="digits-aggregator", dns_names=NAMES)
    cert = x509.load_pem_x509_certificate(material.cert.encode())
    ca = x509.load_pem_x509_certificate(material.ca.encode())

    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "digits-aggregator",
        "digits-aggregator.ml",
        "digits-aggregator.ml.svc",
        "digits-aggregator.ml.svc.cluster.local",
    ]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_a_local_run_gets_a_certificate_for_127_0_0_1_and_a_private_key(tmp_path: Path) -> None:
    tls = write_local_tls(tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert tls.key.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS server answering {} to everything, with the local run's certificate."""
    tls = write_local_tls(tmp_path / "server")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = server_context(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tls.ca
    finally:
        server.shutdown()
        server.server_close()


def test_a_client_that_trusts_the_ca_gets_its_answer(https_server: tuple[str, Path]) -> None:
    url, ca = https_server
    conn = AggregatorConnection(url, "t" * 32, ssl_context=client_context(ca_file=ca))
    assert conn.get_json("/v1/status") == {}
    conn.close()


def test_a_client_that_trusts_another_ca_stops_at_once_saying_why(
    https_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = https_server
    other = write_local_tls(tmp_path / "other")
    conn = AggregatorConnection(
        url,
        "t" * 32,
        ssl_context=client_context(ca_file=other.ca),
        backoff=Backoff(give_up_after=60),  # not retried: it would fail the same way
    )

    with pytest.raises(AggregatorUntrusted, match="does not verify against this client's CA"):
        conn.get_json("/v1/status")


def test_a_ca_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=str(bad)):
        client_context(ca_file=bad)
