"""Only weights and numbers leave a site: every byte between clients and aggregator, inspected.

The clients dial a recording TCP proxy instead of the aggregator. Afterwards the capture
is parsed as the HTTP it is: every request must be one the protocol knows, every update
body a safetensors file of the model's own tensors, every JSON leaf a number, a count or a
job label. Then the whole capture, both directions, is searched for the sites' images
(file bytes, pixels as uint8 and as the float32 the client trains on), their file names,
task names and label sequences. None may appear.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flotilla.api import load_job
from flotilla.fl.modelstate import initial_global_model
from tests.exports import load_classification
from tests.integration.harness import cluster, write_job

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b"]
ALLOWED_REQUESTS = [
    ("GET", r"/v1/job"),
    ("GET", r"/v1/task(\?wait=[0-9.]+)?"),
    ("GET", r"/v1/model/\d+"),
    ("PUT", r"/v1/rounds/\d+/update"),
    ("POST", r"/v1/evaluations/\d+"),
    ("POST", r"/v1/site-report"),
]
ALLOWED_HEADERS = {
    "host",
    "accept-encoding",
    "authorization",
    "content-length",
    "content-type",
    "user-agent",
    "x-flotilla-examples",
    "x-flotilla-metrics",
    "x-flotilla-compression",
    "x-flotilla-update",  # "weights" (float32) or "delta": what the body's tensors hold
    "x-flotilla-site",  # the site's own name, checked against its token (docs/security.md)
    "expect",  # "100-continue" on an update: its body waits until asked for
    "x-flotilla-model-held",  # on /v1/task: the model version the client holds, or -1
    # Resumable transfers (docs/round-engine.md): a random id and byte counts, nothing else.
    "x-flotilla-upload-id",
    "x-flotilla-zstd-frame-bytes",
    "x-flotilla-resume-from",
    "content-range",
    "range",
}
# What those may hold: a random id (secrets.token_urlsafe), numbers and byte ranges.
VALUE_FORMS = {
    "x-flotilla-upload-id": r"[A-Za-z0-9_-]{8,64}",
    "x-flotilla-zstd-frame-bytes": r"\d+",
    "x-flotilla-resume-from": r"\d+",
    "content-range": r"bytes \d+-\d+/\d+",
    "range": r"bytes=\d+-",
    "x-flotilla-model-held": r"-1|\d+",
}


@dataclass
class Capture:
    """The bytes of each proxied connection, client to aggregator and back."""

    upstream: list[bytearray] = field(default_factory=list)
    downstream: list[bytearray] = field(default_factory=list)

    def everything(self) -> bytes:
        return b"".join(bytes(b) for b in [*self.upstream, *self.downstream])


class RecordingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.capture = Capture()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            up, down = bytearray(), bytearray()
            with self._lock:
                self.capture.upstream.append(up)
                self.capture.downstream.append(down)
            threading.Thread(target=_pump, args=(client, server, up), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client, down), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
    try:
        while chunk := source.recv(1 << 16):
            record += chunk
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _requests(stream: bytes) -> Iterator[Request]:
    """HTTP/1.1 requests, one after another on a kept-alive connection."""
    at = 0
    while at < len(stream):
        end = stream.index(b"\r\n\r\n", at)
        head = stream[at:end].decode("latin-1").split("\r\n")
        method, path, version = head[0].split(" ")
        assert version == "HTTP/1.1"
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert "transfer-encoding" not in headers  # every body has a length we can check
        length = int(headers.get("content-length", "0"))
        body = stream[end + 4 : end + 4 + length]
        assert len(body) == length, "a request cut short in the capture"
        at = end + 4 + length
        yield Request(method, path, headers, body)


def _numbers_and_labels(value: Any, labels: set[str], where: str) -> None:
    """Leaves are numbers, booleans or null; strings only where they are job labels."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert re.fullmatch(r"[a-zA-Z]+", key) or key in labels, f"{where}: key {key!r}"
            _numbers_and_labels(item, labels, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _numbers_and_labels(item, labels, where)
    elif isinstance(value, str):
        assert value in labels, f"{where}: the string {value!r} is not a job label"
    else:
        assert value is None or isinstance(value, bool | int | float), f"{where}: {value!r}"


def _safetensors_names(body: bytes) -> tuple[set[str], int]:
    (header_length,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + header_length])
    header.pop("__metadata__", None)
    data_bytes = max(end for _, end in (t["data_offsets"] for t in header.values()))
    return set(header), 8 + header_length + data_bytes


