"""Differential privacy (DP-FedAvg): clipping while folding, fixed-denominator noise, the
budget accounted by Opacus, the early stop at targetEpsilon, and the budget after a resume."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.api import FederatedJob, SpecError
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.strategies.privacy import clip_scales, privatize_mean
from flotilla.tracking.plan import round_metrics
from tests.inprocess import aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]


def _private(**privacy: Any) -> dict[str, Any]:
    return {"privacy": {"clipNorm": 1.0, "noiseMultiplier": 0.0, **privacy}}


# -- the maths --------------------------------------------------------------------------


def test_clipping_scales_a_long_delta_to_the_clip_norm_and_keeps_a_short_one() -> None:
    assert clip_scales({"w": 2.0}, ["w", "b"], norm=10.0, clip_norm=1.0) == {"w": 0.2, "b": 0.1}
    assert clip_scales({}, ["w"], norm=0.5, clip_norm=1.0) == {"w": 1.0}
    assert clip_scales({}, ["w"], norm=0.0, clip_norm=1.0) == {"w": 1.0}


def test_the_mean_gets_the_sampled_denominator_and_calibrated_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = {"w": torch.full((200_000,), 3.0)}  # sum 6 over 2 answered
    privatize_mean(mean, answered=2, sampled=3, noise_std=0.5, generator=generator)
    assert float(mean["w"].mean()) == pytest.approx(2.0, abs=0.01)  # 6 / 3 sampled
    assert float(mean["w"].std()) == pytest.approx(0.5, rel=0.02)


def test_no_noise_leaves_the_rescaled_mean_exact() -> None:
    mean = {"w": torch.tensor([3.0, -3.0])}
    privatize_mean(mean, answered=3, sampled=3, noise_std=0.0, generator=torch.Generator())
    assert mean["w"].tolist() == [3.0, -3.0]


# -- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fedmedian", "trimmedmean", "krum", "multikrum"])
def test_privacy_with_a_robust_strategy_is_refused_naming_the_field(strategy: str) -> None:
    spec = _private(noiseMultiplier=1.0) | {
        "strategy": {"name": strategy},
        "clients": {"minClients": 5},
    }
    with pytest.raises(SpecError) as error:
        digits_job(["a", "b", "c", "d", "e"], rounds=1, spec=spec)
    assert "spec.privacy: differential privacy needs a mean-based strategy" in str(error.value)
    assert repr(strategy) in str(error.value)


def test_privacy_with_mean_of_nearest_is_refused_as_a_robust_rule() -> None:
    # The mean of the values nearest the median still picks among the clients' values:
    # one client moves it by more than clipNorm / sampled.
    spec = _private(noiseMultiplier=1.0) | {
        "strategy": {"name": "fedmedian", "meanOfNearest": True},
        "clients": {"minClients": 5},
    }
    with pytest.raises(SpecError) as error:
        digits_job(["a", "b", "c", "d", "e"], rounds=1, spec=spec)
    assert "spec.privacy: differential privacy needs a mean-based strategy" in str(error.value)


def test_a_target_epsilon_without_noise_is_refused() -> None:
    with pytest.raises(SpecError, match=r"spec\.privacy\.targetEpsilon: needs noiseMultiplier"):
        digits_job(SITES, rounds=1, spec=_private(targetEpsilon=3.0))


def test_privacy_defaults_and_round_trip() -> None:
    job = digits_job(SITES, rounds=1, spec=_private(noiseMultiplier=1.1))
    assert job.spec.privacy is not None and job.spec.privacy.delta == 1e-5
    assert FederatedJob.from_dict(job.to_dict()).spec.privacy == job.spec.privacy


# -- the aggregator ---------------------------------------------------------------------

needs_opacus = pytest.mark.skipif(
    importlib.util.find_spec("opacus") is None, reason="opacus is not installed"
)


@needs_opacus
def test_updates_are_clipped_and_averaged_uniformly_over_the_sampled(tmp_path: Path) -> None:
    """No noise: the new model is the old one plus the clipped mean, examples ignored."""
    job = digits_job(SITES, rounds=1, spec=_private(clipNorm=1.0))

    async def play() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
        async with aggregator(job, tmp_path) as running:
            before = running.model()
            await running.join()
            size = running.layout.data_size // 4
            small = 0.5 / math.sqrt(size)  # norm 0.5: kept as it is
            await running.upload("site-a", running.delta(small), examples=1)
            await running.upload("site-b", running.delta(100.0), examples=10_000)  # clipped to 1
            await running.upload("site-c", running.delta(-small), examples=1)
            await running.until(lambda e: e.persisted == 1)
            return before, running.model(), running.engine

    before, after, engine = asyncio.run(play())
    size = engine.update_layout.data_size // 4
    expected = (1.0 / math.sqrt(size)) / 3  # only site-b's clipped delta remains, over 3
    for name in before:
        assert torch.allclose(
            after[name] - before[name], torch.full_like(before[name], expected), atol=1e-7
        ), name
    assert engine.ledger.rounds[0].privacy["epsilon"] is None  # no noise, no guarantee


@needs_opacus
def test_epsilon_is_reported_everywhere_and_the_job_stops_at_its_target(tmp_path: Path) -> None:
    spec = _private(noiseMultiplier=1.0, targetEpsilon=0.0)  # replaced below
    spec["privacy"]["targetEpsilon"] = _epsilon_after(2, sample_rate=1.0) * 1.01
    job = digits_job(SITES, rounds=5, spec=spec)

    async def play() -> Any:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            for number in (1, 2):
                await running.training(number)
                for site in SITES:
                    await running.upload(site, running.delta(0.001))
            await running.until(lambda e: e.phase.value == "done")
            return running.engine

    engine = asyncio.run(play())
    assert engine.phase.value == "done" and engine.state.completed == 2
    assert (
        "round 3 would spend epsilon" in engine.state.message
        and "targetEpsilon" in engine.state.message
    )
    expected = _epsilon_after(2, sample_rate=1.0)
    rows = engine.ledger.history_json()
    assert [r["privacy"]["epsilon"] for r in rows] == pytest.approx(
        [_epsilon_after(1, sample_rate=1.0), expected]
    )
    assert engine.status()["privacy"]["epsilon"] == pytest.approx(expected)
    assert engine.summary()["history"][-1]["privacy"]["delta"] == 1e-5
    metric = {m.key: m.value for m in round_metrics(rows[-1])}
    assert metric["privacy.epsilon"] == pytest.approx(expected)
    scraped = {
        m.name: m for m in AggregatorMetrics(engine, tracking_failures=lambda: 0).registry.collect()
    }
    assert scraped["flotilla_privacy_epsilon"].samples[0].value == pytest.approx(expected)

    # A resumed aggregator replays the accountant from the checkpointed history.
    async def resume() -> Any:
        async with aggregator(job, tmp_path, run=False) as running:
            return running.engine

    resumed = asyncio.run(resume())
    assert resumed.state.completed == 2
    assert resumed.privacy.epsilon == pytest.approx(expected)
    assert resumed.privacy_exhausted() is not None  # still no budget for round 3


def _epsilon_after(rounds: int, *, sample_rate: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=1.0, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=1e-5))
