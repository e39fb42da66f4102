"""A real `mlflow server` (SQLite, local artifacts) and `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.harness import free_port

VENV_BIN = Path(sys.executable).parent
MLFLOW = str(VENV_BIN / "mlflow")
# An event bound, not a sleep: `mlflow server` imports for ~10 s idle, and took 97 s with
# the machine loaded by other test runs (it failed a CI run at 120).
READY_SECONDS = 240.0
# No telemetry, no background job runner (2 processes instead of ~10).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


class MlflowProcess:
    """An MLflow command in its own process group, stopped with the whole group."""

    def __init__(self, root: Path, name: str, *, port: int | None = None) -> None:
        self.root = root
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        # `mlflow models serve` runs `uvicorn` from PATH: the venv's bin must be on it.
        return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}

    def start(self, *, ready_path: str, env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=log,
            env=self.environment() | QUIET_ENV | (env or {}),
            start_new_session=True,  # its workers die with it
        )
        end = time.monotonic() + READY_SECONDS
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)  # not listening yet: a port has no event to wait on
        raise AssertionError(f"{self.name} not ready in {READY_SECONDS}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class TrackingServer(MlflowProcess):
    def __init__(self, root: Path, *, port: int | None = None) -> None:
        super().__init__(root, "mlflow-server", port=port)

    def command(self) -> list[str]:
        return [
            MLFLOW,
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start_server(self) -> None:
        self.start(ready_path="/health")


class ServingContainer(MlflowProcess):
    """The serving Deployment's container as the operator plans it: the image's entrypoint
    (`flotilla`) with the container's args and env and nothing else of this shell's (no
    venv on PATH, no MLFLOW_TRACKING_URI), listening on `port` instead of the pod's."""

    def __init__(self, root: Path, container: dict[str, Any]) -> None:
        super().__init__(root, "serving-container")
        self.args = [
            f"--port={self.port}" if arg.startswith("--port=") else arg for arg in container["args"]
        ]
        self.env = {item["name"]: item["value"] for item in container.get("env") or []}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "flotilla", *self.args]

    def environment(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", **self.env, "HOME": str(self.root)}
