"""Sites join and leave a running job, as nodes are labelled and unlabelled in a cluster: the
aggregator process reads its tokens file again when it changes and is never restarted."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import Cluster, cluster, write_job

pytestmark = pytest.mark.integration

FIRST = ["site-a", "site-b", "site-c"]
REFUSED_YET = "the aggregator does not know this site's token (yet)"


def _swap_tokens(path: Path, tokens: dict[str, str]) -> None:
    """As the kubelet refreshes a mounted Secret: a new file swapped in whole."""
    temporary = path.with_suffix(".new")
    temporary.write_text(json.dumps(tokens))
    os.replace(temporary, path)


def _wait_log(path: Path, text: str, timeout: float = 60) -> None:
    """Until a process wrote `text` to its log: the only sign it gives from outside."""
    end = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < end, f"{path.name} never said {text!r}"
        time.sleep(0.1)


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


def test_a_site_joins_and_another_leaves_the_running_aggregator(
    tmp_path: Path, digits_dir: Path
) -> None:
    sites = [{"name": s, "data": {"cvatExport": {"path": str(digits_dir / s)}}} for s in FIRST]
    # site-d trains on site-a's export: what matters here is that it is a new site.
    sites.append({"name": "site-d", "data": {"cvatExport": {"path": str(digits_dir / "site-a")}}})
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=FIRST,
        rounds=4,
        # Three answers a round, and site-c never comes: no round opens until site-d is in.
        overrides={"sites": sites, "clients": {"minClients": 3, "joinGraceSeconds": 1}},
    )
    with cluster(tmp_path, job, FIRST) as running:
        running.tokens["site-d"] = "token-site-d-0123456789abcdef"  # not in the file yet
        running.start_aggregator()
        assert running.aggregator is not None
        pid = running.aggregator.pid
        running.start_client("site-a")
        running.start_client("site-b")
        running.start_client("site-d")  # refused (401) until its token is read: it waits
        _wait_log(running.root / "site-d.log", REFUSED_YET)
        assert _answer_to(running, "site-c") == 200

        _swap_tokens(
            running.tokens_path, {s: running.tokens[s] for s in ("site-a", "site-b", "site-d")}
        )

        assert running.wait_aggregator(timeout=300) == 0, running.log("aggregator")
        assert running.aggregator.pid == pid  # one process from start to end
        summary = running.summary()

    history = summary["history"]
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert all(r["sites"] == ["site-a", "site-b", "site-d"] for r in history), history
    log = running.log("aggregator")
    assert "joined: site-d; left: site-c" in log
    assert "token-site-d" not in log and "token-site-c" not in log


def test_a_removed_site_token_stops_working_at_once(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(tmp_path / "job.yaml", data_dir=digits_dir, sites=FIRST, rounds=1)
    with cluster(tmp_path, job, FIRST) as running:
        running.start_aggregator()  # no client: the job waits, the aggregator answers
        assert _answer_to(running, "site-c") == 200

        _swap_tokens(running.tokens_path, {s: running.tokens[s] for s in ("site-a", "site-b")})
        running.wait_for(lambda s: s["clients"]["known"] == 2, timeout=30)

        assert _answer_to(running, "site-c") == 401
        assert _answer_to(running, "site-a") == 200
