"""Sites join and leave a running job, as nodes are labelled and unlabelled in a cluster: the
aggregator process reads its tokens file again when it changes and is never restarted."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator.statelock import LOCK_FILE
from tests.integration.harness import Cluster, cluster, write_job

pytestmark = pytest.mark.integration

FIRST = ["site-a", "site-b", "site-c"]


def _swap_tokens(path: Path, tokens: dict[str, str]) -> None:
    """As the kubelet refreshes a mounted Secret: a new file swapped in whole."""
    temporary = path.with_suffix(".new")
    temporary.write_text(json.dumps(tokens))
    os.replace(temporary, path)


def _answer_to(running: Cluster, site: str) -> int:
    """The HTTP status the aggregator gives `site`'s token (a task asked for, not waited on)."""
    request = urllib.request.Request(
        f"{running.url}/v1/task?wait=0",
        headers={"Authorization": f"Bearer {running.tokens[site]}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _history(running: Cluster) -> list[dict[str, Any]]:
    """Every completed round's record, as the running aggregator serves it."""
    with urllib.request.urlopen(f"{running.url}/v1/history", timeout=10) as response:
        history: list[dict[str, Any]] = json.loads(response.read())
    return history


def _lock_holder(running: Cluster) -> int:
    """The pid the state directory's lock names: the aggregator process that holds the job."""
    return int((running.state_dir / LOCK_FILE).read_text().split()[0])


def test_a_fourth_site_joins_the_running_aggregator_at_the_next_round(
    tmp_path: Path, digits_dir: Path
) -> None:
    sites = [{"name": s, "data": {"cvatExport": {"path": str(digits_dir / s)}}} for s in FIRST]
    # site-d trains on site-a's export: what matters here is that it is a new site.
    sites.append({"name": "site-d", "data": {"cvatExport": {"path": str(digits_dir / "site-a")}}})
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=FIRST,
        # Far more than are played: the test stops once site-d answered a round, and rounds of
        # a third of a second may go by while the aggregator polls the tokens file (2 s).
        rounds=50,
        overrides={
            "sites": sites,
            # One epoch makes a round short. The grace is how long a round waits for a known
            # site that is not there yet: site-d's client starting on two loaded cores.
            "clients": {"minClients": 3, "joinGraceSeconds": 60, "roundDeadlineSeconds": 60},
            "training": {"localEpochs": 1},
        },
    )
    with cluster(tmp_path, job, FIRST) as running:
        running.start_aggregator()
        assert running.aggregator is not None
        pid = running.aggregator.pid
        for site in FIRST:
            running.start_client(site)
        running.wait_for(lambda s: s["completedRounds"] >= 1, timeout=180)

        # The kubelet's refresh of the mounted Secret once site-d's node is labelled.
        running.tokens["site-d"] = "token-site-d-0123456789abcdef"
        _swap_tokens(running.tokens_path, running.tokens)
        taken = running.wait_for(lambda s: s["clients"]["known"] == 4, timeout=30)
        # The round in play then was sampled before site-d was known; the one after it is
        # the next round, and site-d answers it (it is awaited, so the round waits for it).
        next_round = taken["round"] + 1
        running.start_client("site-d")
        running.wait_for(lambda s: s["completedRounds"] >= next_round, timeout=180)

        assert running.aggregator.poll() is None, running.log("aggregator")
        assert _lock_holder(running) == pid  # the process that started the job still runs it
        history = _history(running)

    answered = {r["round"]: r["answered"] for r in history}
    assert answered[1] == FIRST, history  # three sites before the join
    assert answered[next_round] == [*FIRST, "site-d"], answered
    assert "joined: site-d; left: none" in running.log("aggregator")
    assert "token-site-d" not in running.log("aggregator")


def test_a_removed_site_token_stops_working_at_once(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(tmp_path / "job.yaml", data_dir=digits_dir, sites=FIRST, rounds=1)
    with cluster(tmp_path, job, FIRST) as running:
        running.start_aggregator()  # no client: the job waits, the aggregator answers
        assert _answer_to(running, "site-c") == 200

        _swap_tokens(running.tokens_path, {s: running.tokens[s] for s in ("site-a", "site-b")})
        running.wait_for(lambda s: s["clients"]["known"] == 2, timeout=30)

        assert _answer_to(running, "site-c") == 401
        assert _answer_to(running, "site-a") == 200
