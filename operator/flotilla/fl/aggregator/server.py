"""The aggregator's HTTP API (aiohttp): clients dial in, long-poll for work, pull the model,
push their update. Translates HTTP to calls of the engine's client desk, and its refusals to
4xx answers (http_errors.py).

Routes (all under /v1; every client route takes `Authorization: Bearer <token>` and, once the
client knows it, `X-Flotilla-Site: <its site>`; a site that is not the token's is refused):
    GET  /healthz                      liveness
    GET  /metrics                      Prometheus metrics (unless served on a port of their own)
    GET  /v1/status?after=SEQ&wait=S   job progress; long-polls until it changes
    GET  /v1/history                   every completed round's record
    GET  /v1/job                       the job's spec, as the client needs it
    GET  /v1/task?wait=S               the caller's next action; long-polls. With
                                       X-Flotilla-Model-Held, a model up to 1 MiB that the
                                       action needs comes as the body, the task in X-Flotilla-Task
    GET  /v1/model/VERSION             the global model, safetensors (Range: bytes=N-, the rest)
    PUT  /v1/rounds/ROUND/update       the caller's delta, safetensors, maybe zstd; with
                                       X-Flotilla-Upload-Id and Content-Range, a broken one's rest
    GET  /v1/rounds/ROUND/update?upload=ID   how much of the caller's broken upload ID is held
    POST /v1/evaluations/VERSION       the caller's evaluation of the final model
    POST /v1/site-report               the caller's data: ready (label report) or its error
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from flotilla.fl.aggregator import http_continue
from flotilla.fl.aggregator import http_input as read
from flotilla.fl.aggregator.connection_buffers import FleetSizedBuffers
from flotilla.fl.aggregator.engine import RoundEngine
from flotilla.fl.aggregator.errors import BadEncoding, BadUpdateKind, TooLarge
from flotilla.fl.aggregator.http_errors import content_encoded, refusals
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.aggregator.reports import checked_eval_report, examples_count
from flotilla.fl.aggregator.tokens import TokenBook
from flotilla.fl.headers import TASK_HEADER
from flotilla.fl.resume import ContentRange

log = logging.getLogger(__name__)

# aiohttp's C request parser (llhttp) reads a request's head several times faster than its
# Python parser, but copies every piece of a body into a new bytes object, where the Python
# parser hands the socket's piece on as it is. Past this many bytes an update's body is
# what a round is made of (the copy was a third pass over every byte received: ~7% of a
# round at 10M parameters x 32 clients), so the Python parser reads it; below, a round is
# many small requests (two or three a site: its task, the model unless it came with the
# task, its update), and at 1,000 sites
# of the digits CNN the C parser took 0.16-0.45 s off a round (bench/README.md).
PYTHON_PARSER_PAST_BYTES = 1 << 20

MAX_WAIT_SECONDS = 20.0

# A model up to this size comes in the answer of the task that needs it, to a client that
# says which it holds (fl/headers.py, MODEL_HELD_HEADER): one request a site a round fewer (at
# 1,000 sites a third of the requests), and on a far link one round trip fewer. A bigger
# model is fetched on its own, where a broken download goes on from its bytes (Range).
INLINE_MODEL_BYTES = 1 << 20
NEEDS_MODEL = ("train", "evaluate")

ENGINE = web.AppKey("engine", RoundEngine)
TOKENS = web.AppKey("tokens", TokenBook)
METRICS = web.AppKey("metrics", AggregatorMetrics)
BUFFERS = web.AppKey("buffers", FleetSizedBuffers)
# /v1/job's answer but the caller's name, serialized once: every site asks it on joining,
# and the spec through pydantic cost ~1.5 ms a join (1.5 s of a round at 1,000 sites).
JOB_JSON = web.AppKey("job_json", str)


def choose_request_parser(update_bytes: int) -> type:
    """The request parser for updates of `update_bytes`, for every connection made after
    this in this process (aiohttp makes each connection's parser from a module global of
    web_protocol; it offers no per-server choice). Returns it."""
    from aiohttp import http_parser, web_protocol

    c_parser = getattr(http_parser, "HttpRequestParserC", None)  # None: AIOHTTP_NO_EXTENSIONS
    python_parser = http_parser.HttpRequestParserPy
    chosen = python_parser if update_bytes > PYTHON_PARSER_PAST_BYTES else c_parser
    chosen = chosen or python_parser
    setattr(web_protocol, "HttpRequestParser", chosen)  # noqa: B010 (not exported)
    return chosen


def build_app(
    engine: RoundEngine,
    *,
    tokens: TokenBook,
    metrics: AggregatorMetrics,
    serve_metrics: bool = True,
    buffers: FleetSizedBuffers | None = None,
) -> web.Application:
    """`tokens`: each site's bearer token, as they are now (they may change as it runs).
    `buffers`: what each connection may hold, as the fleet is now (sized for `tokens`'
    sites if not given)."""
    app = web.Application(middlewares=[refusals(intake=engine.intake, on_refused=metrics.rejected)])
    app[ENGINE] = engine
    app[TOKENS] = tokens
    app[METRICS] = metrics
    app[BUFFERS] = buffers or FleetSizedBuffers(len(tokens.sites))
    app[JOB_JSON] = json.dumps(
        {"spec": engine.job.to_dict(), "layoutHeader": engine.layout.header[8:].decode().rstrip()}
    )
    app.router.add_get("/healthz", _healthz)
    if serve_metrics:
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/history", _history)
    app.router.add_get("/v1/job", _job)
    app.router.add_get("/v1/task", _task)
    app.router.add_get("/v1/model/{version}", _model)
    app.router.add_put(
        "/v1/rounds/{round}/update", _update, expect_handler=http_continue.ask_when_read
    )
    app.router.add_get("/v1/rounds/{round}/update", _upload_held)
    app.router.add_post("/v1/evaluations/{version}", _evaluation)
    app.router.add_post("/v1/site-report", _site_report)
    return app


def _caller(request: web.Request) -> str:
    """The site a client request comes from (its token says, read.authenticated); the
    request also tells the desk the site is there, its link open (presence)."""
    site = read.authenticated(request, request.app[TOKENS])
    request.app[ENGINE].desk.seen(site, _link_alive(request))
    return site


def _link_alive(request: web.Request) -> Callable[[], bool]:
    transport = request.transport
    return lambda: transport is not None and not transport.is_closing()


def _wait(request: web.Request) -> float:
    return min(max(read.number(request, "wait", 0), 0), MAX_WAIT_SECONDS)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "phase": request.app[ENGINE].phase.value})


async def _status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    after = int(read.number(request, "after", -1))
    wait = _wait(request)
    return web.json_response(await engine.wait_status(after=after, timeout=wait))


async def _history(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].ledger.history_json())


async def _job(request: web.Request) -> web.Response:
    site = json.dumps(_caller(request))
    return web.Response(
        text=f'{{"site": {site}, {request.app[JOB_JSON][1:]}', content_type="application/json"
    )


async def _task(request: web.Request) -> web.StreamResponse:
    site = _caller(request)
    wait = _wait(request)
    held = read.model_held(request)
    desk = request.app[ENGINE].desk
    task = await desk.wait_task(site, timeout=wait)
    version = task["modelVersion"]
    if held is None or task["action"] not in NEEDS_MODEL or version == held:
        return web.json_response(task)
    payload = desk.model_payload(version)  # the task's own: no await since it was read
    if len(payload) > INLINE_MODEL_BYTES:
        return web.json_response(task)
    return await _send_model(request, site, version, memoryview(payload), task=task)


async def _model(request: web.Request) -> web.StreamResponse:
    site = _caller(request)
    engine = request.app[ENGINE]
    version = read.path_int(request, "version")
    payload = memoryview(engine.desk.model_payload(version))
    start = read.range_start(request, len(payload))
    if start:
        link = engine.intake.links.of(site)
        link.resumed_downloads += 1
        link.resumed_bytes += start
    return await _send_model(request, site, version, payload, start=start)


async def _send_model(
    request: web.Request,
    site: str,
    version: int,
    payload: memoryview,
    *,
    start: int = 0,
    task: dict[str, object] | None = None,
) -> web.StreamResponse:
    """The model from byte `start` (a 206 from past 0); with `task`, as that task's answer."""
    engine = request.app[ENGINE]
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
    if task is not None:
        response.headers[TASK_HEADER] = json.dumps(task)
    response.content_length = len(payload) - start
    await response.prepare(request)
    # Bounded pieces: a slow reader holds at most one piece in its transport
    # buffer, not a whole model copy per client (connection_buffers.py).
    size = request.app[BUFFERS].current.send_piece
    try:
        for piece in range(start, len(payload), size):
            await response.write(payload[piece : piece + size])
        await response.write_eof()
    except (OSError, aiohttp.ClientError):
        engine.intake.links.of(site).download_resets += 1
        raise
    request.app[METRICS].sent(len(payload) - start)
    return response


