"""Broken uploads, parked on disk until their client resumes them or their round closes.

A receive buffer is pooled (intake.py), so a paused upload must not hold one between
connections: when an upload's connection breaks, the payload it delivered is written
to a file under the state directory and the buffer goes back to the pool. Its client
resumes with the same upload id; the file is read back into whichever buffer the resumed
upload takes, and deleted. The happy path never writes here. One file per site at most
(a site uploads one update at a time), so the disk holds at most one update per site;
every file goes when its round closes, and the directory is emptied at start (a restarted
aggregator reopens its round). The metadata lives in memory: it is a few numbers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flotilla.fl.receive import SafetensorsReceiver

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20


@dataclass(frozen=True)
class Parked:
    """A broken upload's state: whose, which, how far, and how it was sent."""

    site: str
    upload_id: str
    round_number: int
    total: int  # the whole body's wire bytes
    wire: int  # wire bytes received before it broke
    payload: int  # payload bytes kept on disk: where it resumes
    zstd: bool
    frame_bytes: int
    weights: bool
    started: float  # when it first took a buffer: its pace carries over
    path: Path


class ParkingLot:
    """The parked uploads of the open round, by site. `directory` None: nothing is parked."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._parked: dict[str, Parked] = {}
        self._files = 0
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)  # a previous process's round

    @property
    def enabled(self) -> bool:
        return self._directory is not None

    def new_path(self, site: str) -> Path:
        """A file no other parking uses (a resumed upload that breaks again gets a new one
        while the old one may still be read); whatever the site's name, a plain file name."""
        assert self._directory is not None
        self._files += 1
        name = hashlib.sha256(site.encode()).hexdigest()[:24]
        return self._directory / f"{name}-{self._files}.part"

    def holds(self, site: str) -> bool:
        """Whether the site has a parked upload now."""
        return site in self._parked

    def find(self, site: str, upload_id: str, round_number: int) -> Parked | None:
        parked = self._parked.get(site)
        if parked is None or (parked.upload_id, parked.round_number) != (upload_id, round_number):
            return None
        return parked

    def claim(self, site: str) -> Parked | None:
        """Take the site's parked upload out of the lot; its file stays until `forget`."""
        return self._parked.pop(site, None)

    def discard(self, site: str) -> None:
        parked = self._parked.pop(site, None)
        if parked is not None:
            log.info("site %s: dropped its parked upload %s", site, parked.upload_id)
            self.forget(parked)

    def clear(self) -> None:
        """The round closed: every parked upload goes (and any file still being written)."""
        self._parked.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def forget(self, parked: Parked) -> None:
        parked.path.unlink(missing_ok=True)

    def add(self, parked: Parked) -> None:
        """Count a written upload as parked (on the event loop, once `write` is done)."""
        self._parked[parked.site] = parked  # its file replaced any earlier one's

    @staticmethod
    def write(parked: Parked, pieces: Sequence[memoryview]) -> None:
        """Blocking (run it in a thread): the payload prefix to its file."""
        parked.path.parent.mkdir(parents=True, exist_ok=True)
        with parked.path.open("wb") as file:
            for piece in pieces:
                file.write(piece)

    @staticmethod
    def read_into(parked: Parked, receiver: SafetensorsReceiver) -> None:
        """Blocking (run it in a thread): the parked payload back through `receiver`."""
        with parked.path.open("rb") as file:
            left = parked.payload
            while left > 0:
                piece = file.read(min(READ_PIECE, left))
                if not piece:
                    raise OSError(f"{parked.path} ends {left} bytes early")
                receiver.restore(piece)
                left -= len(piece)


def resume_problem(
    parked: Parked,
    *,
    start: int,
    total: int,
    resume_from: int,
    rest: int,
    zstd: bool,
    frame_bytes: int,
    weights: bool,
) -> str | None:
    """Why a request cannot resume `parked` (None: it can). `rest`: its Content-Length."""
    if total != parked.total:
        return f"Content-Range says {total} bytes in all; the broken upload had {parked.total}"
    if resume_from != parked.payload:
        return f"it resumes from payload byte {resume_from}; this end holds {parked.payload}"
    if (zstd, frame_bytes, weights) != (parked.zstd, parked.frame_bytes, parked.weights):
        return "its compression, frames or update kind differ from the broken upload's"
    if (start != parked.payload) if not zstd else (start > parked.wire):
        return f"Content-Range starts at byte {start}, not where {parked.payload} payload bytes end"
    if rest != total - start:
        return f"the body has {rest} bytes; Content-Range says {total - start}"
    return None
