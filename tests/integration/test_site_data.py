"""A site whose data cannot be read: named, left out of the rounds, back once fixed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import cluster, flotilla, write_job
from tests.unit.cvat_double import CvatDouble, FakeTask

pytestmark = pytest.mark.integration

MALFORMED = "<?xml version='1.0'?>\n<annotations><image id='0' name='frame_0.png'"


def _data_with_a_broken_site(tmp_path: Path, digits_dir: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("site-a", "site-b", "test"):
        (data / name).symlink_to(digits_dir / name)
    shutil.copytree(digits_dir / "site-c", data / "site-c")
    (data / "site-c" / "annotations.xml").write_text(MALFORMED)
    return data


def test_a_malformed_export_is_reported_and_the_rounds_go_on_without_that_site(
    tmp_path: Path, digits_dir: Path
) -> None:
    data = _data_with_a_broken_site(tmp_path, digits_dir)
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=data,
        sites=["site-a", "site-b", "site-c"],
        rounds=2,
        overrides={"clients": {"minClients": 2, "joinGraceSeconds": 2}},
    )

    run = subprocess.run(
        flotilla("run", str(job), "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert [r["sites"] for r in summary["history"]] == [["site-a", "site-b"]] * 2
    broken = summary["sites"]["site-c"]
    assert broken["ready"] is False
    assert "site site-c" in broken["error"] and "annotations.xml" in broken["error"]
    assert summary["sites"]["site-a"]["ready"] is True
    assert summary["sites"]["site-a"]["data"]["used"] > 0  # the label report came along
    assert "site site-c cannot train; the rounds go on without it" in run.stderr
    assert "site site-c could not read its data" in run.stdout
    client_log = (tmp_path / "state" / "logs" / "site-c.log").read_text()
    assert "cannot read its data" in client_log
    assert "site site-c: the job is done" in client_log  # told, not left retrying a gone server


def test_a_site_that_fixes_its_export_joins_the_rounds(tmp_path: Path, digits_dir: Path) -> None:
    data = _data_with_a_broken_site(tmp_path, digits_dir)
    sites = ["site-a", "site-b", "site-c"]
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=data,
        sites=sites,
        rounds=2,
        overrides={"clients": {"minClients": 3, "joinGraceSeconds": 1}},
    )
    with cluster(tmp_path, job, sites) as running:
        running.start_aggregator()
        for site in sites:
            running.start_client(site, "--data-retry-seconds", "0.5")
        waiting = running.wait_for(
            lambda s: "site-c" in s["siteErrors"] and s["clients"]["present"] == 2, timeout=120
        )
        assert "3 needed; 1 cannot train" in waiting["message"]
        assert waiting["completedRounds"] == 0  # minClients=3 holds the rounds

        shutil.copy(digits_dir / "site-c" / "annotations.xml", data / "site-c")

        assert running.wait_aggregator(timeout=180) == 0, running.log("aggregator")
        summary = running.summary()

    assert [r["sites"] for r in summary["history"]] == [sites, sites]
    assert summary["sites"]["site-c"]["ready"] is True
    # /v1/status names the ready sites whose labels differ from the job's (non-IID shards
    # may lack a digit), as their label reports say.
    for site in ("site-a", "site-b"):
        data = summary["sites"][site]["data"]
        expected = {"ignored": data["ignoredLabels"], "missing": data["missingLabels"]}
        assert waiting["labelMismatches"].get(site, expected) == expected
        assert (site in waiting["labelMismatches"]) == bool(data["missingLabels"])
    assert "its data is ready now" in running.log("aggregator")


def test_refused_cvat_credentials_reach_the_aggregator_without_the_password(
    tmp_path: Path, digits_dir: Path
) -> None:
    cvat = CvatDouble()
    cvat.tasks[7] = FakeTask(id=7, labels=[(1, "3")], frames=[], tags=[])
    cvat.start()
    sites = ["site-a", "site-b", "site-c"]
    live = {"cvat": {"url": cvat.url, "taskIds": [7]}}
    exports = [
        {"name": s, "data": {"cvatExport": {"path": str(digits_dir / s)}}} for s in sites[:2]
    ]
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=sites,
        rounds=1,
        overrides={
            "sites": [*exports, {"name": "site-c", "data": live}],
            "clients": {"minClients": 2, "joinGraceSeconds": 2},
        },
    )
    wrong = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "not-her-password"}
    try:
        with cluster(tmp_path, job, sites) as running:
            running.start_aggregator()
            for site in sites:
                running.start_client(site, env=wrong if site == "site-c" else None)
            assert running.wait_aggregator(timeout=180) == 0, running.log("aggregator")
            summary = running.summary()
    finally:
        cvat.stop()

    assert summary["history"][0]["sites"] == ["site-a", "site-b"]
    error = summary["sites"]["site-c"]["error"]
    assert error.startswith("site site-c: ")
    assert cvat.url in error and "user 'alice'" in error and "refused" in error
    assert "not-her-password" not in running.log("aggregator") + json.dumps(summary)
