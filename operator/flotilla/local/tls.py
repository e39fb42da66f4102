"""A local run's TLS: a throwaway CA and the aggregator's certificate for 127.0.0.1 in the
run's state dir, so `flotilla run` speaks the same HTTPS as a cluster does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flotilla.fl.certs import make_tls


@dataclass(frozen=True)
class LocalTls:
    """Files of this run's throwaway CA and the aggregator's certificate for 127.0.0.1."""

    cert: Path
    key: Path
    ca: Path

    def aggregator_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def write_local_tls(directory: Path) -> LocalTls:
    """A new CA and serving certificate on every run: nothing outlives the run but files
    that only this user can read."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    material = make_tls(
        common_name="flotilla local aggregator",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    tls = LocalTls(cert=directory / "tls.crt", key=directory / "tls.key", ca=directory / "ca.crt")
    tls.key.unlink(missing_ok=True)
    tls.key.touch(mode=0o600)  # 0600 before the key is in it
    tls.key.write_text(material.key)
    tls.cert.write_text(material.cert)
    tls.ca.write_text(material.ca)
    return tls
