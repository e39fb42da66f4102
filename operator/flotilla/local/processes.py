"""Child processes of the local runner: started with their logs in files, stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A runner killed with SIGKILL must not leave an aggregator waiting forever.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


async def start_child(
    name: str,
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    stdout_pipe: bool = False,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Start `python -m flotilla ARGS` with stderr (and stdout, unless piped) to `log_path`;
    `pass_fds` are inherited (the state directory's lock, for the aggregator)."""
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child owns it once started
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flotilla",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        log_file.close()
    return Child(name=name, process=process, log_path=log_path)


async def stop_children(children: Sequence[Child], *, grace: float = 10.0) -> None:
    """SIGTERM everything still running, then SIGKILL what did not stop within `grace`."""
    running = [c for c in children if c.process.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    if not running:
        return
    waits = [asyncio.create_task(c.process.wait()) for c in running]
    _, pending = await asyncio.wait(waits, timeout=grace)
    for child in running:
        if child.process.returncode is None:
            log.warning("%s did not stop within %.0fs; killing it", child.name, grace)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
    if pending:
        await asyncio.wait(pending)
