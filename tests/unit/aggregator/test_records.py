"""A round's record as JSON (records.py): every field, copied."""

from __future__ import annotations

from dataclasses import asdict, fields

from flotilla.fl.aggregator.records import RoundRecord


def _record(sites: int) -> RoundRecord:
    names = [f"site-{index:04d}" for index in range(sites)]
    return RoundRecord(
        round=3,
        sampled=names,
        answered=names[:-1],
        attempts=2,
        started_at=1.5,
        duration_seconds=2.5,
        aggregation_seconds=0.25,
        bytes_received=123,
        train_loss=0.5,
        train_accuracy=0.75,
        central={"loss": 0.4, "accuracy": 0.8},
        federated={"loss": 0.45},
        clients={name: {"examples": 10, "loss": 0.5, "bytes": 7} for name in names},
        privacy={"epsilon": 1.5, "delta": 1e-5, "spent": {"noise": 1.1, "steps": [1, 2]}},
        buffer={"updates": [{"report": {"site": names[0]}, "base": 2, "staleness": 1}]},
    )


def test_the_json_holds_every_field_as_dataclasses_would() -> None:
    record = _record(5)
    assert set(record.to_json()) == {f.name for f in fields(RoundRecord)}
    assert record.to_json() == asdict(record)
    assert RoundRecord.from_json(record.to_json()) == record


def test_the_json_is_a_copy() -> None:
    record = _record(3)
    data = record.to_json()
    data["clients"]["site-0000"]["loss"] = 9.0
    data["sampled"].append("intruder")
    data["privacy"]["spent"]["steps"].append(3)
    data["buffer"]["updates"][0]["base"] = 0
    assert record == _record(3)
