"""A client is built without I/O; joining, reading the site's data and training are steps
of their own. Its update hook rewrites what it sends: a delta, even for float32 updates,
which otherwise go up as the trained weights.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import torch

from flotilla.fl.client.joining import Assignment
from flotilla.fl.client.loop import ClientOptions, FederatedClient
from flotilla.fl.client.transport import AggregatorConnection, Backoff
from flotilla.fl.modelstate import build_job_model
from flotilla.fl.wire import model_layout
from tests.inprocess import aggregator, digits_job


class _Unplugged:
    """A connection that fails the test on any use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the client used its connection ({name}) while being built")


def test_building_a_client_sends_nothing_and_reads_nothing(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = digits_job(["site-a"], rounds=1)
    header = model_layout(build_job_model(job).state_dict()).header[8:].decode().rstrip()
    assignment = Assignment(site="site-a", job=job, layout_header=header)
    missing = ClientOptions(data_path=tmp_path / "missing", device="cpu")

    client = FederatedClient(_Unplugged(), assignment, missing)  # type: ignore[arg-type]
    assert client.data.train is None and client.data.report["ready"] is False
    assert client.sends_weights  # float32 updates, no hook

    client.load_data()  # a step of its own: here it fails, and says why
    assert client.data.train is None and "missing" in client.data.report["error"]
    present = ClientOptions(data_path=digits_dir / "site-a", device="cpu")
    ready = FederatedClient(_Unplugged(), assignment, present)  # type: ignore[arg-type]
    ready.load_data()
    assert ready.data.train is not None and ready.data.report["ready"] is True


def test_a_hooked_client_sends_the_delta_its_hook_rewrote(tmp_path: Path, digits_dir: Path) -> None:
    """The hook zeroes the delta: the global model must come back unchanged (sent as
    weights, zeros would have replaced it; a hook never called would have moved it)."""
    job = digits_job(
        ["site-a"],
        rounds=1,
        spec={"clients": {"minClients": 1, "joinGraceSeconds": 0, "roundDeadlineSeconds": 60}},
    )
    seen: list[list[str]] = []

    def zero(delta: dict[str, torch.Tensor]) -> None:
        seen.append(sorted(delta))
        for tensor in delta.values():
            tensor.zero_()

    async def play() -> tuple[FederatedClient, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            before = running.model()
            url = f"http://127.0.0.1:{running.client.server.port}"
            conn = AggregatorConnection(url, running.tokens["site-a"], backoff=Backoff())
            options = ClientOptions(data_path=digits_dir / "site-a", device="cpu")
            client = await asyncio.to_thread(FederatedClient.open, conn, options, update_hook=zero)
            await asyncio.to_thread(client._train_round, {"round": 1, "modelVersion": 0})
            conn.close()
            await running.until(lambda e: e.persisted == 1)
            return client, before, running.model()

    client, before, after = asyncio.run(play())
    assert not client.sends_weights
    assert seen == [sorted(before)]
    assert all(torch.equal(after[name], before[name]) for name in before)
