"""`Expect: 100-continue` at the aggregator: an upload's body is asked for only once a
receive buffer is its, and a refusal before then is the final answer (http_continue.py).

A real aiohttp server in the test's loop; the uploads are raw sockets, so every byte the
aggregator sends before its final answer is seen.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator import intake
from flotilla.fl.aggregator.http_continue import CONTINUE
from tests.inprocess import Aggregator, aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]


class RawUpload:
    """One upload on its own connection, its headers first, its body when the test says."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> None:
        self.reader, self.writer, self.body = reader, writer, body
        self.sent = 0  # body bytes written

    @classmethod
    async def start(
        cls,
        running: Aggregator,
        site: str,
        body: bytes,
        *,
        round_number: int = 1,
        expect: str | None = "100-continue",
    ) -> RawUpload:
        server = running.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        extra = () if expect is None else (f"Expect: {expect}",)
        writer.write(
            running.raw_update_head(site, len(body), round_number=round_number, extra=extra)
        )
        await writer.drain()
        return cls(reader, writer, body)

    async def first_line(self) -> bytes:
        return await self.reader.readline()

    async def asked_for_body(self) -> bool:
        """The aggregator's next words: 100 Continue (True), or its final answer (False,
        put back for `answer`)."""
        line = await self.first_line()
        if line + await self.reader.readexactly(2) == CONTINUE:
            return True
        self._status_line = line
        return False

    async def send(self, *, piece: int = 1 << 16, every: float = 0.0) -> None:
        for start in range(0, len(self.body), piece):
            self.writer.write(self.body[start : start + piece])
            await self.writer.drain()
            self.sent = min(start + piece, len(self.body))
            if every:
                await asyncio.sleep(every)

    async def answer(self) -> tuple[int, dict[str, Any]]:
        status_line = getattr(self, "_status_line", None) or await self.first_line()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return int(status_line.split()[1]), json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


def _job(buffers: int, sites: list[str] = SITES) -> Any:
    clients = {"minClients": len(sites), "joinGraceSeconds": 60, "roundDeadlineSeconds": 30}
    spec = {"clients": clients, "limits": {"receiveBuffers": buffers}}
    return digits_job(sites, rounds=1, spec=spec)


async def _a_holder_and_one_waiting(running: Aggregator, body: bytes) -> list[RawUpload]:
    """site-a's upload, asked for its body (it holds the one buffer), and site-b's, waiting
    for the buffer and asked ahead."""
    first = await RawUpload.start(running, "site-a", body)
    assert await first.asked_for_body()
    second = await RawUpload.start(running, "site-b", body)
    async with asyncio.timeout(20):
        assert await second.asked_for_body()
    return [first, second]


