"""Buffered asynchronous aggregation (FedBuff) against synchronous FedAvg, one site slowed.

The digits job of examples/digits.yaml (4 sites, the CNN, central test set scored after
every round or server update), one site whose local training takes `--slowdown` times as
long (tests/slow_client.py: it trains as the others do, then waits). Both modes run in
this one process, one after the other, on the same data; each is an aggregator and four
client processes on 127.0.0.1 (tests/integration/harness.py). Reports, per mode, the wall
time from the first round's (server update's) start to the first model that scores
`--target` on the test set, how many rounds that took, and the ratio.

- sync: FedAvg, `roundDeadlineSeconds` long enough that every round waits for the slow
  site (what a synchronous round does unless told to give up on it).
- buffered: the same FedAvg with `spec.strategy.buffered.size` (default: the fast sites).

    .venv/bin/python bench/buffered.py [--slowdown 10] [--size 3] [--max-staleness N]
        [--sync-rounds 10] [--buffered-rounds 120] [--target 0.93] [--modes sync,buffered]
        [--keep DIR]

Not part of the test suite: figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*

from tests.integration.harness import cluster, write_job

SITES = ["site-a", "site-b", "site-c", "site-d"]
SLOW_SITE = "site-d"


def run_mode(
    *, root: Path, data: Path, strategy: dict[str, Any], rounds: int, slowdown: float
) -> list[dict[str, Any]]:
    """One job to its end; its history (the last checkpoint's: rows with their start)."""
    root.mkdir(parents=True)
    job = write_job(
        root / "job.yaml",
        data_dir=data,
        sites=SITES,
        rounds=rounds,
        overrides={
            "strategy": strategy,
            "clients": {"minClients": len(SITES), "roundDeadlineSeconds": 600},
            "evaluation": {"federated": False},
            "tracking": {"enabled": False},
        },
    )
    slow = [sys.executable, "-m", "tests.slow_client", "--slowdown", str(slowdown)]
    with cluster(root, job, SITES) as running:
        running.start_aggregator()
        for site in SITES:
            running.start_client(site, program=slow if site == SLOW_SITE else None)
        if running.wait_aggregator(timeout=1800) != 0:
            raise SystemExit(f"the {strategy} job failed:\n{running.log('aggregator')}")
        checkpoints = running.state_dir / "checkpoints"
    latest = (checkpoints / "LATEST").read_text().strip()
    history: list[dict[str, Any]] = json.loads((checkpoints / latest / "state.json").read_text())[
        "history"
    ]
    return history


@dataclass(frozen=True)
class Outcome:
    seconds: float | None  # from the first round's start to the end of the first on target
    after_first: float | None  # the same from the end of the first round (warm-up left out)
    rounds: int | None
    best: float
    wall: float  # from the first round's start to the end of the last
    per_round: float  # median seconds of a round (server update) after the first
    slow_updates: int  # rounds (server updates) with an update of the slow site
    slow_staleness: list[int]  # buffered: the staleness of each of its updates


def outcome(history: list[dict[str, Any]], target: float) -> Outcome:
    start = float(history[0]["started_at"])

    def end(row: dict[str, Any]) -> float:
        return float(row["started_at"]) + float(row["duration_seconds"]) - start

    reached = next((row for row in history if (row["accuracy"] or 0.0) >= target), None)
    return Outcome(
        seconds=end(reached) if reached else None,
        after_first=end(reached) - end(history[0]) if reached else None,
        rounds=reached["round"] if reached else None,
        best=max(row["accuracy"] or 0.0 for row in history),
        wall=end(history[-1]),
        per_round=statistics.median(float(row["duration_seconds"]) for row in history[1:]),
        slow_updates=sum(1 for row in history if SLOW_SITE in row["answered"]),
        slow_staleness=[
            update["staleness"]
            for row in history
            for update in (row.get("buffer") or {}).get("updates", [])
            if update["site"] == SLOW_SITE
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slowdown", type=float, default=10.0, help="the slow site's factor")
    parser.add_argument("--size", type=int, default=len(SITES) - 1, help="buffered.size")
    parser.add_argument("--max-staleness", type=int, default=None, help="buffered.maxStaleness")
    parser.add_argument("--sync-rounds", type=int, default=10)
    parser.add_argument("--buffered-rounds", type=int, default=120)
    parser.add_argument("--target", type=float, default=0.93, help="central test accuracy")
    parser.add_argument("--modes", default="sync,buffered", help="which of sync, buffered")
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep the logs")
    args = parser.parse_args()
    from flotilla.data.digits_example import write_digits_example

    buffered: dict[str, Any] = {"size": args.size}
    if args.max_staleness is not None:
        buffered["maxStaleness"] = args.max_staleness
    modes: dict[str, tuple[dict[str, Any], int]] = {
        "sync": ({"name": "fedavg"}, args.sync_rounds),
        "buffered": ({"name": "fedavg", "buffered": buffered}, args.buffered_rounds),
    }
    modes = {name: modes[name] for name in args.modes.split(",")}
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: digits, {len(SITES)} sites, "
        f"{SLOW_SITE} {args.slowdown:g}x slower; buffered size {args.size}, maxStaleness "
        f"{args.max_staleness}; target {args.target}\n"
    )
    outcomes: dict[str, Outcome] = {}
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="flotilla-buffered-"))
        )
        write_digits_example(root / "data", sites=SITES, seed=0)
        for name, (strategy, rounds) in modes.items():
            history = run_mode(
                root=root / name,
                data=root / "data",
                strategy=strategy,
                rounds=rounds,
                slowdown=args.slowdown,
            )
            outcomes[name] = outcome(history, args.target)
            print(f"{name}: {outcomes[name]}", flush=True)
    print()
    print(
        "| mode | rounds | rounds to target | **seconds to target** | the same after round 1 | "
        f"best accuracy | wall (all rounds) | a round after the first (median) | "
        f"rounds with {SLOW_SITE} |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, result in outcomes.items():
        shown = f"{result.seconds:.1f} s" if result.seconds is not None else "not reached"
        after = f"{result.after_first:.1f} s" if result.after_first is not None else "-"
        print(
            f"| {name} | {modes[name][1]} | {result.rounds or '-'} | **{shown}** | {after} | "
            f"{result.best:.4f} | {result.wall:.1f} s | {result.per_round:.2f} s | "
            f"{result.slow_updates} |"
        )
    if "buffered" in outcomes:
        print(
            f"\nstaleness of {SLOW_SITE}'s buffered updates: {outcomes['buffered'].slow_staleness}"
        )
    sync = outcomes["sync"].seconds if "sync" in outcomes else None
    fedbuff = outcomes["buffered"].seconds if "buffered" in outcomes else None
    if sync is not None and fedbuff:
        print(f"\n**sync / buffered, seconds to {args.target}: {sync / fedbuff:.1f}x**")
        per_round = outcomes["sync"].per_round / outcomes["buffered"].per_round
        print(f"sync round / buffered server update, after the first (median): {per_round:.1f}x")


if __name__ == "__main__":
    main()
