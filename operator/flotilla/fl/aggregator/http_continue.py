"""An upload's body is asked for when a receive buffer is its (`Expect: 100-continue`).

A client sends the update's headers with `Expect: 100-continue` and holds the body back.
The aggregator answers `100 Continue` when the intake starts reading the body, which is
once the upload holds a receive buffer (intake.py), or earlier for the few that have
waited longest for one (`intake.BODIES_ASKED_AHEAD`: a slow link is busy while it waits);
a refusal before then (a closed round, a site not sampled) is the final answer, and no
body byte crossed the link. So an upload waiting its turn beyond those holds nothing at the
aggregator: no body in its connection's read buffer, none in its socket's kernel buffers.
At 1,000 sites those waiting bodies were most of the aggregator's memory per site, and at
1M x 1,000 they put the host's TCP stack in memory pressure (bench/README.md, "Waiting
uploads hold nothing").

A client that sends no `Expect` is served as before: its body waits in the buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http import HttpVersion11

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ASKED = web.RequestKey("flotilla_body_asked_for", bool)


async def ask_when_read(request: web.Request) -> None:
    """The update route's expect handler: 100 Continue is not sent here, at the request's
    arrival (aiohttp's default), but by `RequestBody.ask`: when the intake asks for it or
    first reads it."""
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Expect {expect[:64]!r} is not supported")


def withheld(request: web.Request) -> bool:
    """The client holds the body back until it is asked for, and it was not: a refusal
    now is answered without reading the body, and the connection closes (the client may
    still send it after its patience runs out, and no next request could be told from it)."""
    return _expects_continue(request) and not request.get(_ASKED, False)


class RequestBody:
    """An update request's body: read piece by piece, as the socket delivered it, and asked
    for first if the client waits to be asked (by the intake, `ask`, or on the first read).
    Unlike `iter_any`, which joins every piece waiting into one new bytes object, reading
    copies nothing: under load (many clients uploading while the fold runs) that join was a
    second copy of the backlog."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    async def ask(self) -> None:
        """Ask the client for its body now, if it waits to be asked and was not yet."""
        request = self._request
        if withheld(request):
            request[_ASKED] = True
            # A client gone meanwhile: its read (or its lease's pace) finds out.
            with contextlib.suppress(ConnectionError):
                await request.writer.write(CONTINUE)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        await self.ask()
        content = self._request.content
        while not content.at_eof():
            data, _ = await content.readchunk()  # (b"", ...) at an HTTP chunk's end or the body's
            if data:
                yield data


def _expects_continue(request: web.Request) -> bool:
    return (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").strip().lower() == "100-continue"
    )
