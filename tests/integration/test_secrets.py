"""Secrets never leave where they are kept: not into logs, status, summary, MLflow or /metrics.

A real job runs with every kind of secret Flotilla handles: the clients' bearer tokens,
a site's CVAT username and password and a CVAT URL with user:password in it (in a
credentials file the spec points to; the URL reaches the site's error), a CVAT access token
in every process's environment, and an MLflow tracking URI with user:password in the spec
(a real MLflow server, SQLite store). Then every byte the job left behind and every view of
it is searched for each secret string.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.harness import cluster, write_job
from tests.integration.mlflow_processes import TrackingServer
from tests.unit.cvat_double import CvatDouble, FakeTask

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b", "site-c"]
CVAT_PASSWORD = "cvat-pw-Zq81xLmN03"
CVAT_ACCESS_TOKEN = "cvat-token-Hh27Ppw9Ks"
CVAT_URL_PASSWORD = "cvat-url-pw-Jd40Wc6Rt"
MLFLOW_PASSWORD = "mlflow-pw-Ty55Bb0Qe"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_no_secret_reaches_logs_status_summary_mlflow_or_metrics(
    tmp_path: Path, digits_dir: Path, tracking_server: TrackingServer
) -> None:
    cvat = CvatDouble(users={"alice": CVAT_PASSWORD}, keys={CVAT_ACCESS_TOKEN: "alice"})
    cvat.tasks[7] = FakeTask(id=7, labels=[(1, "3")], frames=[], tags=[])
    cvat.start()
    credentials = tmp_path / "cvat-credentials.env"
    # The spec refuses a cvat.url with credentials; a credentials file may hold one.
    url = cvat.url.replace("http://", f"http://bob:{CVAT_URL_PASSWORD}@")
    credentials.write_text(f"URL={url}\nUSERNAME=alice\nPASSWORD={CVAT_PASSWORD}\n")
    uri = tracking_server.url.replace("http://", f"http://flotilla:{MLFLOW_PASSWORD}@")
    live = {"cvat": {"taskIds": [7], "credentials": {"path": str(credentials)}}}
    exports = [
        {"name": s, "data": {"cvatExport": {"path": str(digits_dir / s)}}} for s in SITES[:2]
    ]
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=2,
        overrides={
            "sites": [*exports, {"name": "site-c", "data": live}],
            "clients": {"minClients": 2, "joinGraceSeconds": 2},
            "tracking": {"trackingUri": uri, "experiment": "secrets"},
        },
    )
    environment = {
        "CVAT_ACCESS_TOKEN": CVAT_ACCESS_TOKEN,
        "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
    }
    views: dict[str, str] = {}
    try:
        with cluster(tmp_path, job, SITES) as running:
            running.start_aggregator()
            for site in SITES:
                running.start_client(site, env=environment)
            # Task 7 has no data: site-c's error names its CVAT by the URL.
            running.wait_for(
                lambda s: s["completedRounds"] >= 1 and "site-c" in s["siteErrors"], timeout=180
            )
            for path in ("/v1/status", "/v1/history", "/metrics", "/healthz"):
                views[path] = _get(running.url + path)
            assert running.wait_aggregator(timeout=180) == 0, running.log("aggregator")
            summary = running.summary()
            secrets = [
                CVAT_PASSWORD,
                CVAT_ACCESS_TOKEN,
                CVAT_URL_PASSWORD,
                MLFLOW_PASSWORD,
                *running.tokens.values(),
            ]
    finally:
        cvat.stop()
    assert summary["mlflowRunId"], summary["tracking"]
    shown = cvat.url.replace("http://", "http://***@")
    assert f"CVAT {shown}, task 7" in json.loads(views["/v1/status"])["siteErrors"]["site-c"]
    assert f"CVAT {shown}, task 7" in summary["sites"]["site-c"]["error"]

    # Everything the job wrote: logs, checkpoints, summary; not the inputs that hold secrets.
    inputs = {tmp_path / "tokens.json", job, credentials}
    for file in sorted(p for p in tmp_path.rglob("*") if p.is_file() and p not in inputs):
        views[str(file.relative_to(tmp_path))] = file.read_bytes().decode(errors="replace")

    client = MlflowClient(tracking_server.url)
    run = client.get_run(summary["mlflowRunId"])
    assert run.data.params["tracking.trackingUri"].startswith("http://")
    views["mlflow params"] = json.dumps(run.data.params)
    views["mlflow tags"] = json.dumps(run.data.tags)
    views["mlflow metrics"] = json.dumps(run.data.metrics)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for item in client.list_artifacts(run.info.run_id):
        if not item.is_dir:
            local = Path(client.download_artifacts(run.info.run_id, item.path, str(artifacts)))
            views[f"mlflow artifact {item.path}"] = local.read_bytes().decode(errors="replace")

    assert len(views) > 10, sorted(views)
    for where, text in views.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"
