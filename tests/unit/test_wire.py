"""The wire format: layouts, streaming receive, compression and the value checks."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
import zstandard
from safetensors.torch import load, save

from flotilla.fl import wire
from flotilla.fl.codec import NORM_CHUNK, UpdateEncoder, decode_update
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.wire import WireError, model_layout, parse_header, update_layout


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3),
        "conv.bias": torch.randn(4),
        "fc.weight": torch.randn(10, 36),
        "steps": torch.tensor(3),  # integer buffers stay local
    }


def _fill(layout_state: dict[str, torch.Tensor]) -> tuple[bytearray, dict[str, torch.Tensor]]:
    layout = model_layout(layout_state)
    buffer = layout.allocate()
    views = layout.views(buffer)
    for name, view in views.items():
        view.copy_(layout_state[name])
    return buffer, views


def _receive(layout, body: bytes, *, zstd: bool = False, chunk: int = 7):
    into = memoryview(bytearray(layout.data_size))
    receiver = SafetensorsReceiver(layout, into, zstd=zstd)
    for start in range(0, len(body), chunk):
        receiver.feed(body[start : start + chunk])
    offsets = receiver.finish()
    return layout.views(into, offsets=offsets, base=0)


def test_global_buffer_is_a_safetensors_file_any_reader_loads() -> None:
    state = _state()
    buffer, _ = _fill(state)

    loaded = load(bytes(buffer))

    assert set(loaded) == {"conv.weight", "conv.bias", "fc.weight"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name])


def test_views_write_through_to_the_buffer() -> None:
    layout = model_layout(_state())
    buffer = layout.allocate()

    layout.views(buffer)["conv.bias"].fill_(2.5)

    assert torch.equal(load(bytes(buffer))["conv.bias"], torch.full((4,), 2.5))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_receiver_accepts_a_file_written_by_the_safetensors_library(chunk: int) -> None:
    state = {k: v for k, v in _state().items() if v.is_floating_point()}
    layout = model_layout(state)
    body = save(state)  # the library orders tensors its own way: offsets come from its header

    views = _receive(layout, body, chunk=chunk)

    for name, tensor in state.items():
        assert torch.equal(views[name], tensor)


def test_receiver_decompresses_zstd() -> None:
    state = _state()
    buffer, _ = _fill(state)
    layout = model_layout(state)
    body = zstandard.ZstdCompressor().compress(bytes(buffer))

    views = _receive(layout, body, zstd=True, chunk=11)

    assert torch.equal(views["fc.weight"], state["fc.weight"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s | {"extra": torch.zeros(1)}, "unexpected 'extra'"),
        (lambda s: {k: v for k, v in s.items() if k != "conv.bias"}, "missing 'conv.bias'"),
        (lambda s: s | {"conv.bias": torch.zeros(5)}, r"shape \[5\], expected \[4\]"),
        (lambda s: s | {"conv.bias": torch.zeros(4, dtype=torch.float64)}, "dtype 'F64'"),
    ],
)
def test_receiver_rejects_a_header_that_differs_from_the_layout(mutate, message) -> None:
    state = {k: v for k, v in _state().items() if v.is_floating_point()}
    layout = model_layout(state)

    with pytest.raises(WireError, match=message):
        _receive(layout, save(mutate(dict(state))))


def test_receiver_rejects_truncated_and_overlong_bodies() -> None:
    state = _state()
    buffer, _ = _fill(state)
    layout = model_layout(state)

    with pytest.raises(WireError, match="truncated"):
        _receive(layout, bytes(buffer)[:-5])
    with pytest.raises(WireError, match="truncated"):
        _receive(layout, bytes(buffer)[:20])
    with pytest.raises(WireError, match="longer than its header"):
        _receive(layout, bytes(buffer) + b"\0")


def test_receiver_refuses_a_huge_header_claim_before_reading_it() -> None:
    layout = model_layout(_state())

    with pytest.raises(WireError, match="header claims"):
        _receive(layout, struct.pack("<Q", 1 << 40) + b"{}")


def test_receiver_refuses_a_zstd_bomb_at_the_layout_size() -> None:
    state = _state()
    buffer, _ = _fill(state)
    layout = model_layout(state)
    bomb = zstandard.ZstdCompressor().compress(bytes(buffer) + b"\0" * 50_000_000)

    with pytest.raises(WireError, match="longer than its header"):
        _receive(layout, bomb, zstd=True, chunk=1 << 16)


def test_receiver_rejects_overlapping_offsets() -> None:
    layout = model_layout({"a": torch.zeros(2), "b": torch.zeros(2)})
    header = (
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    )
    body = struct.pack("<Q", len(header)) + header + b"\0" * 16

    with pytest.raises(WireError, match="contiguous"):
        _receive(layout, body)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("float32", 0.0), ("float16", 1e-3), ("int8", 0.02)]
)
@pytest.mark.parametrize("zstd_level", [None, 3])
def test_encoded_updates_decode_to_the_delta(dtype, tolerance, zstd_level) -> None:
    state = _state()
    model = model_layout(state)
    delta_buffer, delta = _fill({k: v * 0.01 for k, v in state.items() if k != "steps"})
    expected = {k: v.clone() for k, v in delta.items()}
    encoder = UpdateEncoder(model, dtype=dtype, zstd_level=zstd_level)

    body = bytes(encoder.encode(delta_buffer, delta))
    decoded = decode_update(
        _receive(encoder.layout, body, zstd=zstd_level is not None), max_norm=None
    )

    for name, tensor in expected.items():
        value = decoded.tensors[name].to(torch.float32) * decoded.scales.get(name, 1.0)
        assert torch.allclose(value, tensor, atol=tolerance * float(tensor.abs().max()) + 1e-8)


def test_int8_is_about_four_times_smaller_than_float32() -> None:
    model = model_layout({"w": torch.zeros(1000, 100)})

    ratio = update_layout(model, "float32").total_size / update_layout(model, "int8").total_size

    assert ratio > 3.9


def test_decode_rejects_non_finite_values_naming_the_tensor() -> None:
    layout = model_layout({"a": torch.zeros(3), "b": torch.zeros(3)})
    buffer = layout.allocate()
    views = layout.views(buffer)
    views["b"][1] = float("nan")

    with pytest.raises(WireError, match="'b' holds NaN"):
        decode_update(views, max_norm=None)
    views["b"][1] = float("inf")
    with pytest.raises(WireError, match="'b' holds NaN or infinite"):
        decode_update(views, max_norm=None)


def test_decode_enforces_the_norm_bound() -> None:
    layout = model_layout({"a": torch.zeros(4)})
    views = layout.views(layout.allocate())
    views["a"].fill_(1.0)  # norm 2

    assert decode_update(views, max_norm=2.5).norm == pytest.approx(2.0)
    with pytest.raises(WireError, match="norm 2 exceeds"):
        decode_update(views, max_norm=1.5)


def test_weights_decode_to_the_delta_against_the_global_model() -> None:
    layout = model_layout({"a": torch.zeros(4), "b": torch.zeros(2, 3)})
    global_views = layout.views(layout.allocate())
    global_views["a"].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    global_views["b"].fill_(-1.0)
    weights = layout.views(layout.allocate())
    weights["a"].copy_(torch.tensor([1.5, 2.0, 2.0, 4.0]))
    weights["b"].fill_(1.0)

    decoded = decode_update(weights, max_norm=None, minus=global_views)

    # The weights stay as they came; the delta is them minus `minus`, for the rule to fold.
    assert decoded.tensors["a"].tolist() == [1.5, 2.0, 2.0, 4.0]
    assert decoded.tensors["b"].eq(1.0).all()
    assert decoded.minus is global_views
    assert decoded.norm == pytest.approx(math.sqrt(0.25 + 1 + 6 * 4))
    assert global_views["b"].eq(-1.0).all()  # the global model is read, never written


def test_a_weights_norm_spans_many_chunks_and_names_a_non_finite_tensor() -> None:
    size = 2 * NORM_CHUNK + 12345  # three pieces, the last one short
    layout = model_layout({"big": torch.zeros(size), "small": torch.zeros(3)})
    global_views = layout.views(layout.allocate())
    generator = torch.Generator().manual_seed(0)
    global_views["big"].copy_(torch.randn(size, generator=generator))
    weights = layout.views(layout.allocate())
    weights["big"].copy_(torch.randn(size, generator=generator))

    decoded = decode_update(weights, max_norm=None, minus=global_views)

    expected = torch.cat(
        [weights["big"] - global_views["big"], weights["small"] - global_views["small"]]
    ).double()
    assert decoded.norm == pytest.approx(float(expected.norm()), rel=1e-5)
    weights["big"][NORM_CHUNK + 7] = float("nan")
    with pytest.raises(WireError, match="'big' holds NaN"):
        decode_update(weights, max_norm=None, minus=global_views)


def test_weights_are_float32_only() -> None:
    model = model_layout({"a": torch.zeros(4)})
    int8 = update_layout(model, "int8")
    views = int8.views(int8.allocate())

    with pytest.raises(WireError, match="weights are sent as float32"):
        decode_update(views, max_norm=None, minus=model.views(model.allocate()))


def test_a_mapped_buffer_is_the_same_file_and_costs_nothing_until_written() -> None:
    layout = model_layout({"w": torch.zeros(4096, 1024)})  # 16 MiB
    before = _resident_kib()
    mapped = layout.allocate_mapped()
    untouched = _resident_kib() - before

    assert untouched < 1024
    assert mapped[: len(layout.header)] == layout.header
    views = layout.views(mapped)
    views["w"].fill_(2.0)
    assert load(bytes(mapped))["w"].eq(2.0).all()


def _resident_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("scale", [3e38, 1e30, 2e17])
def test_decode_refuses_int8_whose_dequantized_values_overflow_float32(scale: float) -> None:
    # The fold multiplies q * scale * examples in float32: a norm taken in float64 passed
    # q=127, scale=3e38 and the global model became NaN.
    model = model_layout({"a": torch.zeros(3), "b": torch.zeros(2, 2)})
    layout = update_layout(model, "int8")
    views = layout.views(layout.allocate())
    views["b"].fill_(127)
    views["b:scale"].fill_(scale)

    with pytest.raises(WireError, match=r"'b'.*float32"):
        decode_update(views, max_norm=None)


def test_decode_keeps_int8_values_inside_float32_range() -> None:
    model = model_layout({"a": torch.zeros(4)})
    layout = update_layout(model, "int8")
    views = layout.views(layout.allocate())
    views["a"].fill_(127)
    views["a:scale"].fill_(1e15)  # values 1.27e17, squares 6.5e34 each: fine in float32

    assert decode_update(views, max_norm=None).norm == pytest.approx(2 * 127 * 1e15, rel=1e-6)


def test_receiver_refuses_a_header_integer_too_long_to_parse() -> None:
    layout = model_layout({"a": torch.zeros(2)})
    header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,' + b"9" * 5000 + b"]}}"

    with pytest.raises(WireError, match="not valid JSON"):  # was a plain ValueError: a 500
        parse_header(header, layout)


def test_the_layouts_own_header_parses_to_its_offsets_and_an_equal_one_is_checked_in_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = model_layout({"a": torch.zeros(3), "b": torch.zeros(2, 2)})
    with monkeypatch.context() as patched:  # the layout's own bytes are not decoded again
        patched.setattr(wire.json, "loads", lambda _: pytest.fail("decoded"))
        assert parse_header(layout.header_block, layout) == layout.offsets
    # The same tensors written by another encoder (other order, other spacing): checked.
    entries = json.loads(layout.header_block)
    respaced = json.dumps(dict(reversed(list(entries.items()))), indent=1).encode()
    assert respaced != layout.header_block
    assert parse_header(respaced, layout) == layout.offsets
    entries["a"]["shape"] = [4]
    with pytest.raises(WireError, match="shape"):
        parse_header(json.dumps(entries).encode(), layout)
