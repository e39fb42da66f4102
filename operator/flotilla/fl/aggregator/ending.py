"""How an aggregator ends a job: its deadlines after the last round, and the summary it leaves.

Light on purpose (no torch, no aiohttp): the local runner imports it to wait for the
aggregator's own deadline rather than a number of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from pathlib import Path

from flotilla.api import FederatedJob

log = logging.getLogger(__name__)

RELEASE_CLIENTS_SECONDS = 5.0  # clients learn "done" and disconnect
SHUTDOWN_SECONDS = 5.0  # the HTTP server closes its connections
# Registering the final model runs in a worker thread that a deadline cannot interrupt:
# it may end up to this long after spec.tracking.flushTimeoutSeconds.
REGISTRATION_MARGIN_SECONDS = 60.0
SUMMARY_WRITE_FAILED = "could not write summary"


def exit_deadline_seconds(job: FederatedJob, *, tracking: bool) -> float:
    """How long an aggregator run with --exit-when-done may take, once the last round is
    over, to exit on its own: release the clients, flush MLflow and register the model."""
    flush = job.spec.tracking.flush_timeout_seconds if tracking else 0.0
    margin = REGISTRATION_MARGIN_SECONDS if tracking else 0.0
    return RELEASE_CLIENTS_SECONDS + flush + margin + SHUTDOWN_SECONDS


def os_error_text(error: OSError) -> str:
    """'No space left on device (ENOSPC)': the words and the errno name a search finds."""
    name = errno.errorcode.get(error.errno or 0)
    words = error.strerror or str(error)
    return f"{words} ({name})" if name else words


def write_summary(path: Path, summary: dict[str, object]) -> str | None:
    """Write `summary` atomically. A failure (a full or read-only disk) is logged with the
    errno name and the path and returned as text; it never raises, so it cannot replace the
    job's outcome with a traceback."""
    temporary = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(summary, indent=2))
        temporary.replace(path)
    except OSError as error:
        problem = f"{SUMMARY_WRITE_FAILED} {path}: {os_error_text(error)}"
        log.error("%s; the job's outcome stands (phase %s)", problem, summary.get("phase"))
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return problem
    return None
