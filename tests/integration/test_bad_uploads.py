"""Malformed and hostile uploads get a clear 4xx and leave the aggregate untouched.

The test is the only client: it holds the round open, throws bad uploads at the
real aggregator process, then sends one good delta and checks that the new global
model is exactly the old one plus that delta, so nothing refused leaked in.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from flotilla.api import load_job
from flotilla.fl.modelstate import initial_global_model
from flotilla.fl.wire import Layout
from tests.integration.harness import Cluster, cluster, write_job

pytestmark = pytest.mark.integration


@pytest.fixture
def open_round(tmp_path: Path, digits_dir: Path) -> Iterator[tuple[Cluster, Layout, bytes]]:
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=["site-a"],
        rounds=2,
        overrides={
            "clients": {"minClients": 1, "joinGraceSeconds": 0},
            "evaluation": {"federated": False},
        },
    )
    layout, _ = initial_global_model(load_job(job))
    with cluster(tmp_path, job, ["site-a"]) as running:
        running.start_aggregator()
        assert _get(running, "/v1/task")["action"] == "report"  # first, say the data is ready
        status, _ = _request(running, "POST", "/v1/site-report", b'{"ready": true}')
        assert status == 200
        task = _get(running, "/v1/task?wait=10")
        assert task["action"] == "train" and task["round"] == 1
        status, model = _request(running, "GET", "/v1/model/0")
        assert status == 200
        yield running, layout, model


def _headers(running: Cluster, token: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token or running.tokens['site-a']}",
        "X-Flotilla-Examples": "10",
        "X-Flotilla-Metrics": json.dumps({"train": {"loss": 1.0, "accuracy": 0.5}}),
        **extra,
    }


def _request(
    running: Cluster,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers=headers or {"Authorization": f"Bearer {running.tokens['site-a']}"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _get(running: Cluster, path: str) -> dict[str, object]:
    status, body = _request(running, "GET", path)
    assert status == 200, body
    result: dict[str, object] = json.loads(body)
    return result


def _delta(layout: Layout, value: float) -> bytearray:
    buffer = layout.allocate()
    for view in layout.views(buffer).values():
        view.fill_(value)
    return buffer


def _raw(running: Cluster, head: bytes, body: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.decode(errors="replace")


def _drop_mid_upload(running: Cluster, body: bytes) -> None:
    """A client that dies halfway through its upload: nobody is left to answer."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(_upload_head(running, len(body)) + body[: len(body) // 2])


