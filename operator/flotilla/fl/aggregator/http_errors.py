"""Refusals as HTTP answers: each kind of `Refused` (errors.py) to its status and wire reason.

The one place that knows both: the engine raises domain refusals, the clients read the
status and the `reason` of a JSON body `{"error": message, "reason": reason}`. A refused
body is read to its end at the uploads' pace (so the client reads the answer, not a
reset), unless the refusal cut it off or the client holds the body back until asked for it
(http_continue.py): then the answer goes at once and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from flotilla.fl.aggregator import errors, http_continue
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.pace import Progress

log = logging.getLogger(__name__)

# The status and the wire reason of each refusal. Clients act on them (fl/client/transport.py):
# 409 round_closed, 410 stale_version and 410 too_stale move on to the next task, 401 retries
# with backoff, 404 unknown_upload and 416 bad_range send an update again from byte 0, 503
# retries.
ANSWERS: Mapping[type[errors.Refused], tuple[int, str]] = {
    errors.Unauthenticated: (401, "unauthorized"),
    errors.WrongSite: (403, "wrong_site"),
    errors.RoundClosed: (409, "round_closed"),
    errors.NotSampled: (403, "not_sampled"),
    errors.AlreadyAnswered: (409, "duplicate"),
    errors.AlreadyFolded: (409, "duplicate"),
    errors.StaleVersion: (410, "stale_version"),
    errors.TooStale: (410, "too_stale"),
    errors.UnknownVersion: (404, "unknown_version"),
    errors.NotEvaluating: (409, "not_evaluating"),
    errors.EvaluationNotAsked: (409, "stale_version"),
    errors.UploadInProgress: (409, "duplicate"),
    errors.TooLarge: (413, "too_large"),
    errors.BadPayload: (400, "bad_payload"),
    errors.BadValues: (422, "bad_values"),
    errors.TooSlow: (408, "too_slow"),
    errors.Yielded: (503, "yielded"),
    errors.ConnectionLost: (400, "connection_lost"),
    errors.Superseded: (409, "superseded"),
    errors.UnknownUpload: (404, "unknown_upload"),
    errors.BadRange: (416, "bad_range"),
    errors.BadExamples: (400, "bad_examples"),
    errors.BadMetrics: (400, "bad_metrics"),
    errors.BadReport: (400, "bad_report"),
    errors.BadQuery: (400, "bad_query"),
    errors.BadPath: (400, "bad_path"),
    errors.BadHeader: (400, "bad_header"),
    errors.BadEncoding: (415, "bad_encoding"),
    errors.BadUpdateKind: (400, "bad_update_kind"),
    errors.BadUploadId: (400, "bad_upload_id"),
    errors.BadJson: (400, "bad_json"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer_for(refused: errors.Refused) -> tuple[int, str]:
    """The status and wire reason of a refusal (of its nearest kind in the table)."""
    for kind in type(refused).__mro__:
        if kind in ANSWERS:
            return ANSWERS[kind]
    raise TypeError(f"no HTTP answer for {type(refused).__name__}")  # a kind left out above


def refusals(*, intake: UpdateIntake, on_refused: Callable[[str], None]) -> Middleware:
    """The middleware that answers refusals; `on_refused(reason)` counts each."""

    @web.middleware
    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.Refused as refused:
            status, reason = answer_for(refused)
            on_refused(reason)
            withheld = http_continue.withheld(request)  # the body never left the client
            cut = refused.cut or withheld
            if request.method in ("PUT", "POST") and not cut:
                await _drain(request, intake)
            log.info(
                "%s %s refused (%d %s): %s", request.method, request.path, status, reason, refused
            )
            response = web.json_response({"error": str(refused), "reason": reason}, status=status)
            if cut:  # answer now, then hang up without reading the rest of the body
                response.force_close()
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
            return response

    return answer


def content_encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() != "identity"


async def _drain(request: web.Request, intake: UpdateIntake) -> None:
    """Read what is left of a refused body, so the client reads our answer, not a reset;
    at the uploads' pace (no round bound), so a trickling body is not waited for."""
    limit = intake.max_body_bytes
    if (request.content_length or 0) > limit or content_encoded(request):
        return  # reading a Content-Encoding body would decompress it: close instead
    loop = asyncio.get_running_loop()
    progress = Progress(intake.pace, size=limit, started=loop.time(), until=math.inf)
    with contextlib.suppress(
        OSError, aiohttp.ClientError, HttpProcessingError, web.RequestPayloadError
    ):
        async with asyncio.timeout_at(progress.due(contended=False)[0]) as timer:
            async for chunk in request.content.iter_any():
                progress.got(len(chunk), now=loop.time())
                timer.reschedule(progress.due(contended=False)[0])
                if progress.received > limit:
                    return