def test_no_image_or_annotation_crosses_the_wire(tmp_path: Path, digits_dir: Path) -> None:
    job_path = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=2,
        overrides={"clients": {"minClients": 2, "joinGraceSeconds": 1}},
    )
    job = load_job(job_path)
    layout, _ = initial_global_model(job)
    tensor_names = set(layout.by_name())
    with cluster(tmp_path, job_path, SITES) as running:
        running.start_aggregator()
        proxy = RecordingProxy(running.port)
        for site in SITES:
            running.start_client(site, via=f"http://127.0.0.1:{proxy.port}")
        assert running.wait_aggregator(timeout=240) == 0, running.log("aggregator")
        for process in running.clients.values():
            process.wait(timeout=30)
        proxy.close()
    capture = proxy.capture
    labels = set(job.spec.labels)

    seen: dict[str, int] = {}
    for stream in capture.upstream:
        for request in _requests(bytes(stream)):
            kind = next(
                (
                    p
                    for m, p in ALLOWED_REQUESTS
                    if m == request.method and re.fullmatch(p, request.path)
                ),
                None,
            )
            assert kind is not None, f"unexpected request {request.method} {request.path}"
            seen[kind] = seen.get(kind, 0) + 1
            assert set(request.headers) <= ALLOWED_HEADERS, request.headers
            assert request.headers.get("x-flotilla-site", SITES[0]) in SITES
            assert request.headers.get("x-flotilla-update", "delta") in ("delta", "weights")
            assert request.headers.get("expect", "100-continue") == "100-continue"
            for name, form in VALUE_FORMS.items():
                value = request.headers.get(name)
                assert value is None or re.fullmatch(form, value), (name, value)
            if "x-flotilla-metrics" in request.headers:
                _numbers_and_labels(
                    json.loads(request.headers["x-flotilla-metrics"]), labels, "metrics"
                )
            if request.method == "PUT":
                # A float32 job: the trained weights, from the client's one model buffer.
                assert request.headers.get("x-flotilla-update") == "weights"
                names, size = _safetensors_names(request.body)
                assert names <= tensor_names  # the model's own tensors (+ int8 scales: none here)
                assert size == len(request.body)  # nothing rides after them
            elif request.method == "POST":
                _numbers_and_labels(json.loads(request.body), labels, request.path)
    assert seen[r"/v1/rounds/\d+/update"] == 2 * len(SITES)  # the run did happen, fully
    assert seen[r"/v1/site-report"] >= len(SITES)

    wire = capture.everything()
    assert len(wire) > 4 * layout.total_size  # models went down and updates up
    checked = 0
    for site in SITES:
        export = digits_dir / site
        xml = (export / "annotations.xml").read_text()
        task_name = re.search(r"<task>\s*<name>([^<]+)</name>", xml)
        assert task_name and task_name.group(1).encode() not in wire
        data = load_classification(export, labels=job.spec.labels, channels=1, height=8, width=8)
        label_run = data.labels[:12].numpy()
        for encoded in (
            label_run.tobytes(),
            label_run.astype(np.int32).tobytes(),
            json.dumps(label_run.tolist()).encode(),
        ):
            assert encoded not in wire
        for path in sorted((export / "images").iterdir()):
            assert path.name.encode() not in wire
            assert path.stem.encode() not in wire
            raw = path.read_bytes()
            middle = raw[len(raw) // 2 - 12 : len(raw) // 2 + 12]
            assert middle not in wire
            pixels = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
            assert pixels.tobytes() not in wire
            assert (pixels.astype(np.float32) / 255.0).tobytes() not in wire
            checked += 1
    assert checked > 100