def _upload_head(running: Cluster, length: int) -> bytes:
    lines = [
        "PUT /v1/rounds/1/update HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in _headers(running).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_every_bad_upload_is_refused_and_the_aggregate_keeps_only_the_good_one(
    open_round: tuple[Cluster, Layout, bytes],
) -> None:
    running, layout, model = open_round
    good = bytes(_delta(layout, 0.01))
    path = "/v1/rounds/1/update"
    nan = _delta(layout, 0.0)
    next(iter(layout.views(nan).values())).view(-1)[0] = float("nan")
    wrong_shapes = save({name: torch.zeros(3) for name in layout.offsets})

    refusals = {
        "wrong token": _request(
            running, "PUT", path, good, _headers(running, token="not-a-token-of-this-job")
        ),
        "wrong shapes": _request(running, "PUT", path, wrong_shapes, _headers(running)),
        "NaN values": _request(running, "PUT", path, bytes(nan), _headers(running)),
        "wrong round": _request(running, "PUT", "/v1/rounds/7/update", good, _headers(running)),
        "bad examples": _request(
            running, "PUT", path, good, _headers(running, **{"X-Flotilla-Examples": "-3"})
        ),
        "oversized": _raw(running, _upload_head(running, 10**9), b""),
        "truncated": _request(running, "PUT", path, good[: len(good) // 2], _headers(running)),
        "report not JSON": _request(running, "POST", "/v1/site-report", b"{ready"),
        "report not an object": _request(running, "POST", "/v1/site-report", b"[true]"),
        "report without ready": _request(running, "POST", "/v1/site-report", b'{"data": {}}'),
        "error without why": _request(running, "POST", "/v1/site-report", b'{"ready": false}'),
        "report too large": _request(
            running, "POST", "/v1/site-report", b'{"ready": true, "data": "' + b"x" * 20_000 + b'"}'
        ),
    }
    _drop_mid_upload(running, good)

    expected = {
        "wrong token": (401, "bearer token"),
        "wrong shapes": (400, "shape [3]"),
        "NaN values": (422, "NaN"),
        "wrong round": (409, "round 7 is not open"),
        "bad examples": (400, "X-Flotilla-Examples"),
        "oversized": (413, "bytes"),
        "truncated": (400, "truncated"),
        "report not JSON": (400, "not JSON"),
        "report not an object": (400, "must be a JSON object"),
        "report without ready": (400, '\\"ready\\": true or false'),
        "error without why": (400, "must say why"),
        "report too large": (413, "too large"),
    }
    for case, (status, reason) in expected.items():
        got_status, got_body = refusals[case]
        text = got_body.decode() if isinstance(got_body, bytes) else got_body
        assert got_status == status, f"{case}: {got_status} {text}"
        assert reason in text, f"{case}: {text}"
    assert _get(running, "/v1/status")["clients"] == {
        "known": 1,
        "present": 1,
        "sampled": 1,
        "answered": 0,
    }

    status, body = _request(running, "PUT", path, good, _headers(running))
    assert status == 200, body
    running.wait_for(lambda s: s["completedRounds"] == 1, timeout=60)
    status, new_model = _request(running, "GET", "/v1/model/1")
    assert status == 200
    old, new = load(model), load(new_model)
    for name in old:
        assert torch.allclose(new[name], old[name] + 0.01, atol=1e-6), name

    metrics = _metrics(running)
    job = 'flotilla_job="itest"'
    for reason in ("unauthorized", "round_closed", "bad_examples", "too_large"):
        assert metrics[f'flotilla_updates_rejected_total{{{job},reason="{reason}"}}'] >= 1, reason
    assert metrics[f"flotilla_rounds_completed_total{{{job}}}"] == 1
    assert metrics[f'flotilla_site_data_ready{{{job},site="site-a"}}'] == 1  # bad reports kept none
    assert metrics[f"flotilla_clients_answered_total{{{job}}}"] == 1
    assert metrics[f'flotilla_round_duration_seconds_bucket{{{job},le="+Inf"}}'] == 1
    assert metrics[f"flotilla_received_bytes_total{{{job}}}"] == len(good)
    assert metrics[f"flotilla_sent_bytes_total{{{job}}}"] >= 2 * len(model)
    assert metrics[f'flotilla_client_examples{{{job},site="site-a"}}'] == 10
    assert metrics[f'flotilla_global_accuracy{{{job},source="central"}}'] > 0


def _metrics(running: Cluster) -> dict[str, float]:
    status, body = _request(running, "GET", "/metrics")
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_token_used_twice_in_a_round_is_refused_as_duplicate(
    tmp_path: Path, digits_dir: Path
) -> None:
    sites = ["site-a", "site-b"]
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=sites,
        rounds=2,
        overrides={"clients": {"minClients": 2, "joinGraceSeconds": 0}},
    )
    layout, _ = initial_global_model(load_job(job))
    with cluster(tmp_path, job, sites) as running:
        running.start_aggregator()
        for site in sites:
            token = {"Authorization": f"Bearer {running.tokens[site]}"}
            status, _ = _request(running, "POST", "/v1/site-report", b'{"ready": true}', token)
            assert status == 200
        running.wait_for(lambda s: s["round"] == 1 and s["phase"] == "training", timeout=30)
        good = bytes(_delta(layout, 0.01))
        path = "/v1/rounds/1/update"

        first, _ = _request(running, "PUT", path, good, _headers(running))
        again, body = _request(running, "PUT", path, good, _headers(running))
        other_site, refused = _request(
            running, "PUT", path, good, _headers(running, **{"X-Flotilla-Site": "site-b"})
        )

    assert first == 200
    assert again == 409 and json.loads(body)["reason"] == "duplicate"
    assert other_site == 403 and json.loads(refused)["reason"] == "wrong_site"
