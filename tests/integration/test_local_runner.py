"""`flotilla run` as a user meets it: Ctrl-C, resuming, failing clearly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import flotilla, write_job

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b", "site-c"]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_ctrl_c_stops_every_process_and_a_rerun_resumes(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=3,
        overrides={"training": {"localEpochs": 10}},
    )
    state = tmp_path / "state"
    command = flotilla(
        "run", str(job), "--state-dir", str(state), "--summary-json", str(tmp_path / "summary.json")
    )
    runner = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
    )
    assert runner.stdout is not None
    for line in runner.stdout:  # the first completed round is printed as it happens
        if line.startswith("round   1/3"):
            break
    aggregator_log = (state / "logs" / "aggregator.log").read_text()
    port = re.search(r"listening on http://127.0.0.1:(\d+)", aggregator_log)
    assert port is not None

    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)

    assert runner.returncode == 130, stderr
    assert "interrupted" in stderr
    assert _processes_mentioning(f"127.0.0.1:{port.group(1)}") == []
    assert _processes_mentioning(str(state)) == []

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    history = json.loads((tmp_path / "summary.json").read_text())["history"]
    assert [r["round"] for r in history] == [1, 2, 3]


def test_a_site_without_its_data_fails_the_run_and_says_why(
    tmp_path: Path, digits_dir: Path
) -> None:
    job = write_job(tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=2)
    text = job.read_text().replace(str(digits_dir / "site-c"), str(tmp_path / "missing"))
    job.write_text(text)

    result = subprocess.run(
        flotilla("run", str(job), "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "site-c" in result.stderr
    assert f"{tmp_path / 'missing'} does not exist" in result.stderr


def test_an_invalid_spec_exits_2_naming_the_field(tmp_path: Path, digits_dir: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=2,
        overrides={"training": {"learningRate": -1}},
    )

    result = subprocess.run(
        flotilla("run", str(job)), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )

    assert result.returncode == 2
    assert "spec.training.learningRate" in result.stderr and "-1" in result.stderr


def test_a_second_run_on_a_locked_state_dir_exits_2_naming_the_holder(
    tmp_path: Path, digits_dir: Path
) -> None:
    from flotilla.fl.aggregator.statelock import lock_state_dir

    job = write_job(tmp_path / "job.yaml", data_dir=digits_dir, sites=SITES, rounds=1)
    state = tmp_path / "state"
    first = lock_state_dir(state)  # as the first run holds it
    (state / "tokens.json").write_text('{"site-a": "first"}')

    second = subprocess.run(
        flotilla("run", str(job), "--state-dir", str(state)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert second.returncode == 2, second.stderr
    assert f"{state} is in use by process {os.getpid()}" in second.stderr
    assert (state / "tokens.json").read_text() == '{"site-a": "first"}'
    assert not (state / "logs").exists()
    first.release()
