"""Real processes on 127.0.0.1 for the integration tests: aggregator, clients, status probes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from flotilla.fl.tls import client_context
from flotilla.local.tls import write_local_tls

STARTUP_SECONDS = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_job(
    path: Path,
    *,
    data_dir: Path,
    sites: list[str],
    rounds: int,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """A digits job over the example data in `data_dir`, with spec fields overridden."""
    spec: dict[str, Any] = {
        "rounds": rounds,
        "labels": [str(d) for d in range(10)],
        "model": {"name": "cnn-small", "input": {"channels": 1, "height": 8, "width": 8}},
        "sites": [{"name": s, "data": {"cvatExport": {"path": str(data_dir / s)}}} for s in sites],
        "evaluation": {"testData": {"cvatExport": {"path": str(data_dir / "test")}}},
        "clients": {"minClients": len(sites), "roundDeadlineSeconds": 60, "joinGraceSeconds": 5},
        "training": {"localEpochs": 3, "batchSize": 16, "learningRate": 0.05, "momentum": 0.9},
        "strategy": {"name": "fedavg"},
        # Plain HTTP unless a test asks for TLS: most tests are about rounds, and the privacy
        # test reads every byte on the wire. tests/integration/test_tls.py covers TLS.
        "security": {"tls": {"mode": "disabled"}},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = spec[key] | value
        else:
            spec[key] = value
    document = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "itest"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def flotilla(*args: str) -> list[str]:
    return [sys.executable, "-m", "flotilla", *args]


def run_tracked(
    root: Path, job: Path, tracking_uri: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`flotilla run JOB` with its state and summary under `root`, recording in MLflow at
    `tracking_uri`; asserts it succeeded. Returns the process and its summary."""
    result = subprocess.run(
        flotilla(
            "run",
            str(job),
            "--state-dir",
            str(root / "state"),
            "--summary-json",
            str(root / "summary.json"),
            "--tracking-uri",
            tracking_uri,
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads((root / "summary.json").read_text())
    return result, summary


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "FLOTILLA_LOG_LEVEL": "INFO", **extra}


class Cluster:
    """An aggregator and its clients as processes, with their logs under `root`."""

    def __init__(self, root: Path, job: Path, sites: list[str]) -> None:
        self.root = root
        self.job = job
        self.sites = sites
        self.tokens = {site: f"token-{site}-0123456789abcdef" for site in sites}
        self.tokens_path = root / "tokens.json"
        self.tokens_path.write_text(json.dumps(self.tokens))
        self.state_dir = root / "state"
        self.port = free_port()
        document = yaml.safe_load(job.read_text())
        mode = document["spec"].get("security", {}).get("tls", {}).get("mode", "operator")
        self.tls = write_local_tls(root / "tls") if mode != "disabled" else None
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.aggregator: subprocess.Popen[bytes] | None = None
        self.clients: dict[str, subprocess.Popen[bytes]] = {}

    def start_aggregator(self, *extra: str) -> None:
        log = open(self.root / "aggregator.log", "ab")  # noqa: SIM115
        self.aggregator = subprocess.Popen(
            flotilla(
                "aggregator",
                "--job",
                str(self.job),
                "--tokens-file",
                str(self.tokens_path),
                "--state-dir",
                str(self.state_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--exit-when-done",
                *(self.tls.aggregator_args() if self.tls else []),
                *extra,
            ),
            stdout=log,
            stderr=log,
            env=child_env(),
        )
        self.wait_for(lambda s: True, timeout=STARTUP_SECONDS)

    def start_client(
        self,
        site: str,
        *extra: str,
        via: str | None = None,
        env: dict[str, str] | None = None,
        program: Sequence[str] | None = None,
    ) -> None:
        """`via`: dial this URL instead of the aggregator's (a recording proxy). `program`:
        the command that stands in for `flotilla client` (a test's own client), given the
        same --aggregator, --ca-file, --threads and --device flags."""
        log = open(self.root / f"{site}.log", "ab")  # noqa: SIM115
        url = via or self.url
        trust = ["--ca-file", str(self.tls.ca)] if self.tls and url.startswith("https") else []
        command = [*(program or flotilla("client")), "--aggregator", url, *trust]
        self.clients[site] = subprocess.Popen(
            [*command, "--threads", "1", "--device", "cpu", *extra],
            stdout=log,
            stderr=log,
            env=child_env(FLOTILLA_TOKEN=self.tokens[site], **(env or {})),
        )

    def status(self, *, after: int = -1, wait: float = 0.0) -> dict[str, Any] | None:
        url = f"{self.url}/v1/status?after={after}&wait={wait}"
        try:
            context = client_context(ca_file=self.tls.ca) if self.tls else None
            with urllib.request.urlopen(url, timeout=wait + 10, context=context) as response:
                status: dict[str, Any] = json.loads(response.read())
                return status
        except OSError:
            return None

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> dict[str, Any]:
        """Long-poll /v1/status until `predicate` holds; no fixed sleeps."""
        end = time.monotonic() + timeout
        seq, last = -1, None
        while time.monotonic() < end:
            status = self.status(after=seq, wait=min(10.0, max(end - time.monotonic(), 0.1)))
            if status is None:
                if self.aggregator is not None and self.aggregator.poll() is not None:
                    # An --exit-when-done aggregator may end between two polls: its last word
                    # is the summary it wrote, which may be what the predicate waits for.
                    final = self._final_status(last)
                    if final is not None and predicate(final):
                        return final
                    raise AssertionError(f"aggregator exited:\n{self.log('aggregator')}")
                time.sleep(0.1)  # not listening yet: nothing to wait on but the port
                continue
            if predicate(status):
                return status
            seq, last = int(status["seq"]), status
        raise AssertionError(f"timed out; last status {status}\n{self.log('aggregator')}")

    def _final_status(self, last: dict[str, Any] | None) -> dict[str, Any] | None:
        """The last status seen, with the phase and rounds of the summary the aggregator left."""
        if last is None or not (self.state_dir / "summary.json").exists():
            return None
        summary = self.summary()
        return last | {"phase": summary["phase"], "completedRounds": len(summary["history"])}

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self.state_dir / "summary.json").read_text())
        return summary

    def wait_aggregator(self, timeout: float) -> int:
        assert self.aggregator is not None
        return self.aggregator.wait(timeout=timeout)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        everything = [*self.clients.values(), *([self.aggregator] if self.aggregator else [])]
        for process in everything:
            if process.poll() is None:
                process.terminate()
        for process in everything:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def cluster(root: Path, job: Path, sites: list[str]) -> Iterator[Cluster]:
    running = Cluster(root, job, sites)
    try:
        yield running
    finally:
        running.stop()
