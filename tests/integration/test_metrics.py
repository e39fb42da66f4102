"""Prometheus metrics as a scraper sees them: the aggregator's and a client's own /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import cluster, free_port, write_job

pytestmark = pytest.mark.integration


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_the_aggregator_and_a_client_serve_their_metrics(tmp_path: Path, digits_dir: Path) -> None:
    sites = ["site-a", "site-b"]
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=sites,
        rounds=50,  # more than the test waits for: the processes are scraped while they run
        overrides={"clients": {"minClients": 2, "joinGraceSeconds": 5}},
    )
    client_port, aggregator_metrics_port = free_port(), free_port()
    with cluster(tmp_path, job, sites) as running:
        running.start_aggregator("--metrics-port", str(aggregator_metrics_port))
        running.start_client("site-a", "--metrics-port", str(client_port))
        running.start_client("site-b")
        running.wait_for(lambda s: s["completedRounds"] >= 2, timeout=180)

        aggregator = _scrape(f"http://127.0.0.1:{aggregator_metrics_port}/metrics")
        client = _scrape(f"http://127.0.0.1:{client_port}/metrics")

    job_label = 'flotilla_job="itest"'
    assert aggregator[f"flotilla_rounds_completed_total{{{job_label}}}"] >= 2
    assert aggregator[f"flotilla_rounds_planned{{{job_label}}}"] == 50
    assert aggregator[f"flotilla_clients_present{{{job_label}}}"] == 2
    assert aggregator[f'flotilla_client_updates_total{{{job_label},site="site-b"}}'] >= 2
    assert aggregator[f'flotilla_job_phase{{{job_label},phase="done"}}'] == 0
    site = f'{job_label},site="site-a"'
    assert client[f"flotilla_local_rounds_trained_total{{{site}}}"] >= 2
    assert client[f"flotilla_local_training_seconds_count{{{site}}}"] >= 2
    assert client[f"flotilla_local_examples{{{site}}}"] > 0
    assert 0 <= client[f"flotilla_local_train_accuracy{{{site}}}"] <= 1
    assert client[f"flotilla_local_sent_bytes_total{{{site}}}"] > 0
    assert client[f"flotilla_local_received_bytes_total{{{site}}}"] > 0
