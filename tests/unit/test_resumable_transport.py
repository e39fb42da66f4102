"""The client's transport resumes a broken upload and a broken download.

The in-process aggregator behind the fault proxy (tests/netfault.py), which resets the
client's first connection once a chosen share of the transfer crossed it; the blocking
transport runs in a thread, as in the client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.api import FederatedJob
from flotilla.fl.client.transport import AggregatorConnection, Backoff, read_piece
from flotilla.fl.codec import UpdateEncoder
from tests.inprocess import aggregator, digits_job
from tests.netfault import Link, NetFault, ResetAt

SITES = ["site-a"]


def _job(*, zstd: bool) -> FederatedJob:
    clients = {"minClients": 1, "joinGraceSeconds": 0, "roundDeadlineSeconds": 60}
    compression = {"dtype": "int8" if zstd else "float32", "zstd": zstd}
    return digits_job(SITES, rounds=1, spec={"clients": clients, "compression": compression})


@pytest.mark.parametrize("zstd", [False, True])
@pytest.mark.parametrize("share", [0.5, 0.95])
def test_an_upload_broken_by_a_reset_resumes_and_is_folded_once(
    tmp_path: Path, share: float, zstd: bool
) -> None:
    async def play() -> tuple[dict[str, Any], dict[str, Any], list[str], int]:
        async with aggregator(_job(zstd=zstd), tmp_path) as running:
            await running.join()
            model = running.engine.layout
            encoder = UpdateEncoder(
                model, dtype="int8" if zstd else "float32", zstd_level=3 if zstd else None,
                frame_bytes=4096,
            )  # fmt: skip
            buffer = model.allocate()
            views = model.views(buffer)
            generator = torch.Generator().manual_seed(7)
            for view in views.values():
                view.copy_(torch.randn(view.shape, generator=generator) * 1e-2)
            body = encoder.encode(buffer, views)
            offset = int(len(body) * share)  # the request's head comes first: a little less
            proxy = NetFault(
                running.client.server.port, resets=ResetAt(offset=offset, connection=0)
            ).start()
            try:
                conn = AggregatorConnection(
                    proxy.url(), running.tokens["site-a"], backoff=Backoff(initial=0.05)
                )
                headers = {"X-Flotilla-Examples": "10", "X-Flotilla-Metrics": "{}"}
                if encoder.compression:
                    headers["X-Flotilla-Compression"] = encoder.compression
                answer = await asyncio.to_thread(
                    conn.upload, "/v1/rounds/1/update", body, headers, restarts=encoder.restarts
                )
                conn.close()
                stats = {"resets": conn.stats.resets, "resumed": conn.stats.resumed_bytes}
            finally:
                proxy.close()
            await running.until(lambda e: e.persisted == 1)
            return answer, stats, running.engine.ledger.rounds[0].answered, len(body)

    answer, stats, answered, size = asyncio.run(play())
    assert answer["accepted"] is True
    assert answered == ["site-a"]
    assert stats["resets"]["up"] == 1
    assert 0 < stats["resumed"]["up"] < size


def _download_reset_at(running: Any, offset: int) -> NetFault:
    """A proxy that resets its first connection once `offset` bytes went down it. The link is
    capped: the client reads each piece as it comes, so what crossed before the reset is in
    its buffer (a reset drops what a socket had not read yet)."""
    return NetFault(
        running.client.server.port,
        down=Link(rate=1e6),
        resets=ResetAt(offset=offset, direction="down", connection=0),
    ).start()


@pytest.mark.parametrize("share", [0.5, 0.95])
def test_a_download_broken_by_a_reset_resumes_with_a_range(tmp_path: Path, share: float) -> None:
    async def play() -> tuple[bool, dict[str, Any]]:
        async with aggregator(_job(zstd=False), tmp_path) as running:
            await running.join()
            model = running.engine.global_model
            proxy = _download_reset_at(running, int(len(model) * share))
            try:
                conn = AggregatorConnection(
                    proxy.url(), running.tokens["site-a"], backoff=Backoff(initial=0.05)
                )
                into = bytearray(len(model))
                await asyncio.to_thread(conn.download_into, "/v1/model/0", into)
                conn.close()
            finally:
                proxy.close()
            links = running.engine.intake.links.json()["site-a"]
            return into == model, {
                "resets": conn.stats.resets,
                "resumed": conn.stats.resumed_bytes,
                "links": links,
                "size": len(model),
            }

    same, seen = asyncio.run(play())
    assert same
    assert seen["resets"]["down"] == 1
    # It kept what crossed before the reset, but the piece it was reading, and asked for the rest.
    assert share * seen["size"] - read_piece(seen["size"]) - 1024 <= seen["resumed"]["down"]
    assert seen["resumed"]["down"] <= share * seen["size"]
    assert seen["links"]["resumedDownloads"] == 1


def test_a_model_sent_with_its_task_and_broken_by_a_reset_goes_on_with_a_range(
    tmp_path: Path,
) -> None:
    """The task's answer carries the model (the client holds none); the reset lands halfway
    through it. The task is not asked again: the rest of the model comes from /v1/model with
    a Range, and the buffer ends as the model. Asked again holding that version, the task
    comes alone and the buffer is left as it is."""

    async def play() -> dict[str, Any]:
        async with aggregator(_job(zstd=False), tmp_path) as running:
            await running.join()
            model = running.engine.global_model
            proxy = _download_reset_at(running, len(model) // 2)
            try:
                conn = AggregatorConnection(
                    proxy.url(), running.tokens["site-a"], backoff=Backoff(initial=0.05)
                )
                into = bytearray(len(model))
                task, received = await asyncio.to_thread(
                    conn.get_task, wait=5, held=None, into=into
                )
                seen = {"task": task, "received": received, "same": into == model}
                into[:] = bytes(len(into))
                again, received = await asyncio.to_thread(
                    conn.get_task, wait=5, held=task["modelVersion"], into=into
                )
                seen |= {"again": again, "received again": received, "untouched": not any(into)}
                conn.close()
            finally:
                proxy.close()
            return seen | {
                "resets": conn.stats.resets,
                "resumed": conn.stats.resumed_bytes,
                "links": running.engine.intake.links.json()["site-a"],
                "size": len(model),
            }

    seen = asyncio.run(play())
    assert seen["task"]["action"] == "train" and seen["received"] and seen["same"]
    assert seen["resets"]["down"] == 1
    # The reset counts the answer's head too: a little less than half the model crossed.
    half = seen["size"] // 2
    assert half - read_piece(seen["size"]) - 1024 <= seen["resumed"]["down"] <= half
    assert seen["links"]["resumedDownloads"] == 1
    assert seen["again"]["action"] == "train"
    assert not seen["received again"] and seen["untouched"]
