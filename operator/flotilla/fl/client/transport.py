"""The client's one connection to its aggregator: blocking HTTP/1.1, kept alive across rounds.

A client has one thing to do at a time (wait, download, train, upload), so a
plain `http.client` connection fits: no event loop on edge nodes, the model is
read with `readinto` straight into a buffer allocated once, and the update is
sent from the client's own buffer without a copy. The client always dials
(edge nodes sit behind NAT); a lost connection is re-dialled with backoff, and a
transfer it broke resumes where it stopped (flotilla.fl.resume): a download with a
byte range, an upload from what the aggregator says it holds.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from flotilla.fl.client.continued import expect_continue
from flotilla.fl.headers import MODEL_HELD_HEADER, SITE_HEADER, TASK_HEADER
from flotilla.fl.resume import (
    RESUME_FROM_HEADER,
    RESUME_REFUSALS,
    UPLOAD_ID_HEADER,
    ContentRange,
    RangeError,
    Restarts,
    new_upload_id,
    parse_content_range,
)

if TYPE_CHECKING:
    from flotilla.fl.wire import Buffer

T = TypeVar("T")

log = logging.getLogger(__name__)

# A download is read in pieces: a reset loses at most the piece being read (a buffered
# readinto fills its whole target or raises, so one model-sized read would lose it all).
# A 64th of the model, from 16 KiB to 1 MiB: large models in 1 MiB pieces (half the client
# CPU of 16 KiB ones on plain HTTP, 4-9% less with TLS: bench/README.md), small ones in
# pieces small enough that a reset costs a sliver of the model.
MIN_READ_PIECE, MAX_READ_PIECE = 16 << 10, 1 << 20
RETRYABLE = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException, OSError)


class AggregatorUnavailable(Exception):
    """The aggregator did not answer within the client's patience."""


class AggregatorUntrusted(Exception):
    """The aggregator's certificate does not verify against the CA this client trusts:
    retrying cannot help, and talking on would hand the token to whoever answered."""


