"""`flotilla serve`: a registered model behind MLflow's scoring server (`/invocations`,
`/ping`), with the MLflow server found as the aggregator finds it. The cluster's serving
Deployment runs it (k8s/serving.py); locally, `make serve` does."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flotilla.api.tracking import DEFAULT_TRACKING_URI_ENV, TRACKING_URI_ENV


class NoTrackingServer(ValueError):
    pass


@dataclass(frozen=True)
class ServeCommand:
    argv: list[str]
    env: dict[str, str]


def serve_command(
    model_uri: str,
    *,
    host: str,
    port: int,
    tracking_uri: str | None,
    environ: Mapping[str, str],
) -> ServeCommand:
    """`mlflow models serve -m URI --env-manager local`: the model runs in this
    environment, which has torch and the serving wrapper's code (no conda, no pip at start)."""
    uri = tracking_uri or environ.get(TRACKING_URI_ENV) or environ.get(DEFAULT_TRACKING_URI_ENV)
    if not uri:
        raise NoTrackingServer(
            f"no MLflow server to load {model_uri} from: give --tracking-uri, or set "
            f"{TRACKING_URI_ENV} (or {DEFAULT_TRACKING_URI_ENV}, as the operator does)"
        )
    bin_dir = Path(sys.executable).parent
    mlflow = bin_dir / "mlflow"
    executable = str(mlflow) if mlflow.exists() else shutil.which("mlflow")
    if executable is None:
        raise NoTrackingServer(
            "the mlflow command is not installed (pip install 'flotilla[tracking]')"
        )
    # The scoring server starts `uvicorn` from PATH: this environment's must come first.
    path = f"{bin_dir}{os.pathsep}{environ.get('PATH', '')}"
    argv = [
        executable, "models", "serve",
        "-m", model_uri,
        "--env-manager", "local",
        "-h", host,
        "-p", str(port),
    ]  # fmt: skip
    return ServeCommand(argv=argv, env={**environ, TRACKING_URI_ENV: uri, "PATH": path})


def exec_serve(command: ServeCommand) -> None:
    """Become the scoring server: signals and the exit code are its own (a pod's PID 1)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command.argv[0], command.argv, command.env)
