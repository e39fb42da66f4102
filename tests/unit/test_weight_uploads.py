"""Float32 clients upload trained weights; the aggregator folds them as deltas all the same."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import torch

from tests.inprocess import aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]


def test_weights_and_deltas_fold_into_the_same_mean(tmp_path: Path) -> None:
    job = digits_job(SITES, rounds=1)

    async def play() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        async with aggregator(job, tmp_path) as running:
            before = running.model()
            await running.join()
            trained = running.engine.layout.allocate()
            for name, view in running.engine.layout.views(trained).items():
                torch.add(before[name], 0.5, out=view)  # weights = global + 0.5
            await running.upload("site-a", running.delta(0.5))
            await running.upload("site-b", trained, **{"X-Flotilla-Update": "weights"})
            await running.upload("site-c", trained, **{"X-Flotilla-Update": "Weights "})
            await running.until(lambda e: e.persisted == 1)
            return before, running.model()

    before, after = asyncio.run(play())
    for name, tensor in before.items():
        assert torch.allclose(after[name], tensor + 0.5, atol=1e-6), name


def test_an_unknown_update_kind_or_weights_in_a_compressed_job_is_refused(tmp_path: Path) -> None:
    async def refused(spec: dict, kind: str) -> tuple[int, dict]:
        job = digits_job(SITES, rounds=1, spec=spec)
        async with aggregator(job, tmp_path / kind / str(len(spec))) as running:
            await running.join()
            status, body = await running.request(
                "PUT",
                "/v1/rounds/1/update",
                headers=running.headers(
                    "site-a", **{"X-Flotilla-Examples": "10", "X-Flotilla-Update": kind}
                ),
                data=bytes(running.delta(0.1)),
            )
            assert running.engine.status()["clients"]["answered"] == 0
            return status, json.loads(body)

    status, body = asyncio.run(refused({}, "gradients"))
    assert (status, body["reason"]) == (400, "bad_update_kind")
    assert "'gradients'" in body["error"]
    status, body = asyncio.run(refused({"compression": {"dtype": "int8"}}, "weights"))
    assert (status, body["reason"]) == (400, "bad_update_kind")
    assert "int8" in body["error"]


def test_an_int8_delta_beyond_float32_is_refused_and_the_round_goes_on(tmp_path: Path) -> None:
    """q=127 with scale 3e38 is finite in float64 but not once folded in float32."""
    # The refused site never answers: the round closes at its deadline with the other two.
    clients = {"minClients": 2, "joinGraceSeconds": 60, "roundDeadlineSeconds": 2}
    job = digits_job(SITES, rounds=2, spec={"compression": {"dtype": "int8"}, "clients": clients})

    async def play() -> tuple[tuple[int, dict], dict[str, torch.Tensor], int]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            hostile = running.delta(0.0)
            for name, view in running.layout.views(hostile).items():
                view.fill_(3e38 if name.endswith(":scale") else 127)
            status, body = await running.request(
                "PUT",
                "/v1/rounds/1/update",
                headers=running.headers(
                    "site-a", **{"X-Flotilla-Examples": "10", "X-Flotilla-Metrics": "{}"}
                ),
                data=bytes(hostile),
            )
            honest = running.delta(0.0)
            for name, view in running.layout.views(honest).items():
                view.fill_(0.001 if name.endswith(":scale") else 10)  # a delta of 0.01
            for site in ("site-b", "site-c"):
                assert await running.upload(site, honest) == 200
            await running.until(lambda e: e.persisted == 1, timeout=30)
            history, _ = await running.request("GET", "/v1/history")
            return (status, json.loads(body)), running.model(), history

    (status, body), model, history = asyncio.run(play())
    assert (status, body["reason"]) == (422, "bad_values")
    assert "float32" in body["error"]
    assert all(bool(torch.isfinite(tensor).all()) for tensor in model.values())
    assert history == 200
