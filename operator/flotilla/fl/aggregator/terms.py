"""What an upload says of itself on arrival, and what the intake hands on: plain data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flotilla.fl.codec import DecodedUpdate
from flotilla.fl.resume import ContentRange


@dataclass(frozen=True)
class Resumable:
    """An upload its client can resume: its id, where a zstd body restarts, and for the
    rest of a broken upload, its `Content-Range` and the payload byte it resumes from."""

    upload_id: str
    frame_bytes: int = 0  # zstd: payload bytes per independent frame; 0: no frame restarts
    resume: ContentRange | None = None
    resume_from: int = 0


@dataclass(frozen=True)
class UploadTerms:
    """Who uploads, how many bytes it announced, and how long its round has left."""

    site: str
    size: int
    seconds_left: float
    round_number: int = 0
    weights: bool = False
    resumable: Resumable | None = None

    @property
    def resumed_at(self) -> int:
        """The wire byte a resumed body starts at (0 for a whole one)."""
        tag = self.resumable
        return tag.resume.start if tag is not None and tag.resume is not None else 0


@dataclass(frozen=True)
class ReceivedUpdate:
    """A body received and checked: the update, ready to fold, and its bytes on the wire.
    `release`, called with a tensor's name once the fold is done reading it, lets the next
    upload's bytes into that part of the receive buffer (fence.py)."""

    update: DecodedUpdate
    wire_bytes: int
    release: Callable[[str], None] | None = None
