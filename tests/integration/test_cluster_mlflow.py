"""The chart's MLflow server, run here with the exact arguments of its container: it answers
aggregators that dial the Service's name and a port-forward, and refuses other Host headers
(MLflow answers 403 to hosts it does not know, FINDINGS.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.mlflow_processes import MLFLOW, MlflowProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATA = "/var/lib/mlflow"


class ChartServer(MlflowProcess):
    """config/mlflow.yaml's container (the chart renders the same; tests/chart checks it)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "chart-mlflow")
        documents = yaml.safe_load_all((ROOT / "config" / "mlflow.yaml").read_text())
        deployment = next(d for d in documents if d and d["kind"] == "Deployment")
        self.container = deployment["spec"]["template"]["spec"]["containers"][0]

    def command(self) -> list[str]:
        args = []
        for arg in self.container["args"]:
            arg = arg.replace(DATA, str(self.root))  # the volume's mount
            arg = arg.replace("--host=0.0.0.0", "--host=127.0.0.1")
            args.append(arg.replace("--port=5000", f"--port={self.port}"))
        assert self.container["command"] == ["mlflow"]
        return [MLFLOW, *args]


def _ask(server: ChartServer, host: str) -> int:
    request = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 1}).encode(),
        headers={
            "Host": host.replace("5000", str(server.port)),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_chart_mlflow_server_answers_its_service_names_and_refuses_others(
    tmp_path: Path,
) -> None:
    server = ChartServer(tmp_path)
    env = {e["name"]: e["value"] for e in server.container["env"] if "value" in e}
    server.start(ready_path="/health", env=env)
    try:
        for host in (
            "flotilla-mlflow.flotilla-system.svc:5000",  # FLOTILLA_DEFAULT_TRACKING_URI's
            "flotilla-mlflow:5000",
            "localhost:5000",  # kubectl port-forward
        ):
            assert _ask(server, host) == 200, host
        assert _ask(server, "attacker.example:5000") == 403
    finally:
        server.stop()
    assert (tmp_path / "mlflow.db").exists()  # SQLite on the volume
