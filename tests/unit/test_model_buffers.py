"""The aggregator keeps two model buffers for the whole job: the retired global model,
zeroed, is the next round's accumulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from tests.inprocess import aggregator, digits_job

SITES = ["site-a", "site-b"]


def test_rounds_alternate_between_two_buffers_and_start_from_zero(tmp_path: Path) -> None:
    job = digits_job(SITES, rounds=4)

    async def play() -> tuple[list[int], dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        async with aggregator(job, tmp_path) as running:
            initial = running.model()
            buffers, models = [id(running.engine.global_model)], []
            await running.join()
            for number in range(1, 5):
                await running.training(number)
                # Equal weights: the round's mean delta is the mean of the two fills.
                await running.upload("site-a", running.delta(0.25 * number))
                await running.upload("site-b", running.delta(0.75 * number))
                await running.until(lambda e, n=number: e.completed == n)
                buffers.append(id(running.engine.global_model))
                models.append(running.model())
            return buffers, initial, models

    buffers, initial, models = asyncio.run(play())
    assert len(set(buffers)) == 2, "a round allocated a model buffer instead of reusing one"
    assert buffers[0] == buffers[2] == buffers[4] and buffers[1] == buffers[3]
    for number, model in enumerate(models, start=1):
        # A recycled accumulator that kept old values would drift from this at once.
        expected_shift = sum(0.5 * r for r in range(1, number + 1))
        for name, tensor in initial.items():
            assert torch.allclose(model[name], tensor + expected_shift, atol=1e-5), (number, name)
