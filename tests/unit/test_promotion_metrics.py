"""The promotion gate's figures on /metrics: the candidate's score beside the champion's,
and whether it was promoted, exactly as the gate decided them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator.main import AggregatorOptions, build_engine
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from tests.inprocess import digits_job


def _scraped(tmp_path: Path, promotion: dict[str, Any] | None) -> dict[str, list[Any]]:
    job = digits_job(["site-a"], rounds=1)
    engine = build_engine(
        job, sites=["site-a"], options=AggregatorOptions(state_dir=tmp_path, tracking=False)
    )
    engine.tracking_status = lambda: {"enabled": True, "promotion": promotion}
    families = AggregatorMetrics(engine, tracking_failures=lambda: 0).registry.collect()
    return {family.name: family.samples for family in families}


def test_the_candidate_and_champion_scores_and_the_outcome_are_exported(tmp_path: Path) -> None:
    scraped = _scraped(
        tmp_path,
        {
            "outcome": "kept",
            "reason": "NotBetter",
            "metric": "accuracy",
            "version": "3",
            "score": 0.81,
            "championVersion": "2",
            "championScore": 0.92,
        },
    )

    scores = {s.labels["model"]: s for s in scraped["flotilla_model_score"]}
    assert scores["candidate"].value == pytest.approx(0.81)
    assert scores["champion"].value == pytest.approx(0.92)
    assert {s.labels["metric"] for s in scores.values()} == {"accuracy"}
    assert [s.value for s in scraped["flotilla_model_promoted"]] == [0.0]


def test_a_first_model_has_no_champion_score_and_is_promoted(tmp_path: Path) -> None:
    scraped = _scraped(
        tmp_path,
        {"outcome": "promoted", "reason": "FirstModel", "metric": "map50", "score": 0.4},
    )

    assert [s.labels["model"] for s in scraped["flotilla_model_score"]] == ["candidate"]
    assert [s.value for s in scraped["flotilla_model_promoted"]] == [1.0]


def test_nothing_is_exported_before_the_gate_decides_or_without_one(tmp_path: Path) -> None:
    scraped = _scraped(tmp_path, None)

    assert scraped["flotilla_model_score"] == []
    assert scraped["flotilla_model_promoted"] == []
