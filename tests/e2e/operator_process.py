"""The operator from this checkout as its own process, logged in as its ServiceAccount.

The rights it gets are exactly config/rbac.yaml's (what `kubectl apply -f config/` gives it in
a cluster): a token of the `flotilla-operator` ServiceAccount in a kubeconfig of its own, so
the API server enforces RBAC on every call it makes and its audit log names them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.e2e.kube import kubectl
from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "flotilla-system"
ACCOUNT = "flotilla-operator"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
RESYNC_SECONDS = 1.0
RESYNC_COUNT = 'flotilla_operator_reconcile_duration_seconds_count{trigger="resync"}'


def service_account_kubeconfig(directory: Path) -> Path:
    """Install the operator's namespace and RBAC as the README says; a kubeconfig with its token."""
    kubectl("apply", "-f", str(ROOT / "config" / "namespace.yaml"))
    kubectl("apply", "-f", str(ROOT / "config" / "rbac.yaml"))
    token = kubectl("create", "token", ACCOUNT, "-n", NAMESPACE, "--duration=3h").stdout.strip()
    current = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = current["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": ACCOUNT}}],
        "current-context": "e2e",
    }
    path = directory / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        health, self.metrics_port = free_port(), free_port()
        command = [
            sys.executable, "-m", "flotilla", "operator",
            f"--liveness=http://127.0.0.1:{health}/healthz",
            f"--metrics-port={self.metrics_port}",
            f"--resync-seconds={RESYNC_SECONDS}",
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        _wait_healthy(f"http://127.0.0.1:{health}/healthz", self)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def resyncs(self) -> int:
        """Reconciles its resync loop has done (its own /metrics): to wait for some to pass."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith(RESYNC_COUNT):
                return int(float(line.split()[-1]))
        return 0

    def wait_resyncs(self, count: int) -> None:
        """Until `count` more resync reconciles have run (of any job)."""
        target = self.resyncs() + count
        deadline = time.monotonic() + 60 + count * RESYNC_SECONDS * 4
        while self.resyncs() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator resyncs no more:\n{self.log_tail()}")
            time.sleep(RESYNC_SECONDS / 4)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(url: str, operator: OperatorProcess, timeout: float = 60) -> None:
    """kopf answers its liveness probe once it has logged in and started its handlers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not operator.running():
            raise AssertionError(f"the operator exited:\n{operator.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the operator never became healthy:\n{operator.log_tail()}")