async def _update(request: web.Request) -> web.Response:
    site = _caller(request)
    engine = request.app[ENGINE]
    limit = engine.intake.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(
            f"the body has {request.content_length} bytes; this job's updates have at most {limit}"
        )
    # Not Content-Encoding: aiohttp would decompress that itself, unbounded, before our
    # size checks; our receiver decompresses in bounded pieces against the layout.
    if content_encoded(request):
        raise BadEncoding("send compressed updates with X-Flotilla-Compression")
    encoding = request.headers.get("X-Flotilla-Compression", "identity").lower()
    if encoding not in ("identity", "zstd"):
        raise BadEncoding(f"X-Flotilla-Compression {encoding!r} is not supported")
    kind = request.headers.get("X-Flotilla-Update", "delta").strip().lower()
    if kind not in ("delta", "weights"):
        raise BadUpdateKind(f"X-Flotilla-Update {kind!r} is not 'delta' or 'weights'")
    dtype = engine.job.spec.compression.dtype
    if kind == "weights" and dtype != "float32":
        raise BadUpdateKind(f"weights are sent as float32 only; this job sends {dtype} deltas")
    examples = examples_count(site, request.headers.get("X-Flotilla-Examples", ""))
    metrics = read.update_metrics(request, site)
    resumable = read.resumable(request, zstd=encoding == "zstd")
    if resumable and resumable.resume and resumable.resume.total > limit:
        raise TooLarge(f"the upload has {resumable.resume.total} bytes; at most {limit}")
    result = await engine.desk.receive_update(
        site=site,
        round_number=read.path_int(request, "round"),
        body=http_continue.RequestBody(request),
        zstd=encoding == "zstd",
        examples=examples,
        metrics=metrics,
        weights=kind == "weights",
        size=request.content_length,
        resumable=resumable,
    )
    return web.json_response(result)


async def _upload_held(request: web.Request) -> web.Response:
    site = _caller(request)
    round_number = read.path_int(request, "round")
    upload_id = read.checked_id(request.query.get("upload", ""))
    held = await request.app[ENGINE].desk.upload_held(
        site=site, round_number=round_number, upload_id=upload_id
    )
    return web.json_response({"upload": upload_id, "round": round_number, "received": held})


async def _evaluation(request: web.Request) -> web.Response:
    site = _caller(request)
    version = read.path_int(request, "version")
    report = await read.json_object(request, "the evaluation report")
    metrics = checked_eval_report(site, report)
    request.app[ENGINE].desk.receive_evaluation(site=site, version=version, metrics=metrics)
    return web.json_response({"accepted": True})


async def _site_report(request: web.Request) -> web.Response:
    site = _caller(request)
    report = await read.json_object(request, "the site report")
    request.app[ENGINE].desk.receive_site_report(site, read.site_report(site, report))
    return web.json_response({"accepted": True})
