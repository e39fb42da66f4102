"""A real client against a real (in-process) aggregator of a buffered job: it sends deltas,
trains again on a version the server has not stepped from yet (with its own shuffle), and
takes a `too_stale` refusal as "train on the current model", not as a failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.client.loop import STALE, ClientOptions, FederatedClient
from flotilla.fl.client.transport import AggregatorConnection, AggregatorRefused, Backoff
from tests.inprocess import aggregator, digits_job
from tests.unit.test_resumable_uploads import _break_off, _held, _parked, _resume


def _job(sites: tuple[str, ...] = ("site-a",), **buffered: Any) -> Any:
    return digits_job(
        list(sites),
        rounds=2,
        spec={
            "strategy": {"name": "fedavg", "buffered": buffered},
            "clients": {"minClients": 1, "joinGraceSeconds": 0, "roundDeadlineSeconds": 60},
        },
    )


def test_a_buffered_client_sends_deltas_and_trains_one_version_twice_with_two_shuffles(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = _job(size=2)
    seeds: list[int] = []

    async def play() -> tuple[FederatedClient, list[dict[str, Any]], str]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            url = f"http://127.0.0.1:{running.client.server.port}"
            conn = AggregatorConnection(url, running.tokens["site-a"], backoff=Backoff())
            options = ClientOptions(data_path=digits_dir / "site-a", device="cpu")
            client = await asyncio.to_thread(FederatedClient.open, conn, options)
            train = client.learning.train

            def recorded(*args: Any, **kwargs: Any) -> Any:
                seeds.append(kwargs["seed"])
                return train(*args, **kwargs)

            client.learning.train = recorded  # type: ignore[method-assign]
            for _ in range(2):  # no step in between: both train on version 0
                await asyncio.to_thread(client._train_round, {"round": 1, "modelVersion": 0})
            conn.close()
            await running.until(lambda e: e.persisted == 1)
            _, metrics = await running.request("GET", "/metrics")
            return client, running.engine.ledger.history_json(), metrics.decode()

    client, history, metrics = asyncio.run(play())
    assert not client.sends_weights  # float32, yet a delta: version 0 may be gone on arrival
    assert len(set(seeds)) == 2
    (row,) = history
    assert [u["site"] for u in row["buffer"]["updates"]] == ["site-a", "site-a"]
    assert row["answered"] == ["site-a"]
    assert 'flotilla_update_staleness_count{flotilla_job="inproc"} 2.0' in metrics
    assert 'flotilla_buffer_updates{flotilla_job="inproc"} 0.0' in metrics


def test_a_too_stale_update_is_refused_with_a_reason_the_client_moves_on_from(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = _job(size=1, maxStaleness=0)

    async def play() -> AggregatorRefused:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            url = f"http://127.0.0.1:{running.client.server.port}"
            conn = AggregatorConnection(url, running.tokens["site-a"], backoff=Backoff())
            options = ClientOptions(data_path=digits_dir / "site-a", device="cpu")
            client = await asyncio.to_thread(FederatedClient.open, conn, options)
            await asyncio.to_thread(client._ensure_model, 0)  # it has version 0 ...
            await running.upload("site-a", running.delta(0.0))  # ... when version 1 is made
            await running.until(lambda e: e.completed == 1)
            with pytest.raises(AggregatorRefused) as refused:
                # Trained on version 0, one server update behind: staler than 0 allows.
                await asyncio.to_thread(client._train_round, {"round": 1, "modelVersion": 0})
            conn.close()
            return refused.value

    refused = asyncio.run(play())
    assert (refused.status, refused.reason) == (410, "too_stale")
    assert refused.reason in STALE  # the client's loop logs it and asks for its next task


def test_a_broken_buffered_upload_resumes_and_is_folded_once(tmp_path: Path) -> None:
    """Buffered uploads park for any round; the resumed one is folded once, with the
    staleness it has when it lands; sent again (its answer lost), it is a duplicate."""
    job = _job(("site-a", "site-b"), size=1)
    upload_id = "upload-a-0001"

    async def play() -> tuple[list[int], dict[str, Any], list[dict[str, Any]]]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            body = bytes(running.delta(0.01))
            tag = {"X-Flotilla-Upload-Id": upload_id}
            await _break_off(running, "site-a", body, len(body) // 2, **tag)  # trained on v0
            await _parked(running, "site-a")
            assert await running.upload("site-b", running.delta(0.0)) == 200  # v1 is made
            await running.until(lambda e: e.completed == 1)
            status, held = await _held(running, "site-a", upload_id)
            assert status == 200, held
            statuses = [status]
            status, answer = await _resume(
                running,
                "site-a",
                body,
                start=held["received"],
                held=held["received"],
                upload_id=upload_id,
            )
            statuses.append(status)
            again, _ = await running.request(
                "PUT",
                "/v1/rounds/1/update",
                headers=running.headers(
                    "site-a", **{"X-Flotilla-Examples": "10", "X-Flotilla-Metrics": "{}", **tag}
                ),
                data=body,
            )
            statuses.append(again)
            await running.until(lambda e: e.persisted == 2)
            return statuses, answer, running.engine.ledger.history_json()

    statuses, answer, history = asyncio.run(play())
    assert statuses == [200, 200, 409]
    assert (answer["staleness"], answer["serverUpdate"]) == (1, 2)
    assert [row["buffer"]["updates"] for row in history][1] == [
        {"site": "site-a", "baseVersion": 0, "staleness": 1}
    ]
