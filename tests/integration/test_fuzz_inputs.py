"""Malformed input, generated: the aggregator answers 4xx, never 500, and keeps its aggregate.

Hypothesis throws random and mutated requests at the real aiohttp app, served by
a real aggregator process on 127.0.0.1: safetensors uploads with broken length
prefixes, headers (wrong dtypes, shapes, offsets, duplicate keys, non-UTF-8, deep
nesting), truncated or padded bodies, lying Content-Length, bad X-Flotilla-* headers,
and JSON for /v1/site-report and /v1/evaluations. Every upload carries a NaN in its data,
so even one whose header survives a mutation is refused: the round can stay open for
all of them. At the end both sampled sites send their real deltas, and the new global
model must be exactly the old one plus their mean: nothing refused leaked in. The
inputs tried are counted and printed, and the aggregator's memory must stay flat.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load  # noqa: E402

from flotilla.fl.modelstate import initial_global_model  # noqa: E402
from flotilla.fl.wire import Layout  # noqa: E402
from tests.inprocess import digits_job  # noqa: E402
from tests.integration.harness import Cluster, cluster  # noqa: E402

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b", "site-c"]  # a and b are sampled; b fuzzes uploads, c the JSON
FUZZ = settings(
    max_examples=800,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRIED: Counter[str] = Counter()
DEEP = b"[" * 5000 + b"]" * 5000  # nesting deeper than Python's recursion limit


@dataclass
class Served:
    port: int
    tokens: dict[str, str]
    layout: Layout
    cluster: Cluster
    rss_at_start_mb: float = 0.0

    def header(self, site: str) -> str:
        return f"Bearer {self.tokens[site]}"

    def rss_mb(self) -> float:
        """The aggregator process's resident memory now."""
        assert self.cluster.aggregator is not None
        status = Path(f"/proc/{self.cluster.aggregator.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real aggregator process; round 1 open for site-a and site-b."""
    root = tmp_path_factory.mktemp("fuzz")
    job = digits_job(SITES, rounds=1, spec={"clients": {"minClients": 2, "joinGraceSeconds": 0}})
    job_path = root / "job.yaml"
    job_path.write_text(yaml.safe_dump(job.to_dict()))
    layout, _ = initial_global_model(job)
    with cluster(root, job_path, SITES) as running:
        running.start_aggregator("--no-tracking")
        served = Served(running.port, running.tokens, layout, running)
        # a and b say they are ready (keep-alive connections: present), c never does.
        links = {
            site: http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
            for site in ("site-a", "site-b")
        }
        for site, link in links.items():
            status, _ = _call(
                link, "POST", "/v1/site-report", b'{"ready": true}', served.header(site)
            )
            assert status == 200
        for site, link in links.items():
            status, body = _call(link, "GET", "/v1/task?wait=10", None, served.header(site))
            assert json.loads(body)["action"] == "train", body
        served.rss_at_start_mb = served.rss_mb()
        try:
            yield served
        finally:
            for link in links.values():
                link.close()


def _call(
    link: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    authorization: str,
    **headers: str,
) -> tuple[int, bytes]:
    link.request(method, path, body=body, headers={"Authorization": authorization, **headers})
    response = link.getresponse()
    return response.status, response.read()


def _send(
    served: Served, method: str, path: str, body: bytes | None, **headers: Any
) -> tuple[int, bytes]:
    link = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        link.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            link.putheader(key.replace("_", "-"), value)
        if body is not None and "Content-Length" not in headers:
            link.putheader("Content-Length", str(len(body)))
        link.endheaders(body)
        response = link.getresponse()
        return response.status, response.read()
    finally:
        link.close()


def _raw(served: Served, head: bytes, body: bytes) -> int | None:
    """Bytes as they are, then a half-close: the status line, or None if the server hung up."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def _refused(status: int, body: bytes, what: str) -> None:
    TRIED[what] += 1
    assert 400 <= status < 500, f"{what}: {status} {body[:300]!r}"
    if body.startswith(b"{"):  # ours; aiohttp's HTTP parser answers plain text
        assert "reason" in json.loads(body), body[:300]


# -- uploads -----------------------------------------------------------------------------


def _poisoned(served: Served) -> bytes:
    """site-b's real delta with one NaN: whatever header survives, the data is refused."""
    data = _delta(served.layout, 0.02)
    data[-4:] = struct.pack("<f", float("nan"))
    return bytes(served.layout.header) + bytes(data)


def _delta(layout: Layout, value: float) -> bytearray:
    buffer = layout.allocate()
    for view in layout.views(buffer).values():
        view.fill_(value)
    return buffer[len(layout.header) :]


def _upload(served: Served, body: bytes, **headers: str) -> tuple[int, bytes]:
    defaults = {
        "Authorization": served.header("site-b"),
        "X-Flotilla-Examples": "10",
        "X-Flotilla-Metrics": "{}",
    }
    return _send(served, "PUT", "/v1/rounds/1/update", body, **(defaults | headers))


_DTYPES = st.sampled_from(["F32", "F16", "I8", "BF16", "F64", "I64", "BOOL", "U8", "", "f32"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def _headers(draw: st.DrawFn, names: list[str]) -> bytes:
    """A safetensors JSON header near the layout's: names, dtypes, shapes, offsets varied."""
    entries = []
    for name in draw(
        st.lists(st.sampled_from([*names, "extra", "__metadata__"]), max_size=len(names) + 2)
    ):
        entry = {
            "dtype": draw(_DTYPES),
            "shape": draw(st.lists(st.integers(-2, 1 << 40), max_size=4) | _JSON),
            "data_offsets": draw(st.lists(st.integers(-(1 << 63), 1 << 64), max_size=3) | _JSON),
        }
        entries.append((name, entry))
    text = (
        "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in entries) + "}"
    )  # duplicates kept
    raw = text.encode()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]  # maybe non-UTF-8
    return raw


@FUZZ
@given(data=st.data())
@example(data=None)  # a header nested deeper than the recursion limit
def test_mutated_safetensors_uploads_are_refused(served: Served, data: Any) -> None:
    base = _poisoned(served)
    names = list(served.layout.offsets)
    if data is None:
        body = struct.pack("<Q", len(DEEP)) + DEEP + base[len(served.layout.header) :]
    else:
        kind = data.draw(
            st.sampled_from(["bytes", "prefix", "header", "truncate", "extend", "json"])
        )
        body = bytearray(base)
        header_end = len(served.layout.header)
        if kind == "bytes":  # flip bytes in the prefix and JSON header
            for _ in range(data.draw(st.integers(1, 8))):
                body[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
        elif kind == "prefix":  # the 8-byte header length, anything up to 2^64 - 1
            body[:8] = struct.pack("<Q", data.draw(st.integers(0, (1 << 64) - 1)))
        elif kind == "header":
            raw = data.draw(_headers(names))
            body = bytearray(struct.pack("<Q", len(raw)) + raw + base[header_end:])
        elif kind == "truncate":
            body = body[: data.draw(st.integers(0, len(body) - 1))]
        elif kind == "extend":
            body += data.draw(st.binary(min_size=1, max_size=4096))
        else:
            body = bytearray(data.draw(st.binary(max_size=4096)))
        body = bytes(body)
    status, answer = _upload(served, body)
    _refused(status, answer, "upload body")


@FUZZ
@given(
    examples=st.text(max_size=12) | st.integers(-(10**12), 10**12).map(str),
    metrics=st.one_of(
        _JSON.map(json.dumps),
        st.text(max_size=200),
        st.just('{"train": {"loss": ' + "9" * 400 + "}}"),
    ),
    compression=st.sampled_from(["identity", "zstd", "ZSTD", "gzip", "", "br, zstd"]),
    encoding=st.none() | st.sampled_from(["gzip", "zstd", "identity"]),
)
@example(examples="²", metrics="{}", compression="identity", encoding=None)
@example(
    examples="10",
    metrics='{"train": {"loss": 1' + "0" * 400 + "}}",
    compression="identity",
    encoding=None,
)
@example(
    examples="10",
    metrics='{"eval": {"examples": 3, "loss": 1' + "0" * 400 + ', "accuracy": 1}}',
    compression="identity",
    encoding=None,
)
@example(
    examples="10",
    metrics=DEEP[:3000].decode() + DEEP[-3000:].decode(),
    compression="identity",
    encoding=None,
)
def test_bad_upload_headers_are_refused(
    served: Served, examples: str, metrics: str, compression: str, encoding: str | None
) -> None:
    headers = {
        "X-Flotilla-Examples": examples,
        "X-Flotilla-Metrics": metrics,
        "X-Flotilla-Compression": compression,
    }
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    try:
        # http.client sends header values as Latin-1; send anything else as UTF-8 bytes.
        encoded = {k: v.encode("utf-8") for k, v in headers.items()}
        status, answer = _upload(served, _poisoned(served), **encoded)  # type: ignore[arg-type]
    except (ValueError, http.client.HTTPException):
        TRIED["upload headers (not sendable)"] += 1
        return  # http.client refuses to send it (e.g. a newline in a header)
    _refused(status, answer, "upload headers")


@FUZZ
@given(
    declared=st.integers(0, 10**15),
    sent=st.integers(0, 2 * 60_000),
    chunked=st.booleans(),
)
def test_lying_content_length_and_endless_bodies_are_refused(
    served: Served, declared: int, sent: int, chunked: bool
) -> None:
    base = _poisoned(served)
    body = (base * (sent // len(base) + 1))[:sent]
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}"
    if chunked:
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    head = (
        "PUT /v1/rounds/1/update HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: {served.header('site-b')}\r\nX-Flotilla-Examples: 10\r\n{framing}\r\n\r\n"
    ).encode()
    status = _raw(served, head, body)
    TRIED["content-length lies"] += 1
    assert status is None or 400 <= status < 500, status


# -- JSON endpoints ------------------------------------------------------------------------


@FUZZ
@given(
    body=st.one_of(_JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=512)),
    path=st.sampled_from(
        [
            "/v1/site-report",
            "/v1/evaluations/0",
            "/v1/evaluations/1",
            "/v1/evaluations/x",
            "/v1/evaluations/%C2%B2",
        ]
    ),
)
@example(body=DEEP, path="/v1/site-report")
@example(body=DEEP, path="/v1/evaluations/0")
@example(
    body=b'{"examples": 3, "loss": 1' + b"0" * 400 + b', "accuracy": 0.5}', path="/v1/evaluations/0"
)
@example(body=b"{}", path="/v1/evaluations/%C2%B2")
def test_bad_json_reports_are_refused_or_kept_harmless(
    served: Served, body: bytes, path: str
) -> None:
    status, answer = _send(served, "POST", path, body, Authorization=served.header("site-c"))
    TRIED["json " + path.split("/")[2]] += 1
    assert status < 500, f"{path}: {status} {answer[:300]!r}"


@FUZZ
@given(path=st.text(max_size=30), auth=st.text(max_size=40))
@example(path="model/%C2%B2", auth="")
def test_random_paths_and_tokens_never_fail_the_server(
    served: Served, path: str, auth: str
) -> None:
    from urllib.parse import quote

    target = "/v1/" + quote(path, safe="/?=&")
    try:
        status, answer = _send(served, "GET", target, None, Authorization=auth.encode("utf-8"))
    except (ValueError, http.client.HTTPException):
        return
    TRIED["paths and tokens"] += 1
    assert status < 500, f"{target}: {status} {answer[:300]!r}"


@FUZZ
@given(held=st.text(max_size=24))
@example(held="²")
@example(held="-1 ")
@example(held="99999999999999999999999")
def test_random_held_model_versions_are_refused_or_served(served: Served, held: str) -> None:
    try:
        status, answer = _send(
            served,
            "GET",
            "/v1/task?wait=0",
            None,
            Authorization=served.header("site-c"),
            **{"X-Flotilla-Model-Held": held.encode("utf-8")},
        )
    except (ValueError, http.client.HTTPException):
        return  # not a header http.client sends
    TRIED["held model versions"] += 1
    assert status < 500, f"{held!r}: {status} {answer[:300]!r}"
    if status >= 400 and answer.startswith(b"{"):  # ours; aiohttp's parser answers text
        assert json.loads(answer)["reason"] == "bad_header", answer[:300]


# -- the invariant -------------------------------------------------------------------------


def test_zz_the_aggregate_holds_only_the_good_updates_and_memory_stayed_flat(
    served: Served, request: pytest.FixtureRequest
) -> None:
    status, model = _send(served, "GET", "/v1/model/0", None, Authorization=served.header("site-a"))
    assert status == 200
    for site, value in (("site-b", 0.02), ("site-a", 0.04)):
        good = bytes(served.layout.header) + bytes(_delta(served.layout, value))
        status, answer = _upload(served, good, Authorization=served.header(site))
        assert status == 200, answer
    served.cluster.wait_for(lambda s: s["completedRounds"] == 1, timeout=60)
    status, new_model = _send(
        served, "GET", "/v1/model/1", None, Authorization=served.header("site-a")
    )
    assert status == 200, new_model
    old, new = load(model), load(new_model)
    for name in old:
        assert torch.allclose(new[name], old[name] + 0.03, atol=1e-6), name
    total = sum(TRIED.values())
    line = f"fuzzed inputs: {total} ({', '.join(f'{k}: {v}' for k, v in sorted(TRIED.items()))})"
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():  # type: ignore[union-attr]
        print("\n" + line)
    request.node.user_properties.append(("fuzzed_inputs", total))
    assert total >= 1000 or request.config.getoption("keyword")
    # Bodies up to ~10^15 bytes were announced: none was read whole or buffered.
    growth = served.rss_mb() - served.rss_at_start_mb
    print(f"aggregator RSS growth over the fuzzing: {growth:.1f} MiB")
    assert growth < 32
