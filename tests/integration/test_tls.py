"""TLS between clients and the aggregator, with real processes on 127.0.0.1: a local run is
HTTPS by default; a client that trusts another CA, or dials plain HTTP, gets a clear error
and the aggregator serves on; an aggregator will not serve plain HTTP unless the spec says so."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flotilla.local.tls import write_local_tls
from tests.integration.harness import Cluster, child_env, cluster, flotilla, write_job

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b"]
TLS_ON: dict[str, Any] = {"security": {"tls": {"mode": "operator"}}}


def test_a_local_run_speaks_tls_by_default(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2, overrides=TLS_ON
    )
    state = tmp_path / "state"

    result = subprocess.run(
        flotilla("run", str(job), "--state-dir", str(state), "--no-tracking"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "listening on https://127.0.0.1:" in (state / "logs" / "aggregator.log").read_text()
    summary = json.loads((state / "summary.json").read_text())
    assert [r["clientsAnswered"] for r in summary["history"]] == [2, 2]
    assert stat.S_IMODE((state / "tls" / "tls.key").stat().st_mode) == 0o600


def _exited(running: Cluster, site: str, timeout: float = 60) -> tuple[int, str]:
    code = running.clients[site].wait(timeout=timeout)
    return code, running.log(site)


def test_a_client_that_trusts_another_ca_is_refused_and_the_aggregator_serves_on(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = write_job(
        tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2, overrides=TLS_ON
    )
    other = write_local_tls(tmp_path / "other-ca")
    with cluster(tmp_path, job, SITES) as running:
        running.start_aggregator()
        running.start_client("site-a", "--ca-file", str(other.ca))

        code, log = _exited(running, "site-a")

        assert code == 1
        assert "its TLS certificate does not verify against this client's CA" in log
        assert "Traceback" not in log
        status = running.status()
        assert status is not None and status["phase"] != "failed"  # still serving
        assert running.aggregator is not None and running.aggregator.poll() is None


def test_plain_http_to_a_tls_aggregator_fails_with_a_hint(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2, overrides=TLS_ON
    )
    with cluster(tmp_path, job, SITES) as running:
        running.start_aggregator()
        plain = f"http://127.0.0.1:{running.port}"
        running.start_client("site-a", "--give-up-after", "2", via=plain)

        code, log = _exited(running, "site-a")

        assert code == 1
        assert "does the aggregator serve HTTPS?" in log
        assert running.status() is not None


def test_the_aggregator_serves_plain_http_only_when_the_spec_says_so(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = write_job(
        tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2, overrides=TLS_ON
    )
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({s: f"token-{s}-0123456789abcdef" for s in SITES}))
    command = ["aggregator", "--job", str(job), "--tokens-file", str(tokens), "--port", "0"]

    result = subprocess.run(
        flotilla(*command, "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )

    assert result.returncode == 2
    assert "spec.security.tls.mode is 'operator'" in result.stderr
    assert "--tls-cert" in result.stderr


def test_a_token_used_for_another_site_is_refused_as_wrong_site(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = write_job(
        tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2, overrides=TLS_ON
    )
    with cluster(tmp_path, job, SITES) as running:
        running.start_aggregator()
        # site-a's token, claiming to be site-b.
        running.start_client("site-a", env={"FLOTILLA_SITE": "site-b"})

        code, log = _exited(running, "site-a")

        assert code == 1
        assert "403 wrong_site" in log
