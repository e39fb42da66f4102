"""The operator's metrics as Prometheus scrapes them."""

from __future__ import annotations

import asyncio

import aiohttp

from flotilla.k8s.metrics import OperatorMetrics


def test_jobs_pods_and_api_errors_are_served_at_metrics() -> None:
    metrics = OperatorMetrics()
    metrics.observed("ml", "a", {"phase": "Running", "clients": {"desired": 3, "ready": 2}})
    metrics.observed("ml", "b", {"phase": "Failed", "clients": {"desired": 1, "failed": 1}})
    metrics.observed("ml", "c", {"phase": "Running", "clients": {}})
    metrics.forget("ml", "c")
    metrics.api_error(409)

    async def scrape() -> str:
        runner = await metrics.serve(host="127.0.0.1", port=0)
        host, port = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{port}/metrics") as response,
            ):
                return await response.text()
        finally:
            await runner.cleanup()

    text = asyncio.run(scrape())

    assert 'flotilla_operator_jobs{phase="Running"} 1.0' in text
    assert 'flotilla_operator_jobs{phase="Failed"} 1.0' in text
    assert 'flotilla_operator_client_pods{state="desired"} 4.0' in text
    assert 'flotilla_operator_client_pods{state="ready"} 2.0' in text
    assert 'flotilla_operator_api_errors_total{status="409"} 1.0' in text
