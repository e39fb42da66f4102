"""What clients report is bounded where it is parsed: a 400 naming the field and the site.

No number a client sends (example counts, losses, scores, durations) and no site report
can crash the round loop, /v1/history or the summary.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator.errors import BadExamples, BadMetrics, BadReport
from flotilla.fl.aggregator.http_errors import answer_for
from flotilla.fl.aggregator.http_input import site_report
from flotilla.fl.aggregator.reports import (
    MAX_EXAMPLES,
    checked_label_report,
    checked_update_metrics,
    examples_count,
)
from tests.inprocess import aggregator, digits_job

HUGE = 10**400  # a JSON integer no float holds


def test_an_evaluation_claiming_10_to_the_400_examples_is_refused_and_history_answers(
    tmp_path: Path,
) -> None:
    job = digits_job(["site-a"], rounds=1, spec={"evaluation": {"federated": True}})

    async def play() -> tuple[tuple[int, bytes], int, tuple[int, bytes], dict[str, Any]]:
        async with aggregator(job, tmp_path) as running:
            await running.join()
            assert await running.upload("site-a", running.delta(0.01)) == 200
            await running.until(lambda e: e.phase.value == "evaluating")
            hostile = b'{"loss": 0.5, "accuracy": 0.5, "examples": 1' + b"0" * 400 + b"}"
            refused = await running.request(
                "POST", "/v1/evaluations/1", site="site-a", data=hostile
            )
            history, _ = await running.request("GET", "/v1/history")
            good = json.dumps({"loss": 0.5, "accuracy": 0.5, "examples": 30}).encode()
            accepted = await running.request("POST", "/v1/evaluations/1", site="site-a", data=good)
            await running.until(lambda e: e.finished)
            return refused, history, accepted, running.engine.summary()

    (status, body), history, accepted, summary = asyncio.run(play())
    refusal = json.loads(body)
    assert (status, refusal["reason"]) == (400, "bad_metrics")
    assert "examples" in refusal["error"] and "site-a" in refusal["error"]
    assert history == 200
    assert accepted[0] == 200
    assert summary["phase"] == "done"
    assert summary["final"]["federated"]["examples"] == 30


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"train": {"loss": 1e308}}, "train.loss"),
        ({"train": {"loss": -1.0}}, "train.loss"),
        ({"train": {"loss": HUGE}}, "train.loss"),
        ({"train": {"accuracy": 1.5}}, "train.accuracy"),
        ({"train": {"seconds": -3}}, "train.seconds"),
        ({"train": {"seconds": float("inf")}}, "train.seconds"),
        ({"train": {"loss": True}}, "train.loss"),
        ({"train": {"loss": 1.0, "secret": "x"}}, "train.secret"),
        ({"train": []}, "train"),
        ({"eval": {"modelVersion": 1, "loss": 0.1, "examples": HUGE, "accuracy": 0.5}}, "examples"),
        ({"eval": {"modelVersion": 1, "loss": 0.1, "examples": -1, "accuracy": 0.5}}, "examples"),
        ({"eval": {"modelVersion": 1, "loss": 0.1, "examples": 5, "accuracy": 7}}, "accuracy"),
        ({"eval": {"modelVersion": 1, "loss": 1e300, "examples": 5, "accuracy": 0.5}}, "loss"),
        ({"eval": {"modelVersion": "1", "loss": 0.1, "examples": 5, "accuracy": 0.5}}, "version"),
        ({"eval": {"modelVersion": 1, "loss": 0.1, "examples": 5}}, "accuracy"),
        ({"extra": 1}, "extra"),
    ],
)
def test_every_reported_number_is_bounded_naming_the_field_and_site(
    metrics: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadMetrics) as refused:
        checked_update_metrics("site-q", metrics)

    assert answer_for(refused.value) == (400, "bad_metrics")
    assert field in str(refused.value) and "site-q" in str(refused.value)


def test_honest_metrics_pass_as_the_client_sends_them() -> None:
    sent = {
        "train": {"loss": 0.4, "seconds": 2.5, "epochs": 3.0, "accuracy": 0.9},
        "eval": {"modelVersion": 2, "loss": 0.5, "examples": 40, "accuracy": 0.8},
    }
    empty = {
        "train": {"loss": 0.4, "map50": 0.3},
        "eval": {"modelVersion": 0, "loss": float("nan"), "examples": 0, "map50": float("nan")},
    }

    assert checked_update_metrics("s", sent) == sent
    assert checked_update_metrics("s", empty)["eval"] == {
        "modelVersion": 0,
        "loss": None,
        "examples": 0,
    }
    assert checked_update_metrics("s", {"train": {}, "eval": None}) == {"train": {}, "eval": None}


@pytest.mark.parametrize("raw", ["0", "-3", "1.5", "", "²", str(MAX_EXAMPLES + 1), "9" * 400])
def test_an_examples_header_out_of_bounds_is_refused(raw: str) -> None:
    with pytest.raises(BadExamples, match=r"site-q.*X-Flotilla-Examples"):
        examples_count("site-q", raw)


def test_an_examples_header_up_to_the_maximum_is_taken() -> None:
    assert examples_count("s", str(MAX_EXAMPLES)) == 2**40


def _label_report(**change: Any) -> dict[str, Any]:
    return {
        "ignoredLabels": {"truck": 3},
        "aliasedLabels": {"auto": "car"},
        "missingLabels": ["7"],
        "frames": 100,
        "used": 90,
        "unannotated": 8,
        "ambiguous": 2,
        "train": 81,
        "holdout": 9,
    } | change


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"blob": "x" * 12_000}, "blob"),
        (_label_report(frames=-1), "frames"),
        (_label_report(used=HUGE), "used"),
        (_label_report(used=1.5), "used"),
        (_label_report(ignoredLabels={"x" * 300: 1}), "ignoredLabels"),
        (_label_report(ignoredLabels={"x": "many"}), "ignoredLabels"),
        (_label_report(aliasedLabels={"a": 3}), "aliasedLabels"),
        (_label_report(missingLabels="7"), "missingLabels"),
        (_label_report(missingLabels=[{"nested": [1]}]), "missingLabels"),
    ],
)
def test_a_site_report_must_follow_the_label_report_schema(data: Any, field: str) -> None:
    with pytest.raises(BadReport) as refused:
        checked_label_report("site-q", data)

    assert answer_for(refused.value) == (400, "bad_report")
    assert field in str(refused.value) and "site-q" in str(refused.value)


def test_the_clients_label_report_is_kept_as_sent() -> None:
    assert checked_label_report("s", _label_report()) == _label_report()
    assert checked_label_report("s", {}) == {}


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({"data": {}}, '"ready": true or false'),
        ({"ready": "yes"}, '"ready": true or false'),
        ({"ready": False}, 'must say why in "error"'),
        ({"ready": False, "error": "  "}, 'must say why in "error"'),
        ({"ready": False, "error": 3}, 'must say why in "error"'),
    ],
)
def test_a_site_report_without_ready_or_error_names_the_site(
    report: dict[str, Any], expected: str
) -> None:
    with pytest.raises(BadReport) as refused:
        site_report("site-q", report)

    assert answer_for(refused.value) == (400, "bad_report")
    assert str(refused.value).startswith("site 'site-q': ") and expected in str(refused.value)


def test_a_site_report_of_arbitrary_json_is_refused_over_http(tmp_path: Path) -> None:
    job = digits_job(["site-a"], rounds=1)

    async def play() -> tuple[int, bytes, dict[str, Any]]:
        async with aggregator(job, tmp_path, run=False) as running:
            junk = json.dumps(
                {"ready": True, "data": {"k" + str(i): "v" * 100 for i in range(110)}}
            )
            status, body = await running.request(
                "POST", "/v1/site-report", site="site-a", data=junk.encode()
            )
            return status, body, dict(running.engine.roster.site_reports)

    status, body, kept = asyncio.run(play())
    assert status == 400 and json.loads(body)["reason"] == "bad_report"
    assert kept == {}


def test_an_integer_too_long_for_python_to_parse_is_a_400_not_a_500(tmp_path: Path) -> None:
    job = digits_job(["site-a"], rounds=1)
    digits = b"9" * 5000  # json.loads raises a plain ValueError past 4300 digits

    async def play() -> list[tuple[int, bytes]]:
        async with aggregator(job, tmp_path, run=False) as running:
            report = b'{"ready": true, "data": {"frames": ' + digits + b"}}"
            return [
                await running.request("POST", "/v1/site-report", site="site-a", data=report),
                await running.request(
                    "POST",
                    "/v1/evaluations/0",
                    site="site-a",
                    data=b'{"examples": ' + digits + b"}",
                ),
            ]

    for status, body in asyncio.run(play()):
        assert status == 400, body
        assert "4300 digits" in json.loads(body)["error"]
