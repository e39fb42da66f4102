"""Broken uploads resume from what the aggregator holds, and are folded exactly once.

The real aiohttp server in the test's loop; the clients are raw sockets that send part of
a body and hang up, then ask how much is held and send the rest with Content-Range.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.api import FederatedJob
from flotilla.fl.codec import UpdateEncoder
from flotilla.fl.resume import Restarts
from flotilla.fl.wire import WireDtype
from tests.inprocess import Aggregator, aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]
FRAME = 4096  # payload bytes per zstd frame: small, so the digits model has many


def _job(
    *, dtype: str = "float32", zstd: bool = False, deadline: float = 60, min_clients: int = 3
) -> FederatedJob:
    clients = {"minClients": min_clients, "joinGraceSeconds": 60, "roundDeadlineSeconds": deadline}
    compression = {"dtype": dtype, "zstd": zstd}
    return digits_job(SITES, rounds=1, spec={"clients": clients, "compression": compression})


def _head(running: Aggregator, site: str, length: int, **extra: str) -> bytes:
    server = running.client.server
    lines = [
        f"PUT /v1/rounds/{extra.pop('round', '1')}/update HTTP/1.1",
        f"Host: {server.host}",
        f"Content-Length: {length}",
        f"Authorization: Bearer {running.tokens[site]}",
        "X-Flotilla-Examples: 10",
        "X-Flotilla-Metrics: {}",
        *(f"{name}: {value}" for name, value in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _break_off(running: Aggregator, site: str, body: bytes, cut: int, **headers: str) -> None:
    """Send the head and `cut` bytes of `body`, then hang up."""
    server = running.client.server
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(_head(running, site, len(body), **headers) + body[:cut])
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _parked(running: Aggregator, site: str) -> None:
    async with asyncio.timeout(5):
        while not running.engine.intake.parking.holds(site):
            await asyncio.sleep(0.01)


async def _held(
    running: Aggregator, site: str, upload_id: str, round_number: int = 1
) -> tuple[int, dict[str, Any]]:
    status, raw = await running.request(
        "GET", f"/v1/rounds/{round_number}/update?upload={upload_id}", site=site
    )
    return status, json.loads(raw)


async def _resume(
    running: Aggregator,
    site: str,
    body: bytes,
    *,
    start: int,
    held: int,
    upload_id: str,
    **extra: str,
) -> tuple[int, dict[str, Any]]:
    headers = running.headers(
        site,
        **{
            "X-Flotilla-Examples": "10",
            "X-Flotilla-Metrics": "{}",
            "X-Flotilla-Upload-Id": upload_id,
            "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
            "X-Flotilla-Resume-From": str(held),
            **extra,
        },
    )
    status, raw = await running.request(
        "PUT", "/v1/rounds/1/update", headers=headers, data=body[start:]
    )
    return status, json.loads(raw)


def _encoded(
    running: Aggregator, fill: float, *, dtype: WireDtype, zstd: bool
) -> tuple[bytes, Restarts]:
    """A random delta of scale `fill` (random: zstd frames of about one size), encoded as a
    client would (zstd: frames of FRAME)."""
    model = running.engine.layout
    encoder = UpdateEncoder(model, dtype=dtype, zstd_level=3 if zstd else None, frame_bytes=FRAME)
    buffer = model.allocate()
    views = model.views(buffer)
    generator = torch.Generator().manual_seed(int(fill * 1000))
    for view in views.values():
        view.copy_(torch.randn(view.shape, generator=generator) * fill)
    body = bytes(encoder.encode(buffer, views))
    return body, encoder.restarts


async def _round(
    tmp: Path, *, cut: float | None, dtype: WireDtype = "float32", zstd: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """site-a's update breaks at `cut` (a share of its body) and resumes; the others upload
    whole. The new global model, and what the break cost."""
    seen: dict[str, Any] = {}
    async with aggregator(_job(dtype=dtype, zstd=zstd), tmp) as running:
        await running.join()
        extra = {"X-Flotilla-Compression": "zstd"} if zstd else {}
        bodies = {
            site: _encoded(running, fill, dtype=dtype, zstd=zstd)
            for site, fill in zip(SITES, (0.01, 0.03, -0.02), strict=True)
        }
        for site in ("site-b", "site-c"):
            assert await running.upload(site, bodies[site][0], **extra) == 200
        body, restarts = bodies["site-a"]
        if cut is None:
            assert await running.upload("site-a", body, **extra) == 200
        else:
            sent = int(len(body) * cut)
            tag = {"X-Flotilla-Upload-Id": "upload-a-0001", **extra, **restarts.headers()}
            await _break_off(running, "site-a", body, sent, **tag)
            await _parked(running, "site-a")
            assert running.engine.intake.receiving() == set()  # off the pool while paused
            status, answer = await _held(running, "site-a", "upload-a-0001")
            assert status == 200, answer
            start = restarts.wire_offset(answer["received"])
            seen["resent"] = sent - start
            seen["frame"] = max(
                (b - a for a, b in itertools.pairwise(restarts.frame_starts)),
                default=0,
            )
            status, answer = await _resume(
                running,
                "site-a",
                body,
                start=start,
                held=answer["received"],
                upload_id="upload-a-0001",
                **extra,
                **restarts.headers(),
            )
            assert status == 200, answer
            seen["links"] = running.engine.intake.links.json()["site-a"]
        await running.until(lambda e: e.persisted == 1)
        seen["answered"] = running.engine.ledger.rounds[0].answered
        seen["files"] = list((tmp / "uploads").glob("*")) if (tmp / "uploads").exists() else []
        return running.model(), seen


@pytest.mark.parametrize(
    ("dtype", "zstd"), [("float32", False), ("float16", True), ("int8", True), ("int8", False)]
)
@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_a_broken_upload_resumes_and_is_folded_exactly_once(
    tmp_path: Path, cut: float, dtype: WireDtype, zstd: bool
) -> None:
    whole, _ = asyncio.run(_round(tmp_path / "whole", cut=None, dtype=dtype, zstd=zstd))
    resumed, seen = asyncio.run(_round(tmp_path / "broken", cut=cut, dtype=dtype, zstd=zstd))
    assert seen["answered"] == SITES
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name
    # A plain body resumes at the very byte the aggregator had; a zstd one at a frame.
    assert 0 <= seen["resent"] <= (seen["frame"] if zstd else 0)
    assert seen["links"]["uploadResets"] == 1 and seen["links"]["resumedUploads"] == 1
    assert seen["links"]["resumedBytes"] > 0
    assert seen["files"] == []  # nothing parked outlives its round


async def _broken_a(running: Aggregator, *, share: float = 0.5) -> tuple[bytes, int]:
    """site-a's upload breaks at `share` of its body and is parked; (body, bytes held)."""
    body, _ = _encoded(running, 0.01, dtype="float32", zstd=False)
    await _break_off(
        running, "site-a", body, int(len(body) * share), **{"X-Flotilla-Upload-Id": "upload-a-0001"}
    )
    await _parked(running, "site-a")
    status, answer = await _held(running, "site-a", "upload-a-0001")
    assert status == 200, answer
    return body, int(answer["received"])


