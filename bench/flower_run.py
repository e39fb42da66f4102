"""One Flower run for the bench: Flower's Deployment Engine on 127.0.0.1, insecure.

A SuperLink, one SuperNode per site (node-config `site="..."`), and `flwr run` of the
Flower App in bench/flower_app/ (Flotilla's model, data and training code under Flower's
FedAvg). The ServerApp writes each round's start, duration and the clients' training
seconds; this samples the summed RSS of the SuperLink's process tree (SuperLink,
SuperExec, ServerApp). Needs flwr (the bench environment, `make bench-env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from procs import stop_group, tree, tree_rss_peak

APP_DIR = Path(__file__).resolve().parent / "flower_app"
READY_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on {port}")


def run_flower(
    *, job: Path, sites: list[str], env: dict[str, str], scratch: Path
) -> dict[str, Any]:
    """Run the job under Flower to its end; returns rounds in the bench's common shape."""
    bin_dir = Path(sys.executable).parent  # the bench venv: flwr, flower-superlink, ...
    home = scratch / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        **env,
        "FLWR_HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }

    def start(args: list[str], log: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdout=open(scratch / log, "wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=scratch,
        )

    superlink = start(
        [
            "flower-superlink",
            "--insecure",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        "superlink.log",
    )
    nodes: list[subprocess.Popen[bytes]] = []
    out = scratch / "flower-rounds.json"
    try:
        wait_port(port, superlink, scratch / "superlink.log")
        nodes = [
            start(
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f'site="{site}"',
                ],
                f"supernode-{site}.log",
            )
            for site in sites
        ]
        started = time.time()
        with tree_rss_peak(superlink.pid) as memory:
            subprocess.run(
                [
                    "flwr",
                    "run",
                    str(APP_DIR),
                    "bench",
                    "--stream",
                    "--run-config",
                    f'job="{job}" out="{out}"',
                ],
                stdout=open(scratch / "flwr-run.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=env,
                check=True,
                timeout=3600,
            )
    finally:
        # SuperExec and the ServerApp/ClientApp processes start sessions of their own:
        # stop every descendant, not only the groups this started.
        stragglers = [pid for p in [*nodes, superlink] for pid in tree(p.pid)[1:]]
        for process in [*nodes, superlink]:
            stop_group(process)
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not out.exists():
        raise RuntimeError(
            f"the Flower run wrote no timings:\n{(scratch / 'flwr-run.log').read_text()[-3000:]}"
        )
    data = json.loads(out.read_text())
    rounds = [
        {
            "round": r["round"],
            "started": r["started"],
            "duration": r["durationSeconds"],
            "slowestTrain": max(r["trainSeconds"]),
            "bytes": None,
            "accuracy": r.get("accuracy"),
        }
        for r in data["rounds"]
    ]
    return {"started": started, "rounds": rounds, "peakKib": memory.peak_kib}
