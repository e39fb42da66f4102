"""Transfers broken by the network resume, with real processes (tests/netfault.py).

The proxy resets site-c's connection once, partway through an update upload or a model
download; the client goes on from the bytes the other end holds, and the job completes
with every site in every round. Byte-level exactness (folded once, at most one piece
re-sent) is in tests/unit/test_resumable_uploads.py and test_resumable_transport.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.harness import cluster, write_job
from tests.netfault import NetFault, ResetAt

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b", "site-c"]
CNN_BYTES = 4 * 38_282  # cnn-small's float32 weights: one model, one update


@pytest.mark.parametrize(
    ("reset", "resumed"),
    [
        # The first connection carries a few KB of JSON before the first update, so this
        # lands at 90-95% of its body.
        (ResetAt(int(0.95 * CNN_BYTES), direction="up", connection=0), "resuming the upload"),
        (ResetAt(int(0.5 * CNN_BYTES), direction="down", connection=0), "resuming the model"),
    ],
    ids=["upload", "download"],
)
def test_a_transfer_reset_by_the_network_resumes_and_the_job_completes(
    tmp_path: Path, digits_dir: Path, reset: ResetAt, resumed: str
) -> None:
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=2,
        overrides={"clients": {"minClients": 3, "joinGraceSeconds": 30}},
    )
    with cluster(tmp_path, job, SITES) as running:
        with NetFault(running.port, resets=reset) as proxy:
            running.start_aggregator()
            for site in SITES:
                running.start_client(site, via=proxy.url() if site == "site-c" else None)
            assert running.wait_aggregator(timeout=180) == 0, running.log("aggregator")
            stats = proxy.stats()
        summary = running.summary()
        client_log = (running.root / "site-c.log").read_text(errors="replace")

    assert stats.resets == 1
    assert resumed in client_log, client_log[-3000:]
    assert summary["phase"] == "done"
    assert [r["sites"] for r in summary["history"]] == [SITES, SITES]
