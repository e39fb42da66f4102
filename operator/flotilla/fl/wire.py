"""The wire format: weights and deltas as safetensors files with a layout fixed per job.

Weights and updates never travel as pickle: a client is not trusted, and
unpickling its bytes would run its code. The safetensors format is a JSON header
and raw little-endian tensor data, so a receiver can check every name, dtype and
shape before it reads a byte of data, and can read that data straight into a
buffer it owns.

A `Layout` is computed once per model and encoding. Its `allocate()` gives one
contiguous buffer (header + data) whose tensors are zero-copy views: the global
model *is* a valid safetensors file, served to clients and written to disk
without serialization, and a client's delta is uploaded from its buffer as is.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

WireDtype = Literal["float32", "float16", "int8"]
Buffer = bytearray | memoryview | mmap.mmap

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "I8": torch.int8,
}
_CODES = {dtype: code for code, dtype in _TORCH_DTYPES.items()}
_ELEMENT_SIZE = {"F32": 4, "F16": 2, "I8": 1}
_WIRE_CODES: dict[str, str] = {"float32": "F32", "float16": "F16", "int8": "I8"}
SCALE_SUFFIX = ":scale"
MAX_HEADER_BYTES = 16 * 1024 * 1024


class WireError(ValueError):
    """A payload does not match the job's layout; the message says how."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    code: str  # safetensors dtype code: F32, F16 or I8

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ELEMENT_SIZE[self.code]


class TensorViews(dict[str, torch.Tensor]):
    """A layout's tensors over one buffer, by name, in the layout's order.

    `flat`: one 1-D view over all of them, when they share a dtype and lie back to back in
    that order (always so for a layout's own offsets; a sender may order its body
    otherwise). Two such maps of one model's tensors match element for element, so a pass
    over a whole update is one torch operation, not one per tensor: for a model of small
    tensors, the per-operation cost is most of a fold (bench/fold_small.py).
    """

    flat: torch.Tensor | None = None


