"""Receive one safetensors payload, chunk by chunk, straight into a buffer the receiver owns.

The header is checked against the job's layout before any data is read, data
goes into a preallocated (pooled) buffer with one copy from the socket's chunk,
and a payload that is too long, too short or compressed into a bomb is stopped
at the byte where it goes wrong. Nothing here touches the aggregate.

A receiver can hand out the payload it holds (`prefix`) and a new one can be given it
back (`restore`) before the rest of the wire arrives: that is how a broken upload
resumes (see flotilla.fl.resume).
"""

from __future__ import annotations

import struct

import zstandard

from flotilla.fl.wire import Layout, WireError, parse_header

MAX_HEADER_BYTES = 16 * 1024 * 1024


class SafetensorsReceiver:
    """Feed it the body's chunks in order; `finish()` returns the data offsets."""

    def __init__(self, layout: Layout, into: memoryview, *, zstd: bool = False) -> None:
        if len(into) < layout.data_size:
            raise ValueError("receive buffer smaller than the layout's data")
        self._layout = layout
        self._into = into
        self._head = bytearray()
        self._header_raw = bytearray()  # the payload's header bytes as received so far
        self._header_size: int | None = None
        self._offsets: dict[str, tuple[int, int]] | None = None
        self._filled = 0
        self.wire_bytes = 0
        # A stream writer hands decompressed data over in bounded pieces, so a
        # compression bomb is refused at the first byte past the layout's size.
        self._decompressor = (
            zstandard.ZstdDecompressor().stream_writer(
                _Sink(self),  # type: ignore[arg-type]
                write_size=1 << 18,
            )
            if zstd
            else None
        )

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self.wire_bytes += len(chunk)
        if self._decompressor is None:
            self._consume(memoryview(chunk))
            return
        try:
            self._decompressor.write(chunk)
        except zstandard.ZstdError as error:
            raise WireError(f"the zstd stream is corrupt: {error}") from None

    def reach(self, wire_bytes: int) -> int:
        """How far into the buffer feeding `wire_bytes` more may write: a zstd body's
        next bytes may decompress to the rest of the data."""
        if self._decompressor is not None:
            return self._layout.data_size
        return min(self._filled + wire_bytes, self._layout.data_size)

    @property
    def payload_bytes(self) -> int:
        """Payload bytes (the safetensors body, decompressed) received so far."""
        return len(self._header_raw) + self._filled

    def resume_point(self, frame_bytes: int) -> int:
        """The payload bytes a resumed body may build on: all of a plain body's; a zstd
        body's up to the last frame start (`frame_bytes` apart; 0: not framed, none)."""
        if self._decompressor is None:
            return self.payload_bytes
        return self.payload_bytes // frame_bytes * frame_bytes if frame_bytes else 0

    def prefix(self, size: int) -> list[memoryview]:
        """The first `size` payload bytes received (views, valid while the buffer is held)."""
        head = memoryview(self._header_raw)[:size]
        return [head, self._into[: max(size - len(head), 0)]]

    def restore(self, piece: bytes | bytearray | memoryview) -> None:
        """Payload bytes a broken upload had delivered, in order, before any new wire byte;
        checked as they were the first time."""
        self._consume(memoryview(piece))

    def _consume(self, view: memoryview) -> None:
        if self._offsets is None:
            rest = self._read_header(view)
            self._header_raw += view[: len(view) - len(rest)]
            view = rest
            if self._offsets is None:
                return
        if not view:
            return
        end = self._filled + len(view)
        if end > self._layout.data_size:
            raise WireError(
                f"the payload is longer than its header says ({self._layout.data_size} data bytes)"
            )
        self._into[self._filled : end] = view
        self._filled = end

    def _read_header(self, view: memoryview) -> memoryview:
        if self._header_size is None:
            need = 8 - len(self._head)
            self._head += view[:need]
            view = view[need:]
            if len(self._head) < 8:
                return view
            (size,) = struct.unpack("<Q", self._head)
            if size > MAX_HEADER_BYTES or size > 4 * len(self._layout.header) + 4096:
                raise WireError(f"the safetensors header claims {size} bytes; refused")
            self._header_size = size
            self._head.clear()
        need = self._header_size - len(self._head)
        self._head += view[:need]
        view = view[need:]
        if len(self._head) == self._header_size:
            self._offsets = parse_header(bytes(self._head), self._layout)
        return view

    def finish(self) -> dict[str, tuple[int, int]]:
        if self._decompressor is not None:
            try:
                self._decompressor.flush()  # type: ignore[no-untyped-call]
            except zstandard.ZstdError as error:
                raise WireError(f"the zstd stream is corrupt: {error}") from None
        if self._offsets is None:
            raise WireError("the body ended inside the safetensors header: it is truncated")
        if self._filled != self._layout.data_size:
            raise WireError(
                f"the body is truncated: {self._filled} of {self._layout.data_size} data bytes"
            )
        return self._offsets


class _Sink:
    """The decompressor's output side: every piece goes through the same checks."""

    def __init__(self, receiver: SafetensorsReceiver) -> None:
        self._receiver = receiver

    def write(self, data: bytes) -> int:
        self._receiver._consume(memoryview(data))
        return len(data)
