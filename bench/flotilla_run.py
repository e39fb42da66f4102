"""One Flotilla run for the bench: an aggregator and one client process per site on 127.0.0.1.

The same processes `flotilla run` starts (aggregator, then clients with `--threads 1`),
driven directly so the bench can read the aggregator's per-round history (with every
client's training seconds) and its peak RSS (`VmHWM`) against its RSS before round 1.
With `tls`, HTTPS as `flotilla run` serves it: a throwaway CA and a certificate for
127.0.0.1 (flotilla.local.tls), `--tls-cert/--tls-key` for the aggregator, `--ca-file`
for the clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import cpu_seconds, pss_peak, status_kib, stop_group, tree

from flotilla.fl.tls import client_context
from flotilla.local.tls import write_local_tls


def get_json(url: str, timeout: float = 60, trust: ssl.SSLContext | None = None) -> Any:
    with urllib.request.urlopen(url, timeout=timeout, context=trust) as response:
        return json.loads(response.read())


def run_flotilla(
    *,
    job: Path,
    sites: list[str],
    env: dict[str, str],
    scratch: Path,
    profile: Path | None = None,
    dial: Callable[[str, str], str] | None = None,
    tls: bool = False,
) -> dict[str, Any]:
    """Run the job to its end; returns rounds in the bench's common shape and the memory.

    With `profile`, the aggregator runs under py-spy (a speedscope file there, all threads,
    idle frames left out); its memory figures are then py-spy's, not the aggregator's.
    `dial(site, url)`: the URL that site's client dials instead of the aggregator's (a
    proxy that shapes its link, slow_links.py). `tls`: serve HTTPS (the job's spec must
    not disable TLS, jobs.overhead_job(tls=True)).
    """
    tokens = {site: f"bench-token-{site}-0123456789" for site in sites}
    (scratch / "tokens.json").write_text(json.dumps(tokens))
    env = {**os.environ, **env, "FLOTILLA_LOG_LEVEL": "WARNING"}
    flotilla = [sys.executable, "-m", "flotilla"]
    beside = Path(sys.executable).parent / "py-spy"  # .venv-bench's; else one on PATH
    spy = beside if beside.exists() else Path(shutil.which("py-spy") or "py-spy")
    prefix = [str(spy), "record", "-f", "speedscope", "-o", str(profile), "--threads", "--"]
    pki = write_local_tls(scratch / "tls") if tls else None
    serve_tls = pki.aggregator_args() if pki else []
    trust_args = ["--ca-file", str(pki.ca)] if pki else []
    trust = client_context(ca_file=pki.ca) if pki else None
    aggregator = subprocess.Popen(
        [
            *(prefix if profile else []),
            *flotilla,
            "aggregator",
            "--job",
            str(job),
            "--tokens-file",
            str(scratch / "tokens.json"),
            "--state-dir",
            str(scratch / "state"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-line",
            "--no-tracking",
            # As `flotilla run` starts it, unless the links are shaped to stand for far ones.
            *([] if dial else ["--clients-on-this-host"]),
            *serve_tls,
        ],
        stdout=subprocess.PIPE,
        stderr=open(scratch / "aggregator.log", "wb"),  # noqa: SIM115
        env=env,
        start_new_session=True,
    )
    assert aggregator.stdout is not None
    line = ""
    while not line.startswith("FLOTILLA-READY "):  # py-spy, when profiling, prints first
        line = aggregator.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"the aggregator did not start; see {scratch}/aggregator.log")
    url = line.split()[-1]
    baseline = status_kib(aggregator.pid, "VmRSS")
    workers = [
        subprocess.Popen(
            [
                *flotilla,
                "client",
                "--aggregator",
                dial(site, url) if dial else url,
                *trust_args,
                "--threads",
                "1",
                "--device",
                "cpu",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(scratch / f"{site}.log", "wb"),  # noqa: SIM115
            env={**env, "FLOTILLA_TOKEN": token},
            start_new_session=True,
        )
        for site, token in tokens.items()
    ]
    started = time.time()
    marks: list[tuple[int, float, float]] = []  # (round, aggregator's CPU s, the clients')
    try:
        seq = -1
        with pss_peak([aggregator.pid, *(w.pid for w in workers)]) as everything:
            while True:
                status = get_json(f"{url}/v1/status?after={seq}&wait=20", trust=trust)
                seq = status["seq"]
                cpu = sum(cpu_seconds(w.pid) for w in workers)
                marks.append((status.get("round", 0), cpu_seconds(aggregator.pid), cpu))
                if status["phase"] in ("done", "failed"):
                    break
        peak = status_kib(aggregator.pid, "VmHWM")
        client_peak = max(status_kib(w.pid, "VmHWM") for w in workers)
        history = get_json(f"{url}/v1/history", trust=trust)
    finally:
        if profile:  # stop the aggregator, not py-spy: it writes the profile once that exits
            for pid in tree(aggregator.pid)[1:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            aggregator.wait(timeout=60)
        for process in [*workers, aggregator]:
            stop_group(process)
    if status["phase"] != "done":
        raise RuntimeError(f"flotilla bench job failed: {status['failure']}")
    rounds = [
        {
            "round": r["round"],
            "started": r["started_at"],
            "duration": r["duration_seconds"],
            "slowestTrain": max(c["trainSeconds"] for c in r["clients"].values()),
            "answered": len(r["clients"]),
            "bytes": r["bytes_received"],
            "accuracy": r.get("accuracy"),
        }
        for r in history
    ]
    return {
        "started": started,
        "rounds": rounds,
        "baselineKib": baseline,
        "peakKib": peak,
        "clientPeakKib": client_peak,
        "allPssPeakKib": everything.peak_kib,
        "cpuAfterRound1": cpu_after_round_1(marks),
    }


def cpu_after_round_1(marks: list[tuple[int, float, float]]) -> tuple[float, float]:
    """CPU seconds of the aggregator and of all clients together from the start of round 2
    (as the status first shows it) to the job's end: the measured rounds' CPU."""
    first = next((m for m in marks if m[0] >= 2), marks[0])
    return marks[-1][1] - first[1], marks[-1][2] - first[2]
