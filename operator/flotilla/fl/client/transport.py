"""The client's one connection to its aggregator: blocking HTTP/1.1, kept alive across rounds.

A client has one thing to do at a time (wait, download, train, upload), so a
plain `http.client` connection fits: no event loop on edge nodes, the model is
read with `readinto` straight into a buffer allocated once, and the update is
sent from the client's own buffer without a copy. The client always dials
(edge nodes sit behind NAT); a lost connection is re-dialled with backoff.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from flotilla.fl.wire import Buffer

T = TypeVar("T")

log = logging.getLogger(__name__)

SITE_HEADER = "X-Flotilla-Site"
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

    def set_site(self, site: str) -> None:
        self._headers[SITE_HEADER] = site

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def get_json(
        self, path: str, *, params: Mapping[str, Any] | None = None, wait: float = 0.0
    ) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""

        def attempt() -> dict[str, Any]:
            response = self._request("GET", path + query, timeout=self._timeout + wait)
            return _json_body(response)

        return self._with_retries(attempt)

    def post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()

        def attempt() -> dict[str, Any]:
            response = self._request(
                "POST", path, body=data, headers={"Content-Type": "application/json"}
            )
            return _json_body(response)

        return self._with_retries(attempt)

    def download_into(self, path: str, buffer: Buffer) -> None:
        """Read a body of exactly len(buffer) bytes into `buffer`."""

        def attempt() -> None:
            response = self._request("GET", path)
            if response.status != 200:
                _json_body(response)  # raises with the server's reason
            if response.length != len(buffer):
                response.close()
                raise AggregatorRefused(
                    502,
                    "bad_size",
                    f"model body has {response.length} bytes, expected "
                    f"{len(buffer)}: the aggregator serves another model",
                )
            view, got = memoryview(buffer), 0
            while got < len(buffer):
                n = response.readinto(view[got:])
                if not n:
                    raise ConnectionError("the model download ended early")
                got += n

        self._with_retries(attempt)

    def upload(self, path: str, body: memoryview, headers: Mapping[str, str]) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            response = self._request("PUT", path, body=body, headers=dict(headers))
            return _json_body(response)

        return self._with_retries(attempt)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | memoryview | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        conn = self._connection()
        conn.timeout = timeout or self._timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        all_headers = self._headers | dict(headers or {})
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        try:
            conn.request(method, self._prefix + path, body=body, headers=all_headers)
            return conn.getresponse()
        except BaseException:
            self.close()
            raise

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
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
