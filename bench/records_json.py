"""The cost of a round's record as JSON at fleet scale: `RoundRecord.to_json` against
`dataclasses.asdict` (what it was until 2026-12-04), in this process, the same records.

Every /v1/status, /v1/history, summary and Prometheus scrape builds records, and each
round's checkpoint builds all of them, on the aggregator's event loop.

    .venv/bin/python bench/records_json.py [--sites 1000] [--rounds 100]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flotilla.fl.aggregator.records import RoundRecord


def record(number: int, sites: int) -> RoundRecord:
    names = [f"site-{index:04d}" for index in range(sites)]
    values = {"examples": 64, "loss": 0.5, "accuracy": 0.9, "trainSeconds": 1.0, "bytes": 7}
    return RoundRecord(
        round=number,
        sampled=names,
        answered=names,
        attempts=1,
        started_at=0.0,
        duration_seconds=1.0,
        aggregation_seconds=0.1,
        bytes_received=7 * sites,
        train_loss=0.5,
        train_accuracy=0.9,
        federated={"loss": 0.5, "accuracy": 0.9},
        clients={name: dict(values) for name in names},
    )


def best_of(repeats: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100, help="records in the history")
    args = parser.parse_args()
    history = [record(number, args.sites) for number in range(1, args.rounds + 1)]
    before = best_of(3, lambda: [asdict(r) for r in history])
    after = best_of(3, lambda: [r.to_json() for r in history])
    print(
        f"{args.rounds} records of {args.sites} sites (one checkpoint, scrape or history): "
        f"asdict {before * 1000:.1f} ms, to_json {after * 1000:.1f} ms: **{before / after:.0f}x**"
    )


if __name__ == "__main__":
    main()