def test_only_the_site_itself_resumes_its_upload_and_only_that_upload(tmp_path: Path) -> None:
    async def play() -> list[tuple[int, str]]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            body, held = await _broken_a(running)
            answers = []
            # Another site, naming site-a's upload: its token binds it to its own uploads.
            status, answer = await _held(running, "site-b", "upload-a-0001")
            answers.append((status, answer["reason"]))
            status, answer = await _resume(
                running, "site-b", body, start=held, held=held, upload_id="upload-a-0001"
            )
            answers.append((status, answer["reason"]))
            # site-a's own: a round that is not open, an id it never used, a bad range.
            status, answer = await _held(running, "site-a", "upload-a-0001", round_number=2)
            answers.append((status, answer["reason"]))
            status, answer = await _held(running, "site-a", "bad id!")
            answers.append((status, answer["reason"]))
            status, answer = await _resume(
                running, "site-a", body, start=held - 8, held=held - 8, upload_id="upload-a-0001"
            )
            answers.append((status, answer["reason"]))  # and that one dropped the parked bytes
            status, answer = await _held(running, "site-a", "upload-a-0001")
            answers.append((status, answer["reason"]))
            return answers

    assert asyncio.run(play()) == [
        (404, "unknown_upload"),
        (404, "unknown_upload"),
        (409, "round_closed"),
        (400, "bad_upload_id"),
        (416, "bad_range"),
        (404, "unknown_upload"),
    ]


def test_a_new_upload_of_the_site_discards_what_it_had_parked(tmp_path: Path) -> None:
    async def play() -> tuple[int, tuple[int, dict[str, Any]], int]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            body, held = await _broken_a(running)
            fresh = await running.upload(
                "site-a", body, **{"X-Flotilla-Upload-Id": "upload-a-0002"}
            )
            stale = await _resume(
                running, "site-a", body, start=held, held=held, upload_id="upload-a-0001"
            )
            return (
                fresh,
                stale,
                len(running.engine.ledger.rounds[-1].answered)
                if running.engine.ledger.rounds
                else 0,
            )

    fresh, (status, answer), _ = asyncio.run(play())
    assert fresh == 200
    # The site answered: its old upload is not resumed into a second fold.
    assert status in (404, 409), answer