def flat_pair(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`a` and `b` as two 1-D views matching element for element, if both have one
    (`TensorViews.flat`) over the same names in the same order and shapes; else None."""
    flat_a, flat_b = getattr(a, "flat", None), getattr(b, "flat", None)
    if flat_a is None or flat_b is None or flat_a.numel() != flat_b.numel():
        return None
    if list(a) != list(b) or any(t.shape != b[name].shape for name, t in a.items()):
        return None
    return flat_a, flat_b


@dataclass(frozen=True)
class Layout:
    """Where each tensor lives in a safetensors file; immutable, shared per job."""

    tensors: tuple[TensorSpec, ...]
    header: bytes  # the 8-byte length prefix and the JSON header, padded to 8 bytes
    offsets: Mapping[str, tuple[int, int]]  # data offsets, relative to the end of the header

    @staticmethod
    def of(tensors: Sequence[TensorSpec]) -> Layout:
        # Wider dtypes first keeps every tensor aligned for zero-copy views.
        ordered = sorted(tensors, key=lambda t: -_ELEMENT_SIZE[t.code])
        offsets: dict[str, tuple[int, int]] = {}
        entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
        position = 0
        for spec in ordered:
            if spec.name in offsets:
                raise WireError(f"tensor {spec.name!r} appears twice")
            offsets[spec.name] = (position, position + spec.nbytes)
            entries[spec.name] = {
                "dtype": spec.code,
                "shape": list(spec.shape),
                "data_offsets": [position, position + spec.nbytes],
            }
            position += spec.nbytes
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        header = struct.pack("<Q", len(text)) + text
        return Layout(tensors=tuple(ordered), header=header, offsets=offsets)

    # Cached: the receiver asks for them on every piece of every upload, and a model of
    # hundreds of tensors summed them all each time.
    @functools.cached_property
    def data_size(self) -> int:
        return sum(spec.nbytes for spec in self.tensors)

    @functools.cached_property
    def header_block(self) -> bytes:
        """The header without its 8-byte length: the JSON text, padded."""
        return self.header[8:]

    @functools.cached_property
    def total_size(self) -> int:
        return len(self.header) + self.data_size

    def by_name(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.tensors}

    def allocate(self) -> bytearray:
        """A zero-filled buffer holding this layout's header; its data starts zeroed."""
        buffer = bytearray(self.total_size)
        buffer[: len(self.header)] = self.header
        return buffer

    def allocate_mapped(self) -> mmap.mmap:
        """Like `allocate`, as anonymous memory the kernel commits page by page on first write.

        A bytearray is zeroed (so resident) at once; this one costs nothing until it is
        filled, so a process can build a model and move it into the buffer tensor by
        tensor without holding two copies at any moment.
        """
        buffer = mmap.mmap(-1, self.total_size)
        buffer[: len(self.header)] = self.header
        return buffer

    def views(
        self,
        buffer: Buffer,
        *,
        offsets: Mapping[str, tuple[int, int]] | None = None,
        base: int | None = None,
    ) -> TensorViews:
        """Zero-copy tensors over `buffer`: writing to them writes the buffer."""
        offsets = self.offsets if offsets is None else offsets
        base = len(self.header) if base is None else base
        views = TensorViews()
        back_to_back, position = len({spec.code for spec in self.tensors}) == 1, None
        for spec in self.tensors:
            start, end = offsets[spec.name]
            back_to_back = back_to_back and position in (None, start)
            position = end
            flat = (
                torch.frombuffer(
                    buffer, dtype=_TORCH_DTYPES[spec.code], count=spec.numel, offset=base + start
                )
                if spec.numel
                else torch.empty(0, dtype=_TORCH_DTYPES[spec.code])
            )
            views[spec.name] = flat.view(spec.shape)
        numel = sum(spec.numel for spec in self.tensors)
        if back_to_back and numel:
            first = self.tensors[0]
            views.flat = torch.frombuffer(
                buffer,
                dtype=_TORCH_DTYPES[first.code],
                count=numel,
                offset=base + offsets[first.name][0],
            )
        return views


def model_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """The float32 layout of a model's floating-point state (integer buffers stay local)."""
    specs = [
        TensorSpec(name, tuple(tensor.shape), "F32")
        for name, tensor in state.items()
        if tensor.is_floating_point()
    ]
    if not specs:
        raise WireError("the model has no floating-point tensors to train")
    return Layout.of(specs)


def update_layout(model: Layout, dtype: WireDtype) -> Layout:
    """The layout of a client delta sent as `dtype` (int8 adds one float32 scale per tensor)."""
    code = _WIRE_CODES[dtype]
    specs = [TensorSpec(spec.name, spec.shape, code) for spec in model.tensors]
    if dtype == "int8":
        specs += [TensorSpec(spec.name + SCALE_SUFFIX, (), "F32") for spec in model.tensors]
    return Layout.of(specs)


def parse_header(raw: bytes, expected: Layout) -> dict[str, tuple[int, int]]:
    """Check a received JSON header against the layout; return its data offsets.

    The sender may order tensors as it likes, so offsets come from its header,
    but every name, dtype and shape must be the layout's, and the tensors must
    tile the data section exactly (no gaps, no overlaps, no trailing bytes).
    """
    if raw == expected.header_block:
        # The layout's own header, byte for byte, as clients send it: valid as made. At
        # 1,000 sites, decoding and checking it for every upload was ~5% of the event loop.
        return dict(expected.offsets)
    try:
        header = json.loads(raw)
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise WireError(f"the safetensors header is not valid JSON: {error}") from None
    except RecursionError:  # "[[[[...": Python's decoder recurses per level
        raise WireError("the safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise WireError("the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    specs = expected.by_name()
    missing = sorted(set(specs) - set(header))
    unexpected = sorted(set(header) - set(specs))
    if missing or unexpected:
        raise WireError(
            "tensor names differ from the job's model: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    offsets: dict[str, tuple[int, int]] = {}
    for name, entry in header.items():
        offsets[name] = _check_entry(name, entry, specs[name])
    position = 0
    for start, end in sorted(offsets.values()):
        if start != position:
            raise WireError(f"tensor data is not contiguous at byte {start} (expected {position})")
        position = end
    return offsets


def _check_entry(name: str, entry: object, spec: TensorSpec) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise WireError(f"tensor {name!r}: header entry is not an object")
    dtype, shape, span = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype != spec.code:
        raise WireError(f"tensor {name!r}: dtype {dtype!r}, expected {spec.code!r}")
    if shape != list(spec.shape):
        raise WireError(f"tensor {name!r}: shape {shape!r}, expected {list(spec.shape)}")
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        or span[1] - span[0] != spec.nbytes
        or span[0] < 0
    ):
        raise WireError(f"tensor {name!r}: data_offsets {span!r} do not fit {spec.nbytes} bytes")
    return (span[0], span[1])


def _few(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def dtype_code(tensor: torch.Tensor) -> str:
    return _CODES[tensor.dtype]
