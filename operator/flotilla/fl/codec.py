"""Update compression and the numeric checks every received delta must pass.

Clients compress their float32 delta to float16, or to int8 with one float32
scale per tensor (value = q * scale, q in [-127, 127]), optionally zstd on top.
The aggregator never dequantizes into a new buffer: the aggregation rules fold
int8 and float16 tensors with their scale directly (see strategies.base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import zstandard

from flotilla.fl.resume import ZSTD_FRAME_BYTES, Restarts
from flotilla.fl.wire import (
    SCALE_SUFFIX,
    Buffer,
    Layout,
    WireDtype,
    WireError,
    flat_pair,
    update_layout,
)

# float32 values per piece of a weights upload's norm: 1 MiB, which stays in cache
# between the subtraction that writes it and the dot product that reads it.
NORM_CHUNK = 1 << 18
# The largest float32: the aggregation rules fold in float32, so every value must fit it.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class DecodedUpdate:
    """A received update: tensors by layout name (views), int8 scales, the delta's norm.

    The delta is `tensors` (times `scales`), minus `minus` where that is set (a float32
    client sent its trained weights; `minus` is the round's global model)."""

    tensors: dict[str, torch.Tensor]
    scales: dict[str, float]
    norm: float
    minus: Mapping[str, torch.Tensor] | None = None


class UpdateEncoder:
    """Client side: turns a float32 delta into the job's wire encoding, reusing one buffer."""

    def __init__(
        self,
        model: Layout,
        *,
        dtype: WireDtype,
        zstd_level: int | None,
        frame_bytes: int = ZSTD_FRAME_BYTES,
    ) -> None:
        """`frame_bytes`: zstd bodies are independent frames of this many payload bytes, so
        a broken upload resumes at a frame (see flotilla.fl.resume)."""
        self.layout = update_layout(model, dtype)
        self._dtype = dtype
        self._zstd = zstandard.ZstdCompressor(level=zstd_level) if zstd_level else None
        self._frame_bytes = frame_bytes
        self._buffer: bytearray | None = None
        self.restarts = Restarts()  # where the last encoded body may restart

    @property
    def compression(self) -> str | None:
        return "zstd" if self._zstd else None

    def encode(self, delta_buffer: Buffer, delta: Mapping[str, torch.Tensor]) -> memoryview:
        """The body to upload. For float32 it is `delta_buffer` itself: no copy.

        (Float32 clients pass their trained weights here, in the same layout: see
        `decode_update`'s `minus`.)"""
        if self._dtype == "float32":
            body = memoryview(delta_buffer)
        else:
            if self._buffer is None:
                self._buffer = self.layout.allocate()
            out = self.layout.views(self._buffer)
            for name, tensor in delta.items():
                if self._dtype == "float16":
                    out[name].copy_(tensor)
                else:
                    out[name + SCALE_SUFFIX].fill_(_quantize_int8(tensor, out[name]))
            body = memoryview(self._buffer)
        if self._zstd is not None:
            return self._compress(body)
        return body

    def _compress(self, body: memoryview) -> memoryview:
        assert self._zstd is not None
        out, starts = bytearray(), []
        for start in range(0, len(body), self._frame_bytes):
            starts.append(len(out))
            out += self._zstd.compress(body[start : start + self._frame_bytes])
        self.restarts = Restarts(frame_bytes=self._frame_bytes, frame_starts=tuple(starts))
        return memoryview(out)


def _quantize_int8(tensor: torch.Tensor, out: torch.Tensor) -> float:
    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    scale = peak / 127.0 if peak > 0 else 0.0
    if scale == 0.0:
        out.zero_()
    else:
        out.copy_(torch.round(tensor / scale).clamp_(-127, 127))
    return scale


def decode_update(
    views: dict[str, torch.Tensor],
    *,
    max_norm: float | None,
    minus: Mapping[str, torch.Tensor] | None = None,
) -> DecodedUpdate:
    """Split int8 scales from tensors and check the values: finite, and within the norm bound.

    One pass over the data for the checks: the L2 norm of a tensor is non-finite exactly
    when it holds a NaN or an infinity (or overflows float32, which is no model update).
    The check is made in float32, the dtype the rules fold in, for every wire dtype: an int8
    tensor's squared norm (q * scale dequantized) must fit float32 as a float32 tensor's
    must. That bounds every value by sqrt(3.4e38) = 1.8e19, so even times the largest
    example count a client may claim (2**40) a weighted fold stays finite in float32.
    `minus`: the body holds a client's trained float32 weights, not a delta; the delta
    is them minus this (the round's global model). It is never written out: its norm is
    taken chunk by chunk through a cache-sized scratch, and the aggregation rules take
    `minus` off as they fold or copy (see RoundAggregate.add). The client then needs no
    copy of the global model, and the aggregator no model-sized pass to make the delta.
    """
    if minus is not None and (
        views.keys() != minus.keys() or any(t.dtype != torch.float32 for t in views.values())
    ):
        raise WireError("weights are sent as float32 tensors of the model, nothing else")
    scales = {
        name[: -len(SCALE_SUFFIX)]: float(t)
        for name, t in views.items()
        if name.endswith(SCALE_SUFFIX)
    }
    # Without scales, the views themselves: their `flat` view goes on to the fold.
    tensors = (
        {name: t for name, t in views.items() if not name.endswith(SCALE_SUFFIX)}
        if scales
        else views
    )
    for name, scale in scales.items():
        if not math.isfinite(scale) or scale < 0:
            raise WireError(f"tensor {name!r}: int8 scale {scale!r} is not a finite number >= 0")
    total = _whole_squares(tensors, minus) if not scales else None
    if total is None or not total <= FLOAT32_MAX:  # NaN too: find and name the tensor
        total = _squares_by_tensor(tensors, scales, minus)
    norm = math.sqrt(total)
    if max_norm is not None and norm > max_norm:
        raise WireError(f"update norm {norm:.4g} exceeds the job's limit maxUpdateNorm={max_norm}")
    return DecodedUpdate(tensors=tensors, scales=scales, norm=norm, minus=minus)


def _whole_squares(
    tensors: Mapping[str, torch.Tensor], minus: Mapping[str, torch.Tensor] | None
) -> float | None:
    """The squared norm of the whole delta in one pass over its flat view (wire.TensorViews),
    or None without one. Within float32's range it is every tensor's within it too."""
    if minus is None:
        flat = getattr(tensors, "flat", None)
        if flat is None:
            return None
        return float(torch.linalg.vector_norm(flat, dtype=torch.float32)) ** 2
    pair = flat_pair(tensors, minus)
    if pair is None:
        return None
    return _squared_distance(*pair, torch.empty(min(NORM_CHUNK, pair[0].numel())))


def _squares_by_tensor(
    tensors: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    minus: Mapping[str, torch.Tensor] | None,
) -> float:
    """The squared norm, tensor by tensor; raises naming the first that is not finite or
    leaves float32's range."""
    largest = max((t.numel() for t in tensors.values()), default=0)
    scratch = torch.empty(min(NORM_CHUNK, largest) if minus is not None else 0)
    total = 0.0
    for name, tensor in tensors.items():
        if minus is not None:
            squares = _squared_distance(tensor, minus[name], scratch)
        elif tensor.dtype == torch.int8:
            # In float64, then held to float32's range: q=127 with scale 3e38 is finite here
            # but infinite once folded.
            q = torch.linalg.vector_norm(tensor.to(torch.float32))
            norm = float(q) * scales.get(name, 1.0)
            squares = norm * norm
        else:
            squares = float(torch.linalg.vector_norm(tensor, dtype=torch.float32)) ** 2
        if not math.isfinite(squares):
            raise WireError(f"tensor {name!r} holds NaN or infinite values")
        if squares > FLOAT32_MAX:
            raise WireError(
                f"tensor {name!r} holds values beyond float32's range once dequantized "
                f"(scale {scales.get(name, 1.0):.3g}): its squared norm {squares:.3g} "
                f"exceeds {FLOAT32_MAX:.3g}"
            )
        total += squares
    return total


def _squared_distance(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor) -> float:
    """||a - b||^2, a chunk at a time: the difference lives in `scratch`, in cache."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for start in range(0, a.numel(), NORM_CHUNK):
        end = min(start + NORM_CHUNK, a.numel())
        part = scratch[: end - start]
        torch.sub(a[start:end], b[start:end], out=part)
        total += float(torch.dot(part, part))
    return total