class AggregatorRefused(Exception):
    """The aggregator answered with a 4xx: the request itself is wrong."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


@dataclass
class TransferStats:
    """What broke and what resuming saved, by direction ("up": uploads, "down": downloads)."""

    resets: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    resumed_bytes: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    give_up_after: float = 600.0  # 0: never (a cluster's client waits as long as it takes)

    def expired(self, started: float) -> bool:
        return self.give_up_after > 0 and time.monotonic() - started > self.give_up_after

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (0.5 + random.random() / 2)
            delay = min(delay * 2, self.maximum)


class AggregatorConnection:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        backoff: Backoff | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        site: str | None = None,
    ) -> None:
        """`site`: this client's site when it knows it before asking /v1/job; sent as
        X-Flotilla-Site, which the aggregator checks against the token's site."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"aggregator URL {url!r} must be http(s)://host:port")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._prefix = parsed.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        if site:
            self.set_site(site)
        self._backoff = backoff or Backoff()
        self._ssl = ssl_context
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.stats = TransferStats()

    def set_site(self, site: str) -> None:
        self._headers[SITE_HEADER] = site

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def get_json(self, path: str) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            return _json_body(self._request("GET", path))

        return self._with_retries(attempt)

    def get_task(
        self, *, wait: float, held: int | None, into: Buffer
    ) -> tuple[dict[str, Any], bool]:
        """The next task (/v1/task, a long-poll of `wait` seconds) and whether `into` now
        holds the model it names: the aggregator sends a small model a task needs with the
        task, unless it is version `held`. A model body broken partway goes on from its
        bytes through /v1/model (Range). Whatever `into` held is lost once this raises."""
        query = f"?{urllib.parse.urlencode({'wait': wait})}"
        headers = {MODEL_HELD_HEADER: str(-1 if held is None else held)}

        def attempt() -> tuple[dict[str, Any], http.client.HTTPResponse | None]:
            response = self._request(
                "GET", "/v1/task" + query, headers=headers, timeout=self._timeout + wait
            )
            raw = response.getheader(TASK_HEADER)
            if raw is None or response.status != 200:
                return _json_body(response), None
            return _task_of(raw, response), response

        task, response = self._with_retries(attempt)
        if response is None:
            return task, False
        filled = _Filled()
        try:
            self._download_start(response, len(into), asked=0)
            _read_into(response, memoryview(into), filled)
        except RETRYABLE as error:
            self.close()
            log.info("the model in the task's answer broke at byte %d: %s", filled.upto, error)
            self.download_into(f"/v1/model/{task['modelVersion']}", into, start=filled.upto)
        return task, True

    def post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()

        def attempt() -> dict[str, Any]:
            response = self._request(
                "POST", path, body=data, headers={"Content-Type": "application/json"}
            )
            return _json_body(response)

        return self._with_retries(attempt)

    def download_into(self, path: str, buffer: Buffer, *, start: int = 0) -> None:
        """Read a body of exactly len(buffer) bytes into `buffer`; a broken download goes on
        from the bytes it has (`Range`), unless the aggregator answers with the whole body.
        `start`: bytes already in `buffer` from a download that broke."""
        view, filled = memoryview(buffer), _Filled(start)

        def attempt() -> None:
            if filled.upto:
                self.stats.resets["down"] += 1
            ranged = {"Range": f"bytes={filled.upto}-"} if filled.upto else None
            response = self._request("GET", path, headers=ranged)
            filled.upto = self._download_start(response, len(view), asked=filled.upto)
            _read_into(response, view, filled)

        self._with_retries(attempt)

    def _download_start(self, response: http.client.HTTPResponse, size: int, *, asked: int) -> int:
        """Where this response's body starts in the whole model; checks it is that model."""
        if response.status == 416:  # the range was refused: start over
            response.read()
            raise ConnectionError(f"the aggregator refused to resume at byte {asked}")
        if response.status not in (200, 206):
            _json_body(response)  # raises with the server's reason
        start, total = 0, response.length
        if response.status == 206:
            try:
                answered = parse_content_range(response.getheader("Content-Range") or "")
            except RangeError as error:
                response.close()
                raise AggregatorRefused(502, "bad_range", str(error)) from None
            start, total = answered.start, answered.total
        if total != size or start != (asked if response.status == 206 else 0):
            response.close()
            raise AggregatorRefused(
                502,
                "bad_size",
                f"model body has {total} bytes from byte {start}, expected {size} from "
                f"{asked}: the aggregator serves another model",
            )
        if start:
            self.stats.resumed_bytes["down"] += start
            log.info("resuming the model download at byte %d of %d", start, size)
        return start

    def upload(
        self,
        path: str,
        body: memoryview,
        headers: Mapping[str, str],
        *,
        restarts: Restarts | None = None,
    ) -> dict[str, Any]:
        """PUT `body`; after a broken connection, ask how much the aggregator holds and send
        the rest. `restarts`: where the body may restart (a zstd body: at its frames)."""
        restarts = restarts or Restarts()
        upload_id = new_upload_id()
        fixed = dict(headers) | {UPLOAD_ID_HEADER: upload_id} | restarts.headers()
        tries = 0

        def attempt() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            held = self._upload_held(path, upload_id) if tries > 1 else 0
            if held:
                try:
                    return self._put_rest(path, body, fixed, held=held, restarts=restarts)
                except AggregatorRefused as refused:
                    if refused.reason not in RESUME_REFUSALS:
                        raise
                    log.info("the aggregator cannot resume this upload (%s): from byte 0", refused)
            return self._put(path, body=body, headers=fixed)

        return self._with_retries(attempt)

    def _upload_held(self, path: str, upload_id: str) -> int:
        """The payload bytes of the broken upload the aggregator holds (0: none)."""
        self.stats.resets["up"] += 1
        query = urllib.parse.urlencode({"upload": upload_id})
        try:
            return int(_json_body(self._request("GET", f"{path}?{query}"))["received"])
        except AggregatorRefused as refused:
            if refused.reason not in RESUME_REFUSALS:
                raise
        except (KeyError, ValueError, TypeError) as error:
            log.warning("the aggregator's answer on the broken upload is unusable: %s", error)
        return 0

    def _put_rest(
        self,
        path: str,
        body: memoryview,
        headers: Mapping[str, str],
        *,
        held: int,
        restarts: Restarts,
    ) -> dict[str, Any]:
        """The rest of `body` after the `held` payload bytes the aggregator holds."""
        try:
            start = restarts.wire_offset(held)
        except RangeError as error:
            raise AggregatorRefused(416, "bad_range", str(error)) from None
        resumed = dict(headers) | {
            "Content-Range": ContentRange(start, len(body)).header(),
            RESUME_FROM_HEADER: str(held),
        }
        log.info("resuming the upload at byte %d of %d", start, len(body))
        answer = self._put(path, body=body[start:], headers=resumed)
        self.stats.resumed_bytes["up"] += start
        return answer

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | memoryview | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        conn = self._connection(timeout or self._timeout)
        all_headers = self._headers | dict(headers or {})
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        try:
            conn.request(method, self._prefix + path, body=body, headers=all_headers)
            return conn.getresponse()
        except BaseException:
            self.close()
            raise

    def _put(self, path: str, *, body: memoryview, headers: Mapping[str, str]) -> dict[str, Any]:
        """PUT `body` once the aggregator asks for it (`Expect: 100-continue`, continued.py):
        an upload waiting for a receive buffer there holds its body here."""
        conn = self._connection(self._timeout)
        all_headers = self._headers | dict(headers)
        all_headers |= {"Content-Length": str(len(body)), "Expect": "100-continue"}
        try:
            conn.request("PUT", self._prefix + path, headers=all_headers)  # the headers only
            early = expect_continue(conn, method="PUT", patience=self._timeout)
            if early is None:
                conn.send(body)
                response = conn.getresponse()
        except BaseException:
            self.close()
            raise
        if early is None:
            return _json_body(response)
        try:  # answered before the body: this connection cannot carry another request
            return _json_body(early)
        finally:
            self.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        """The kept-alive connection (dialled when there is none), with `timeout` per
        socket operation from now on."""
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def _hint(self, error: BaseException) -> str:
        if self._scheme == "http" and isinstance(error, http.client.RemoteDisconnected):
            return " (does the aggregator serve HTTPS? then dial https:// with --ca-file)"
        if self._scheme == "https" and "WRONG_VERSION_NUMBER" in str(error):
            return " (does the aggregator serve plain HTTP? its spec disables TLS)"
        return ""

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        started = time.monotonic()
        delays = self._backoff.delays()
        while True:
            try:
                return attempt()
            except AggregatorRefused as refused:
                # A site that just joined is admitted once the aggregator has read its token
                # (a mounted Secret's refresh); so is every site after a resume rotated them.
                if (
                    refused.status != 401
                    or time.monotonic() - started > self._backoff.give_up_after
                ):
                    raise
                delay = next(delays)
                log.warning(
                    "the aggregator does not know this site's token (yet): %s; a site that "
                    "just joined is admitted once the aggregator reads its new tokens; "
                    "retrying in %.1fs",
                    refused,
                    delay,
                )
                time.sleep(delay)
            except ssl.SSLCertVerificationError as error:
                self.close()
                raise AggregatorUntrusted(
                    f"the aggregator at {self._host}:{self._port} is not who it should be: "
                    f"its TLS certificate does not verify against this client's CA "
                    f"(--ca-file): {error.verify_message or error}"
                ) from error
            except RETRYABLE as error:
                self.close()
                if self._backoff.expired(started):
                    raise AggregatorUnavailable(
                        f"no answer from {self._host}:{self._port} for "
                        f"{self._backoff.give_up_after:.0f}s: {error}{self._hint(error)}"
                    ) from error
                delay = next(delays)
                log.info("aggregator unreachable (%s); retrying in %.1fs", error, delay)
                time.sleep(delay)