def test_waiting_uploads_past_those_asked_ahead_are_asked_once_a_buffer_is_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One receive buffer, held by site-a's body arriving in pieces, and one waiting body
    asked for ahead: site-b, waiting first, is asked at once (its bytes may wait in socket
    buffers, as a slow link wants); site-c's 100 Continue comes only after site-a's last
    byte, not when its headers arrive (aiohttp's default): its body waited at the client."""
    monkeypatch.setattr(intake, "BODIES_ASKED_AHEAD", 1)

    async def play() -> tuple[int, int, int, list[tuple[int, dict[str, Any]]], list[str]]:
        async with aggregator(_job(buffers=1), tmp_path) as running:
            await running.join()
            body = bytes(running.delta(0.01))
            first, second = await _a_holder_and_one_waiting(running, body)
            sent_when_b_asked = first.sent
            third = await RawUpload.start(running, "site-c", body)

            async def sent_when_c_is_asked() -> int:
                assert await third.asked_for_body()
                return first.sent

            async with asyncio.timeout(20):
                await second.send()
                sent, _ = await asyncio.gather(
                    sent_when_c_is_asked(), first.send(piece=len(body) // 8 + 1, every=0.05)
                )
                await third.send()
                answers = [await upload.answer() for upload in (first, second, third)]
                await running.until(lambda e: e.persisted == 1)
            for upload in (first, second, third):
                upload.close()
            rounds = running.engine.ledger.rounds
            return sent_when_b_asked, sent, len(body), answers, rounds[0].answered

    sent_when_b_asked, sent, size, answers, answered = asyncio.run(play())
    assert sent_when_b_asked == 0, "site-b, asked ahead, was asked only later"
    assert sent == size, f"site-c was asked for its body when site-a had sent {sent} of {size}"
    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert sorted(answered) == SITES


def test_the_next_waiting_upload_is_asked_when_one_asked_ahead_is_handed_a_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One receive buffer and one body asked for ahead. site-a holds the buffer, site-b waits
    asked ahead, site-c waits unasked. Once site-a's update is handed on, site-b holds the
    buffer, and site-c takes its place ahead: asked while site-b's body is still on its way,
    not after its last byte, when the buffer would be site-c's."""
    monkeypatch.setattr(intake, "BODIES_ASKED_AHEAD", 1)
    sites = [*SITES, "site-d"]

    async def play() -> tuple[int, int, int, list[tuple[int, dict[str, Any]]], list[str]]:
        async with aggregator(_job(buffers=1, sites=sites), tmp_path) as running:
            await running.join()
            body = bytes(running.delta(0.01))
            first, second = await _a_holder_and_one_waiting(running, body)
            third = await RawUpload.start(running, "site-c", body)
            fourth = await RawUpload.start(running, "site-d", body)

            async def sent_by_b_when_asked(upload: RawUpload) -> int:
                assert await upload.asked_for_body()
                return second.sent

            slowly = {"piece": len(body) // 8 + 1, "every": 0.05}
            async with asyncio.timeout(20):
                d_asked = asyncio.create_task(sent_by_b_when_asked(fourth))
                await first.send()
                sent_c, _ = await asyncio.gather(sent_by_b_when_asked(third), second.send(**slowly))
                await third.send(**slowly)
                sent_d = await d_asked
                await fourth.send()
                answers = [await u.answer() for u in (first, second, third, fourth)]
                await running.until(lambda e: e.persisted == 1)
            for upload in (first, second, third, fourth):
                upload.close()
            answered = running.engine.ledger.rounds[0].answered
            return sent_c, sent_d, len(body), answers, answered

    sent_c, sent_d, size, answers, answered = asyncio.run(play())
    assert sent_c < size, "site-c was asked only once site-b's body was in: not promoted"
    assert sent_d == size, f"site-d was asked when site-b had sent {sent_d} of {size}: 2 ahead"
    assert [status for status, _ in answers] == [200] * 4, answers
    assert sorted(answered) == sites


def test_a_refusal_before_the_body_is_the_final_answer_and_no_body_is_awaited(
    tmp_path: Path,
) -> None:
    """An upload for a round that is not open: the refusal comes instead of 100 Continue,
    at once (no body to drain at the uploads' pace), and the connection closes."""

    async def play() -> tuple[bool, tuple[int, dict[str, Any]], bytes]:
        async with aggregator(_job(buffers=2), tmp_path) as running:
            await running.join()
            upload = await RawUpload.start(running, "site-a", b"x" * 4096, round_number=7)
            async with asyncio.timeout(5):
                asked = await upload.asked_for_body()
                answer = await upload.answer()
                rest = await upload.reader.read()  # b"": the aggregator hung up
            upload.close()
            return asked, answer, rest

    asked, (status, answer), rest = asyncio.run(play())
    assert not asked
    assert (status, answer["reason"]) == (409, "round_closed")
    assert rest == b""


def test_an_expectation_other_than_100_continue_is_refused(tmp_path: Path) -> None:
    async def play() -> int:
        async with aggregator(_job(buffers=2), tmp_path) as running:
            await running.join()
            upload = await RawUpload.start(running, "site-a", b"x", expect="200-ok")
            async with asyncio.timeout(5):
                status = int((await upload.first_line()).split()[1])
            upload.close()
            return status

    assert asyncio.run(play()) == 417


def test_an_upload_without_expect_is_read_as_before(tmp_path: Path) -> None:
    async def play() -> tuple[int, dict[str, Any]]:
        async with aggregator(_job(buffers=1), tmp_path) as running:
            await running.join()
            upload = await RawUpload.start(
                running, "site-a", bytes(running.delta(0.01)), expect=None
            )
            async with asyncio.timeout(10):
                await upload.send()
                answer = await upload.answer()
            upload.close()
            return answer

    status, answer = asyncio.run(play())
    assert status == 200, answer