def test_parked_bytes_go_when_the_round_closes(tmp_path: Path) -> None:
    async def play() -> tuple[list[Path], list[Path], tuple[int, dict[str, Any]]]:
        async with aggregator(_job(deadline=2, min_clients=2), tmp_path) as running:
            await running.join()
            await _broken_a(running)
            before = list((tmp_path / "uploads").glob("*"))
            for site in ("site-b", "site-c"):
                assert await running.upload(site, running.delta(0.01)) == 200
            await running.until(lambda e: e.persisted == 1)
            after = list((tmp_path / "uploads").glob("*"))
            return before, after, await _held(running, "site-a", "upload-a-0001")

    before, after, (status, answer) = asyncio.run(play())
    assert len(before) == 1 and after == []
    assert (status, answer["reason"]) == (409, "round_closed")


def test_a_paused_upload_holds_no_receive_buffer(tmp_path: Path) -> None:
    """Two buffers, one paused upload: two other sites still upload at once."""

    async def play() -> tuple[list[int], tuple[int, dict[str, Any]], list[str]]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            body, held = await _broken_a(running)
            assert running.engine.intake.receiving() == set()
            async with asyncio.timeout(10):
                others = await asyncio.gather(
                    running.upload("site-b", running.delta(0.02)),
                    running.upload("site-c", running.delta(0.03)),
                )
            resumed = await _resume(
                running, "site-a", body, start=held, held=held, upload_id="upload-a-0001"
            )
            await running.until(lambda e: e.persisted == 1)
            return others, resumed, running.engine.ledger.rounds[0].answered

    others, (status, answer), answered = asyncio.run(play())
    assert others == [200, 200]
    assert status == 200, answer
    assert answered == SITES


def test_a_new_connection_for_an_upload_breaks_off_the_old_one(tmp_path: Path) -> None:
    """The client saw its link die; this end did not (no reset came): asking for the upload
    breaks the old connection off, parks what it brought, and the resume completes."""

    async def play() -> tuple[int, int, tuple[int, dict[str, Any]]]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            body, _ = _encoded(running, 0.01, dtype="float32", zstd=False)
            server = running.client.server
            _, writer = await asyncio.open_connection(server.host, server.port)
            head = _head(running, "site-a", len(body), **{"X-Flotilla-Upload-Id": "upload-a-0001"})
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            async with asyncio.timeout(5):
                while "site-a" not in running.engine.intake.receiving():
                    await asyncio.sleep(0.01)
            status, answer = await _held(running, "site-a", "upload-a-0001")
            writer.close()
            await writer.wait_closed()
            held = int(answer["received"])
            resumed = await _resume(
                running, "site-a", body, start=held, held=held, upload_id="upload-a-0001"
            )
            for site in ("site-b", "site-c"):
                assert await running.upload(site, running.delta(0.01)) == 200
            await running.until(lambda e: e.persisted == 1)
            return status, held, resumed

    status, held, (resumed, answer) = asyncio.run(play())
    assert status == 200 and held > 0
    assert resumed == 200, answer


def test_an_aggregator_stopped_with_a_round_open_after_a_resumed_upload_stops_at_once(
    tmp_path: Path,
) -> None:
    """Python 3.11's asyncio.wait_for swallowed the engine's cancel when it came as the
    state changed: the engine ran on to its round deadline (the harness asserts the stop)."""

    async def play() -> tuple[int, int]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            body, _ = _encoded(running, 0.01, dtype="float32", zstd=False)
            server = running.client.server
            _, writer = await asyncio.open_connection(server.host, server.port)
            head = _head(running, "site-a", len(body), **{"X-Flotilla-Upload-Id": "upload-a-0002"})
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            async with asyncio.timeout(5):
                while "site-a" not in running.engine.intake.receiving():
                    await asyncio.sleep(0.01)
            status, answer = await _held(running, "site-a", "upload-a-0002")
            writer.close()
            await writer.wait_closed()
            held = int(answer["received"])
            resumed, _ = await _resume(
                running, "site-a", body, start=held, held=held, upload_id="upload-a-0002"
            )
            return status, resumed

    assert asyncio.run(play()) == (200, 200)
