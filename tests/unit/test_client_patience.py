"""A client in a cluster waits for its aggregator as long as it takes (--give-up-after 0);
on one machine it gives up after its patience. Time is simulated: no test waits an hour."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from flotilla.cli.arguments import seconds_or_never
from flotilla.fl.client import transport
from flotilla.fl.client.transport import AggregatorConnection, AggregatorUnavailable, Backoff


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(transport.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(transport.time, "sleep", fake.sleep)
    return fake


def _unreachable_for(clock: FakeTime, seconds: float) -> Any:
    def attempt() -> str:
        if clock.now < 1000.0 + seconds:
            raise ConnectionRefusedError("connection refused")
        return "answered"

    return attempt


def test_a_client_that_never_gives_up_waits_hours_for_its_aggregator(clock: FakeTime) -> None:
    connection = AggregatorConnection("http://agg:8080", "t" * 32, backoff=Backoff(give_up_after=0))

    assert connection._with_retries(_unreachable_for(clock, 3 * 3600)) == "answered"


def test_a_client_with_patience_gives_up_saying_for_how_long(clock: FakeTime) -> None:
    connection = AggregatorConnection(
        "http://agg:8080", "t" * 32, backoff=Backoff(give_up_after=600)
    )

    with pytest.raises(AggregatorUnavailable, match="no answer from agg:8080 for 600s"):
        connection._with_retries(_unreachable_for(clock, 3600))


def test_the_patience_flag_takes_seconds_or_zero_for_never() -> None:
    assert seconds_or_never("0") == 0.0 and seconds_or_never("0.0") == 0.0
    assert seconds_or_never("90") == 90.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds_or_never(bad)
