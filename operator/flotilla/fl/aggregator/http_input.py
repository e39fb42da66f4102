"""What a request carries, read and checked: who sends it, numbers, JSON bodies, resume headers.

Each reader raises a `Refused` (errors.py) naming the header or parameter and its value;
nothing here touches the engine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from flotilla.fl.aggregator.errors import (
    BadEncoding,
    BadHeader,
    BadJson,
    BadMetrics,
    BadPath,
    BadQuery,
    BadRange,
    BadReport,
    BadUploadId,
    Refused,
    TooLarge,
    Unauthenticated,
    WrongSite,
)
from flotilla.fl.aggregator.http_errors import content_encoded
from flotilla.fl.aggregator.reports import checked_label_report, checked_update_metrics
from flotilla.fl.aggregator.terms import Resumable
from flotilla.fl.aggregator.tokens import TokenBook
from flotilla.fl.headers import MODEL_HELD_HEADER, SITE_HEADER
from flotilla.fl.resume import (
    FRAME_BYTES_HEADER,
    RESUME_FROM_HEADER,
    UPLOAD_ID_HEADER,
    RangeError,
    checked_frame_bytes,
    checked_upload_id,
    parse_content_range,
    parse_range,
)
from flotilla.redaction import redact_urls

MAX_JSON_BYTES = 16 * 1024  # a report's body, or the metrics header
MAX_ERROR_CHARS = 2000


def authenticated(request: web.Request, tokens: TokenBook) -> str:
    """The site whose token the request carries; the site it claims, if any, must be that one
    (a token copied to another site's client is refused, not silently used)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    site = tokens.site_of(token) if scheme.lower() == "bearer" and token else None
    if site is None:
        raise Unauthenticated("missing or unknown bearer token")
    claimed = request.headers.get(SITE_HEADER)
    if claimed is not None and claimed != site:
        raise WrongSite(f"{SITE_HEADER} says {claimed[:64]!r} but the token is another site's")
    return site


def number(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(f"query parameter {name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise BadQuery(f"query parameter {name}={raw!r} is not finite")
    return value


def path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not is_count(raw):
        raise BadPath(f"{name} {raw!r} is not a non-negative integer")
    return int(raw)


def model_held(request: web.Request) -> int | None:
    """The model version the client holds (-1: none), or None when it did not say: then it
    takes only JSON from /v1/task."""
    raw = request.headers.get(MODEL_HELD_HEADER)
    if raw is None:
        return None
    value = raw.strip()
    if value != "-1" and not is_count(value):
        raise BadHeader(f"{MODEL_HELD_HEADER} {raw[:32]!r} is not a model version or -1")
    return int(value)


def is_count(raw: str) -> bool:
    # str.isdigit() alone takes "²" and other Unicode digits that int() refuses.
    return raw.isascii() and raw.isdigit() and len(raw) <= 20


def range_start(request: web.Request, size: int) -> int:
    """Where a download resumes (`Range: bytes=N-`); 0 without a Range."""
    raw = request.headers.get("Range")
    if raw is None:
        return 0
    try:
        return parse_range(raw, size)
    except RangeError as error:
        raise BadRange(str(error)) from None


def resumable(request: web.Request, *, zstd: bool) -> Resumable | None:
    """The upload's id, how a zstd body restarts, and where a resumed one starts."""
    headers = request.headers
    raw_range = headers.get("Content-Range")
    if UPLOAD_ID_HEADER not in headers:
        if raw_range is not None:
            raise BadRange(f"Content-Range needs the {UPLOAD_ID_HEADER} of the upload it resumes")
        return None
    upload_id = checked_id(headers[UPLOAD_ID_HEADER])
    try:
        raw_frames = headers.get(FRAME_BYTES_HEADER)
        frame_bytes = checked_frame_bytes(raw_frames) if zstd and raw_frames else 0
        resume = parse_content_range(raw_range) if raw_range is not None else None
        raw_from = headers.get(RESUME_FROM_HEADER)
        if raw_from is not None and not is_count(raw_from):
            raise RangeError(f"{RESUME_FROM_HEADER} {raw_from[:40]!r} is not a byte count")
    except RangeError as error:
        raise BadRange(str(error)) from None
    start = resume.start if resume else 0
    return Resumable(
        upload_id=upload_id,
        frame_bytes=frame_bytes,
        resume=resume,
        resume_from=int(raw_from) if raw_from is not None else start,
    )


def checked_id(raw: str) -> str:
    try:
        return checked_upload_id(raw)
    except RangeError as error:
        raise BadUploadId(str(error)) from None


async def json_object(request: web.Request, what: str) -> dict[str, Any]:
    if content_encoded(request):
        raise BadEncoding(f"send {what} as plain JSON, without Content-Encoding")
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge(f"{what} is too large")
    body = await request.content.read(MAX_JSON_BYTES + 1)
    if len(body) > MAX_JSON_BYTES:
        raise TooLarge(f"{what} is too large")
    value = loads(body, kind=BadJson, what=what)
    if not isinstance(value, dict):
        raise BadJson(f"{what} must be a JSON object")
    return value


def loads(raw: str | bytes, *, kind: type[Refused], what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise kind(f"{what} is not JSON: {error}") from None
    except RecursionError:  # "[[[[...": Python's decoder recurses per level
        raise kind(f"{what} is nested too deeply") from None


def site_report(site: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """{"ready": true, "data": {...}} or {"ready": false, "error": "..."}: nothing else kept."""
    ready = report.get("ready")
    if not isinstance(ready, bool):
        raise BadReport(f'site {site!r}: a site report needs "ready": true or false')
    if not ready:
        error = report.get("error")
        if not isinstance(error, str) or not error.strip():
            raise BadReport(f'site {site!r}: a site that is not ready must say why in "error"')
        # Kept, shown in /v1/status and stored in summaries: no URL credentials, whoever sent it.
        return {"ready": False, "error": redact_urls(error)[:MAX_ERROR_CHARS]}
    return {"ready": True, "data": checked_label_report(site, report.get("data", {}))}


def update_metrics(request: web.Request, site: str) -> dict[str, Any]:
    raw = request.headers.get("X-Flotilla-Metrics", "{}")
    if len(raw) > MAX_JSON_BYTES:
        raise BadMetrics(f"site {site!r}: X-Flotilla-Metrics is too large")
    return checked_update_metrics(site, loads(raw, kind=BadMetrics, what="X-Flotilla-Metrics"))
