"""A client exports its link's broken and resumed transfers, counted once each.

The counters follow the transport's TransferStats; a real client, talking to the in-process
aggregator through the fault proxy (tests/netfault.py), shows a broken model download or
upload in its own /metrics.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flotilla.fl.client.loop import ClientOptions, FederatedClient
from flotilla.fl.client.metrics import ClientMetrics
from flotilla.fl.client.transport import AggregatorConnection, Backoff, TransferStats
from tests.inprocess import aggregator, digits_job
from tests.netfault import Direction, Link, NetFault, ResetAt

LABELS = {"flotilla_job": "inproc", "site": "site-a"}


def _exported(metrics: ClientMetrics) -> dict[str, dict[str, float | None]]:
    return {
        name: {
            direction: metrics.registry.get_sample_value(name, LABELS | {"direction": direction})
            for direction in ("up", "down")
        }
        for name in ("flotilla_local_transfer_resets_total", "flotilla_local_resumed_bytes_total")
    }


def test_the_counters_follow_the_stats_and_count_each_change_once() -> None:
    metrics = ClientMetrics(job="inproc", site="site-a")
    stats = TransferStats()
    zero = {"up": 0.0, "down": 0.0}
    assert _exported(metrics) == {  # both series exist before anything broke
        "flotilla_local_transfer_resets_total": zero,
        "flotilla_local_resumed_bytes_total": zero,
    }

    stats.resets["up"] += 2
    stats.resumed_bytes["up"] += 1000
    metrics.transfers(stats)
    metrics.transfers(stats)  # nothing new: nothing added
    stats.resets["down"] += 1
    stats.resumed_bytes["down"] += 500
    stats.resumed_bytes["up"] += 24
    metrics.transfers(stats)

    assert _exported(metrics) == {
        "flotilla_local_transfer_resets_total": {"up": 2.0, "down": 1.0},
        "flotilla_local_resumed_bytes_total": {"up": 1024.0, "down": 500.0},
    }


def test_fresh_stats_add_to_the_counters_which_never_go_down() -> None:
    metrics = ClientMetrics(job="inproc", site="site-a")
    old = TransferStats()
    old.resets["up"] = 3
    metrics.transfers(old)
    new = TransferStats()  # a new connection counts from 0
    new.resets["up"] = 1
    metrics.transfers(new)
    assert _exported(metrics)["flotilla_local_transfer_resets_total"]["up"] == 4.0


@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_client_exports_a_broken_transfer_of_its_round(
    tmp_path: Path, digits_dir: Path, direction: Direction
) -> None:
    """One round played by a real client: its connection is reset halfway through the
    model download or the upload, which resumes; its metrics show that once."""
    job = digits_job(
        ["site-a"],
        rounds=1,
        spec={"clients": {"minClients": 1, "joinGraceSeconds": 0, "roundDeadlineSeconds": 60}},
    )

    async def play() -> tuple[FederatedClient, int]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            size = len(running.engine.global_model)
            # The first connection carries /v1/job, the model and the upload: reset it once
            # half a model crossed in `direction` (the requests' heads are far smaller). The
            # capped downlink lets the client read the model as it comes.
            port = running.client.server.port
            assert port is not None
            proxy = NetFault(
                port,
                down=Link(rate=2e6),
                resets=ResetAt(offset=size // 2, direction=direction, connection=0),
            ).start()
            try:
                conn = AggregatorConnection(
                    proxy.url(), running.tokens["site-a"], backoff=Backoff(initial=0.05)
                )
                options = ClientOptions(data_path=digits_dir / "site-a", device="cpu")
                client = await asyncio.to_thread(FederatedClient.open, conn, options)
                task = {"round": 1, "modelVersion": 0}
                await asyncio.to_thread(client._train_round, task)
                conn.close()
            finally:
                proxy.close()
            await running.until(lambda e: e.persisted == 1)
            return client, size

    client, size = asyncio.run(play())
    other: Direction = "up" if direction == "down" else "down"
    stats = client.conn.stats
    assert stats.resets == {direction: 1, other: 0}
    assert 0 < stats.resumed_bytes[direction] < size
    exported = _exported(client.metrics)
    assert exported["flotilla_local_transfer_resets_total"] == {direction: 1.0, other: 0.0}
    assert exported["flotilla_local_resumed_bytes_total"] == {
        direction: float(stats.resumed_bytes[direction]),
        other: 0.0,
    }
