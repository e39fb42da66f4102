"""The aggregator in the test's own event loop: its real aiohttp app, engine and checkpoints.

For tests that send many requests (fuzzing) or look into the engine between rounds
(differential privacy): no processes to start, the same code path from socket to
aggregate. The job is the digits example without central evaluation, so no data is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.engine import RoundEngine
from flotilla.fl.aggregator.main import AggregatorOptions, build_engine
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.aggregator.server import build_app
from flotilla.fl.aggregator.tokens import TokenBook
from flotilla.fl.wire import Layout


def digits_job(
    sites: list[str], *, rounds: int, spec: Mapping[str, Any] | None = None
) -> FederatedJob:
    """The digits job (mlp, 8x8) with no data read by the aggregator; `spec` overrides keys."""
    document: dict[str, Any] = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "inproc"},
        "spec": {
            "rounds": rounds,
            "labels": [str(d) for d in range(10)],
            "model": {"name": "mlp", "input": {"channels": 1, "height": 8, "width": 8}},
            "sites": [{"name": s} for s in sites],
            "data": {"cvatExport": {"path": "/nonexistent"}},
            "evaluation": {"federated": False},
            # Plain HTTP: these tests read and write the wire themselves (TLS: test_tls.py).
            "security": {"tls": {"mode": "disabled"}},
            "clients": {
                "minClients": len(sites),
                "joinGraceSeconds": 0,
                "roundDeadlineSeconds": 600,
            },
            **(spec or {}),
        },
    }
    return FederatedJob.from_dict(document)


@dataclass
class Aggregator:
    client: TestClient[Any, Any]
    engine: RoundEngine
    tokens: dict[str, str]

    @property
    def layout(self) -> Layout:
        return self.engine.update_layout

    def headers(self, site: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[site]}", **extra}

    def raw_update_head(
        self, site: str, size: int, *, round_number: int = 1, extra: tuple[str, ...] = ()
    ) -> bytes:
        """An update PUT's request head as a raw socket sends it, `extra` header lines last."""
        head = [
            f"PUT /v1/rounds/{round_number}/update HTTP/1.1",
            f"Host: {self.client.server.host}",
            f"Content-Length: {size}",
            f"Authorization: Bearer {self.tokens[site]}",
            "X-Flotilla-Examples: 10",
            "X-Flotilla-Metrics: {}",
            *extra,
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode()

    async def request(
        self, method: str, path: str, *, site: str | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        headers = kwargs.pop("headers", None)
        if headers is None and site is not None:
            headers = self.headers(site)
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.read()

    async def join(self) -> None:
        """Every site says its data is ready and waits for round 1 to open."""
        for site in self.tokens:
            status, body = await self.request(
                "POST", "/v1/site-report", site=site, data=b'{"ready": true}'
            )
            assert status == 200, body
        for site in self.tokens:
            status, body = await self.request("GET", "/v1/task?wait=10", site=site)
            assert status == 200 and json.loads(body)["action"] == "train", body

    async def upload(
        self, site: str, delta: bytes | bytearray, *, examples: int = 10, **headers: str
    ) -> int:
        status, body = await self.request(
            "PUT",
            f"/v1/rounds/{self.engine.current_round}/update",
            headers=self.headers(
                site,
                **{"X-Flotilla-Examples": str(examples), "X-Flotilla-Metrics": "{}"},
                **headers,
            ),
            data=bytes(delta),
        )
        assert status in (200, 409), body
        return status

    def delta(self, fill: float) -> bytearray:
        """A delta in the job's wire layout, every value `fill`."""
        buffer = self.layout.allocate()
        for view in self.layout.views(buffer).values():
            view.fill_(fill)
        return buffer

    async def until(self, predicate: Callable[[RoundEngine], bool], *, timeout: float = 30) -> None:
        """Wait for the engine to reach a state (checked on each change; no fixed sleeps)."""
        end = self.engine.clock() + timeout
        while not predicate(self.engine):
            remaining = end - self.engine.clock()
            assert remaining > 0, f"timed out: {self.engine.status()}"
            await self.engine.wait_changed(remaining)

    async def training(self, number: int) -> None:
        await self.until(lambda e: e.phase.value == "training" and e.current_round == number)

    def model(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.engine.layout.views(self.engine.global_model).items()}


STOP_SECONDS = 5.0


class _Served(TestServer):
    """As the aggregator serves (main.py): a client that hangs up does not cancel its
    handler (aiohttp's test server would), so a broken upload is seen as the product sees it."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **(kwargs | {"handler_cancellation": False}))


@contextlib.asynccontextmanager
async def aggregator(
    job: FederatedJob, state_dir: Path, *, run: bool = True
) -> AsyncIterator[Aggregator]:
    sites = [site.name for site in job.spec.sites]
    tokens = {site: f"token-{site}-0123456789abcdef" for site in sites}
    engine = build_engine(
        job, sites=sites, options=AggregatorOptions(state_dir=state_dir, tracking=False)
    )
    metrics = AggregatorMetrics(engine, tracking_failures=lambda: 0)
    app = build_app(engine, tokens=TokenBook(tokens), metrics=metrics)
    client = TestClient(_Served(app))
    await client.start_server()
    task = asyncio.get_running_loop().create_task(engine.run()) if run else None
    try:
        yield Aggregator(client=client, engine=engine, tokens=tokens)
    finally:
        if task is not None:
            task.cancel()
            # A stopped aggregator's engine must stop, not run on to its round's deadline.
            done, _ = await asyncio.wait([task], timeout=STOP_SECONDS)
            assert done, f"the round engine did not stop within {STOP_SECONDS}s of its cancel"
            with contextlib.suppress(BaseException):
                task.result()
        await client.close()