def _json_body(response: http.client.HTTPResponse) -> dict[str, Any]:
    raw = response.read()
    if response.status >= 500:
        raise ConnectionError(f"aggregator answered {response.status}")
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        data = {"error": raw[:200].decode(errors="replace"), "reason": "not_json"}
    if response.status >= 400:
        raise AggregatorRefused(
            response.status, str(data.get("reason", "")), str(data.get("error", ""))
        )
    if not isinstance(data, dict):
        raise AggregatorRefused(502, "not_json", "the aggregator answered a non-object")
    return data


@dataclass
class _Filled:
    """How far a download has filled its buffer."""

    upto: int = 0


def _read_into(response: http.client.HTTPResponse, view: memoryview, filled: _Filled) -> None:
    """The rest of the body into `view` from `filled.upto`, a piece at a time: a reset
    loses at most the piece being read. Raises when the body ends short."""
    size = len(view)
    piece = read_piece(size)
    while filled.upto < size:
        n = response.readinto(view[filled.upto : filled.upto + piece])
        if not n:
            raise ConnectionError(f"the model download ended after {filled.upto} of {size} bytes")
        filled.upto += n


def _task_of(raw: str, response: http.client.HTTPResponse) -> dict[str, Any]:
    """The task in an answer that carries the model as its body."""
    try:
        task = json.loads(raw)
    except json.JSONDecodeError:
        task = None
    if not isinstance(task, dict) or not isinstance(task.get("modelVersion"), int):
        response.close()
        raise AggregatorRefused(502, "not_json", f"{TASK_HEADER} is no task: {raw[:200]!r}")
    return task


def read_piece(size: int) -> int:
    """Bytes per read of a download of `size` bytes: at most this much is read again after
    a reset."""
    return min(max(size // 64, MIN_READ_PIECE), MAX_READ_PIECE)
