"""The aggregator's HTTP API (aiohttp): clients dial in, long-poll for work, pull the model,
push their update. Translates HTTP to `RoundEngine` calls and `Rejected` to 4xx answers.

Routes (all under /v1; every client route takes `Authorization: Bearer <token>` and, once the
client knows it, `X-Flotilla-Site: <its site>`; a site that is not the token's is refused):
    GET  /healthz                      liveness
    GET  /metrics                      Prometheus metrics (unless served on a port of their own)
    GET  /v1/status?after=SEQ&wait=S   job progress; long-polls until it changes
    GET  /v1/history                   every completed round's record
    GET  /v1/job                       the job's spec, as the client needs it
    GET  /v1/task?wait=S               the caller's next action; long-polls
    GET  /v1/model/VERSION             the global model, safetensors (Range: bytes=N-, the rest)
    PUT  /v1/rounds/ROUND/update       the caller's delta, safetensors, maybe zstd; with
                                       X-Flotilla-Upload-Id and Content-Range, a broken one's rest
    GET  /v1/rounds/ROUND/update?upload=ID   how much of the caller's broken upload ID is held
    POST /v1/evaluations/VERSION       the caller's evaluation of the final model
    POST /v1/site-report               the caller's data: ready (label report) or its error
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.aiohttp import make_aiohttp_handler

from flotilla.fl.aggregator.engine import RoundEngine
from flotilla.fl.aggregator.intake import Rejected, Resumable
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.aggregator.pace import Progress
from flotilla.fl.aggregator.reports import (
    checked_eval_report,
    checked_label_report,
    checked_update_metrics,
    examples_count,
)
from flotilla.fl.aggregator.tokens import TokenBook
from flotilla.fl.resume import (
    FRAME_BYTES_HEADER,
    RESUME_FROM_HEADER,
    UPLOAD_ID_HEADER,
    ContentRange,
    RangeError,
    checked_frame_bytes,
    checked_upload_id,
    parse_content_range,
    parse_range,
)
from flotilla.redaction import redact_urls

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 20.0
# What a slow reader can hold in its transport buffer: the per-client memory of a download
# (4 MiB pieces measured as 4.3 MiB per extra client in bench/round_bench.py).
SEND_CHUNK = 1 << 20
MAX_METRICS_HEADER = 16 * 1024
MAX_ERROR_CHARS = 2000
SITE_HEADER = "X-Flotilla-Site"  # the site a client says it is; checked against its token

ENGINE = web.AppKey("engine", RoundEngine)
TOKENS = web.AppKey("tokens", TokenBook)
METRICS = web.AppKey("metrics", AggregatorMetrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    engine: RoundEngine,
    *,
    tokens: TokenBook,
    metrics: AggregatorMetrics,
    serve_metrics: bool = True,
) -> web.Application:
    """`tokens`: each site's bearer token, as they are now (they may change as it runs)."""
    app = web.Application(middlewares=[_errors])
    app[ENGINE] = engine
    app[TOKENS] = tokens
    app[METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    if serve_metrics:
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/history", _history)
    app.router.add_get("/v1/job", _job)
    app.router.add_get("/v1/task", _task)
    app.router.add_get("/v1/model/{version}", _model)
    app.router.add_put("/v1/rounds/{round}/update", _update)
    app.router.add_get("/v1/rounds/{round}/update", _upload_held)
    app.router.add_post("/v1/evaluations/{version}", _evaluation)
    app.router.add_post("/v1/site-report", _site_report)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Rejected as rejected:
        request.app[METRICS].rejected(rejected.reason)
        if request.method in ("PUT", "POST") and not rejected.close:
            await _drain(request, request.app[ENGINE].intake.max_body_bytes)
        log.info(
            "%s %s refused (%d %s): %s",
            request.method,
            request.path,
            rejected.status,
            rejected.reason,
            rejected,
        )
        response = web.json_response(
            {"error": str(rejected), "reason": rejected.reason}, status=rejected.status
        )
        if rejected.close:  # answer now, then hang up without reading the rest of the body
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response


async def _drain(request: web.Request, limit: int) -> None:
    """Read what is left of a refused body, so the client reads our answer, not a reset;
    at the uploads' pace (no round bound), so a trickling body is not waited for."""
    if (request.content_length or 0) > limit or _content_encoded(request):
        return  # reading a Content-Encoding body would decompress it: close instead
    loop = asyncio.get_running_loop()
    progress = Progress(
        request.app[ENGINE].intake.pace, size=limit, started=loop.time(), until=math.inf
    )
    with contextlib.suppress(
        OSError, aiohttp.ClientError, HttpProcessingError, web.RequestPayloadError
    ):
        async with asyncio.timeout_at(progress.due(contended=False)[0]) as timer:
            async for chunk in request.content.iter_any():
                progress.got(len(chunk), now=loop.time())
                timer.reschedule(progress.due(contended=False)[0])
                if progress.received > limit:
                    return


def _site(request: web.Request) -> str:
    """The site whose token the request carries; the site it claims, if any, must be that one
    (a token copied to another site's client is refused, not silently used)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    site = request.app[TOKENS].site_of(token) if scheme.lower() == "bearer" and token else None
    if site is None:
        raise Rejected(401, "unauthorized", "missing or unknown bearer token")
    claimed = request.headers.get(SITE_HEADER)
    if claimed is not None and claimed != site:
        raise Rejected(
            403,
            "wrong_site",
            f"{SITE_HEADER} says {claimed[:64]!r} but the token is another site's",
        )
    request.app[ENGINE].touch(site, _link_alive(request))
    return site


def _link_alive(request: web.Request) -> Callable[[], bool]:
    transport = request.transport
    return lambda: transport is not None and not transport.is_closing()


def _number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Rejected(
            400, "bad_query", f"query parameter {name}={raw!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise Rejected(400, "bad_query", f"query parameter {name}={raw!r} is not finite")
    return value


def _path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not _is_count(raw):
        raise Rejected(400, "bad_path", f"{name} {raw!r} is not a non-negative integer")
    return int(raw)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "phase": request.app[ENGINE].phase.value})


async def _status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    after = int(_number(request, "after", -1))
    wait = min(max(_number(request, "wait", 0), 0), MAX_WAIT_SECONDS)
    return web.json_response(await engine.wait_status(after=after, timeout=wait))


async def _history(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].ledger.history_json())


async def _job(request: web.Request) -> web.Response:
    site = _site(request)
    engine = request.app[ENGINE]
    return web.json_response(
        {
            "site": site,
            "spec": engine.job.to_dict(),
            "layoutHeader": engine.layout.header[8:].decode().rstrip(),
        }
    )


async def _task(request: web.Request) -> web.Response:
    site = _site(request)
    wait = min(max(_number(request, "wait", 0), 0), MAX_WAIT_SECONDS)
    return web.json_response(await request.app[ENGINE].wait_task(site, timeout=wait))


async def _model(request: web.Request) -> web.StreamResponse:
    site = _site(request)
    engine = request.app[ENGINE]
    version = _path_int(request, "version")
    payload = memoryview(engine.model_payload(version))
    start = _range_start(request, len(payload))
    response = web.StreamResponse(
        status=206 if start else 200,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Flotilla-Model-Version": str(version),
            "Accept-Ranges": "bytes",
        },
    )
    if start:
        response.headers["Content-Range"] = ContentRange(start, len(payload)).header()
        link = engine.intake.links.of(site)
        link.resumed_downloads += 1
        link.resumed_bytes += start
    response.content_length = len(payload) - start
    await response.prepare(request)
    # Bounded pieces: a slow reader holds at most one piece in its transport
    # buffer, not a whole model copy per client.
    try:
        for piece in range(start, len(payload), SEND_CHUNK):
            await response.write(payload[piece : piece + SEND_CHUNK])
        await response.write_eof()
    except (OSError, aiohttp.ClientError):
        engine.intake.links.of(site).download_resets += 1
        raise
    request.app[METRICS].sent(len(payload) - start)
    return response


def _range_start(request: web.Request, size: int) -> int:
    """Where a download resumes (`Range: bytes=N-`); 0 without a Range."""
    raw = request.headers.get("Range")
    if raw is None:
        return 0
    try:
        return parse_range(raw, size)
    except RangeError as error:
        raise Rejected(416, "bad_range", str(error)) from None


async def _update(request: web.Request) -> web.Response:
    site = _site(request)
    engine = request.app[ENGINE]
    limit = engine.intake.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Rejected(
            413,
            "too_large",
            f"the body has {request.content_length} bytes; this job's updates have at most {limit}",
        )
    # Not Content-Encoding: aiohttp would decompress that itself, unbounded, before our
    # size checks; our receiver decompresses in bounded pieces against the layout.
    if _content_encoded(request):
        raise Rejected(415, "bad_encoding", "send compressed updates with X-Flotilla-Compression")
    encoding = request.headers.get("X-Flotilla-Compression", "identity").lower()
    if encoding not in ("identity", "zstd"):
        raise Rejected(415, "bad_encoding", f"X-Flotilla-Compression {encoding!r} is not supported")
    kind = request.headers.get("X-Flotilla-Update", "delta").strip().lower()
    if kind not in ("delta", "weights"):
        raise Rejected(
            400, "bad_update_kind", f"X-Flotilla-Update {kind!r} is not 'delta' or 'weights'"
        )
    if kind == "weights" and engine.job.spec.compression.dtype != "float32":
        raise Rejected(
            400,
            "bad_update_kind",
            f"weights are sent as float32 only; this job sends "
            f"{engine.job.spec.compression.dtype} deltas",
        )
    examples = examples_count(site, request.headers.get("X-Flotilla-Examples", ""))
    metrics = _metrics(request, site)
    resumable = _resumable(request, zstd=encoding == "zstd")
    if resumable and resumable.resume and resumable.resume.total > limit:
        raise Rejected(
            413, "too_large", f"the upload has {resumable.resume.total} bytes; at most {limit}"
        )
    result = await engine.receive_update(
        site=site,
        round_number=_path_int(request, "round"),
        body=_pieces(request.content),
        zstd=encoding == "zstd",
        examples=examples,
        metrics=metrics,
        weights=kind == "weights",
        size=request.content_length,
        resumable=resumable,
    )
    return web.json_response(result)


async def _upload_held(request: web.Request) -> web.Response:
    site = _site(request)
    round_number = _path_int(request, "round")
    try:
        upload_id = checked_upload_id(request.query.get("upload", ""))
    except RangeError as error:
        raise Rejected(400, "bad_upload_id", str(error)) from None
    held = await request.app[ENGINE].upload_held(
        site=site, round_number=round_number, upload_id=upload_id
    )
    return web.json_response({"upload": upload_id, "round": round_number, "received": held})


def _resumable(request: web.Request, *, zstd: bool) -> Resumable | None:
    """The upload's id, how a zstd body restarts, and where a resumed one starts."""
    headers = request.headers
    raw_range = headers.get("Content-Range")
    if UPLOAD_ID_HEADER not in headers:
        if raw_range is not None:
            message = f"Content-Range needs the {UPLOAD_ID_HEADER} of the upload it resumes"
            raise Rejected(400, "bad_range", message)
        return None
    try:
        upload_id = checked_upload_id(headers[UPLOAD_ID_HEADER])
    except RangeError as error:
        raise Rejected(400, "bad_upload_id", str(error)) from None
    try:
        raw_frames = headers.get(FRAME_BYTES_HEADER)
        frame_bytes = checked_frame_bytes(raw_frames) if zstd and raw_frames else 0
        resume = parse_content_range(raw_range) if raw_range is not None else None
        raw_from = headers.get(RESUME_FROM_HEADER)
        if raw_from is not None and not _is_count(raw_from):
            raise RangeError(f"{RESUME_FROM_HEADER} {raw_from[:40]!r} is not a byte count")
    except RangeError as error:
        raise Rejected(416, "bad_range", str(error)) from None
    start = resume.start if resume else 0
    return Resumable(
        upload_id=upload_id,
        frame_bytes=frame_bytes,
        resume=resume,
        resume_from=int(raw_from) if raw_from is not None else start,
    )


async def _pieces(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body piece by piece, as the socket delivered it. Unlike `iter_any`, which joins
    every piece waiting into one new bytes object, this copies nothing: under load (many
    clients uploading while the fold runs) that join was a second copy of the backlog."""
    while not content.at_eof():
        data, _ = await content.readchunk()  # (b"", ...) at an HTTP chunk's end or the body's
        if data:
            yield data


async def _evaluation(request: web.Request) -> web.Response:
    site = _site(request)
    version = _path_int(request, "version")
    report = await _json_object(request, "the evaluation report")
    metrics = checked_eval_report(site, report)
    request.app[ENGINE].receive_evaluation(site=site, version=version, metrics=metrics)
    return web.json_response({"accepted": True})


async def _site_report(request: web.Request) -> web.Response:
    site = _site(request)
    report = await _json_object(request, "the site report")
    request.app[ENGINE].receive_site_report(site, _checked_site_report(site, report))
    return web.json_response({"accepted": True})


async def _json_object(request: web.Request, what: str) -> dict[str, Any]:
    if _content_encoded(request):
        raise Rejected(415, "bad_encoding", f"send {what} as plain JSON, without Content-Encoding")
    if (request.content_length or 0) > MAX_METRICS_HEADER:
        raise Rejected(413, "too_large", f"{what} is too large")
    body = await request.content.read(MAX_METRICS_HEADER + 1)
    if len(body) > MAX_METRICS_HEADER:
        raise Rejected(413, "too_large", f"{what} is too large")
    value = _loads(body, reason="bad_json", what=what)
    if not isinstance(value, dict):
        raise Rejected(400, "bad_json", f"{what} must be a JSON object")
    return value


def _content_encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() != "identity"


def _loads(raw: str | bytes, *, reason: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise Rejected(400, reason, f"{what} is not JSON: {error}") from None
    except RecursionError:  # "[[[[...": Python's decoder recurses per level
        raise Rejected(400, reason, f"{what} is nested too deeply") from None


def _checked_site_report(site: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """{"ready": true, "data": {...}} or {"ready": false, "error": "..."}: nothing else kept."""
    ready = report.get("ready")
    if not isinstance(ready, bool):
        raise Rejected(400, "bad_report", 'a site report needs "ready": true or false')
    if not ready:
        error = report.get("error")
        if not isinstance(error, str) or not error.strip():
            raise Rejected(400, "bad_report", 'a site that is not ready must say why in "error"')
        # Kept, shown in /v1/status and stored in summaries: no URL credentials, whoever sent it.
        return {"ready": False, "error": redact_urls(error)[:MAX_ERROR_CHARS]}
    return {"ready": True, "data": checked_label_report(site, report.get("data", {}))}


def _metrics(request: web.Request, site: str) -> dict[str, Any]:
    raw = request.headers.get("X-Flotilla-Metrics", "{}")
    if len(raw) > MAX_METRICS_HEADER:
        raise Rejected(400, "bad_metrics", f"site {site!r}: X-Flotilla-Metrics is too large")
    return checked_update_metrics(
        site, _loads(raw, reason="bad_metrics", what="X-Flotilla-Metrics")
    )


def _is_count(raw: str) -> bool:
    # str.isdigit() alone takes "²" and other Unicode digits that int() refuses.
    return raw.isascii() and raw.isdigit() and len(raw) <= 20
