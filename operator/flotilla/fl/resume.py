"""Resumable transfers on the wire: their headers, byte ranges, and where a body may restart.

An upload carries an id (`X-Flotilla-Upload-Id`). When its connection breaks, the
aggregator keeps what it received; the client asks how much (`received`, in *payload*
bytes: the safetensors body before any compression) and sends the rest with
`Content-Range: bytes START-(TOTAL-1)/TOTAL` (wire bytes) and `X-Flotilla-Resume-From`
(that payload offset). A plain body restarts at any byte. A zstd body is compressed in
independent frames of `frame_bytes` payload bytes each (`X-Flotilla-Zstd-Frame-Bytes`),
so a fresh decompressor can start at any frame: the aggregator rounds what it holds
down to a frame's start, and the client maps that to the frame's wire offset. A model
download restarts with `Range: bytes=N-`. Pure: nothing here does I/O.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

UPLOAD_ID_HEADER = "X-Flotilla-Upload-Id"
RESUME_FROM_HEADER = "X-Flotilla-Resume-From"
FRAME_BYTES_HEADER = "X-Flotilla-Zstd-Frame-Bytes"
# Payload bytes per independent zstd frame: what a broken zstd upload sends again at most
# (plus what was in flight). 1 MiB costs no measurable ratio on model data.
ZSTD_FRAME_BYTES = 1 << 20
MIN_FRAME_BYTES = 4096
RESUME_REFUSALS = frozenset({"unknown_upload", "bad_range"})

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20})")
_RANGE = re.compile(r"bytes=(\d{1,20})-(\d{0,20})")


class RangeError(ValueError):
    """A range, upload id or resume header that does not parse; the message says which."""


def new_upload_id() -> str:
    return secrets.token_urlsafe(16)


def checked_upload_id(raw: str) -> str:
    if not _UPLOAD_ID.fullmatch(raw):
        raise RangeError(f"{UPLOAD_ID_HEADER} {raw[:80]!r} is not 8 to 64 of [A-Za-z0-9_-]")
    return raw


def checked_frame_bytes(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or int(raw) < MIN_FRAME_BYTES:
        raise RangeError(f"{FRAME_BYTES_HEADER} {raw[:40]!r} is not a count >= {MIN_FRAME_BYTES}")
    return int(raw)


@dataclass(frozen=True)
class ContentRange:
    """`bytes START-(TOTAL-1)/TOTAL`: the rest of a body of TOTAL bytes, from START."""

    start: int
    total: int

    def header(self) -> str:
        return f"bytes {self.start}-{self.total - 1}/{self.total}"


def parse_content_range(raw: str) -> ContentRange:
    match = _CONTENT_RANGE.fullmatch(raw.strip())
    if not match:
        raise RangeError(f"Content-Range {raw[:80]!r} is not 'bytes START-END/TOTAL'")
    start, end, total = (int(group) for group in match.groups())
    if not start <= end or end != total - 1:
        raise RangeError(
            f"Content-Range {raw[:80]!r} must run from its start to the body's last byte"
        )
    return ContentRange(start=start, total=total)


def parse_range(raw: str, size: int) -> int:
    """The first byte asked for by `Range: bytes=N-` (or `bytes=N-M`, M the last byte)."""
    match = _RANGE.fullmatch(raw.strip())
    if not match:
        raise RangeError(f"Range {raw[:80]!r} is not 'bytes=N-': one range, to the end")
    start, end = int(match.group(1)), match.group(2)
    if start >= size or (end and int(end) != size - 1):
        raise RangeError(f"Range {raw[:80]!r} does not end at byte {size - 1} of {size}")
    return start


@dataclass(frozen=True)
class Restarts:
    """Where an upload's body may restart: any byte of a plain body; a frame of a zstd one."""

    frame_bytes: int = 0  # payload bytes per frame; 0: the body is the payload itself
    frame_starts: tuple[int, ...] = ()  # each frame's first wire byte

    def wire_offset(self, payload: int) -> int:
        """The wire byte to send from so that the body resumes at payload byte `payload`."""
        if not self.frame_bytes:
            return payload
        frame, within = divmod(payload, self.frame_bytes)
        if within or frame >= len(self.frame_starts):
            raise RangeError(f"payload byte {payload} is not where a frame starts")
        return self.frame_starts[frame]

    def headers(self) -> dict[str, str]:
        return {FRAME_BYTES_HEADER: str(self.frame_bytes)} if self.frame_bytes else {}
