"""A signal stops the aggregator at once, long-polls in flight or not (Ctrl-C, a pod stop)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator.ending import SHUTDOWN_SECONDS
from tests.integration.harness import cluster, write_job

pytestmark = pytest.mark.integration


def test_a_signal_answers_the_long_polls_and_stops_the_aggregator_at_once(
    tmp_path: Path, digits_dir: Path
) -> None:
    sites = ["site-a", "site-b"]
    job = write_job(tmp_path / "job.yaml", data_dir=digits_dir, sites=sites, rounds=2)
    with cluster(tmp_path, job, sites) as running:
        running.start_aggregator()  # no client comes: it waits for them, nothing changes
        seq = running.status()["seq"]  # type: ignore[index]
        answers: list[dict[str, Any] | None] = []
        poll = threading.Thread(target=lambda: answers.append(running.status(after=seq, wait=60)))
        poll.start()
        poll.join(timeout=1.0)
        assert poll.is_alive(), f"the status long-poll should be waiting, got {answers}"
        assert running.aggregator is not None
        stopped = time.monotonic()
        running.aggregator.send_signal(signal.SIGTERM)
        code = running.wait_aggregator(timeout=30)
        took = time.monotonic() - stopped
        poll.join(timeout=5)

    assert code == 143
    # The HTTP server waits up to SHUTDOWN_SECONDS for requests in flight; a long-poll no
    # longer holds it that long.
    assert took < SHUTDOWN_SECONDS - 2, f"{took:.1f}s from the signal to the exit"
    assert answers and answers[0] is not None, "the long-poll got its answer, not a reset"
    assert answers[0]["phase"] != "done"
