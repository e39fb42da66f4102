"""Buffered aggregation's parts, each alone: the books (buffer.py), the journal that keeps
the buffer across a restart (journal.py) and the fold's staleness weighting and resume."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from flotilla.api import BufferedSpec
from flotilla.fl.aggregator.buffer import BufferedUpdate, UpdateBuffer
from flotilla.fl.aggregator.errors import AlreadyFolded, RoundClosed, TooStale
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.journal import BufferJournal
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.codec import decode_update
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.wire import Layout, TensorSpec

LAYOUT = Layout.of([TensorSpec("w", (2, 3), "F32"), TensorSpec("b", (3,), "F32")])
IDENTITY = {"model": {"name": "mlp"}, "strategy": {"name": "fedavg"}}


def _filled(fill: float) -> bytearray:
    buffer = LAYOUT.allocate()
    for view in LAYOUT.views(buffer).values():
        view.fill_(fill)
    return buffer


def _report(site: str, examples: int = 10) -> ClientReport:
    return ClientReport(site, examples, 0.5, 0.9, 1.0, wire_bytes=100, norm=1.0)


def _books(size: int = 2, max_staleness: int | None = None) -> UpdateBuffer:
    return UpdateBuffer(BufferedSpec(size=size, max_staleness=max_staleness), upload_seconds=60)


# -- the books -------------------------------------------------------------------------------


def test_staleness_is_counted_from_the_version_an_update_was_trained_on() -> None:
    books = _books(max_staleness=2)
    assert books.staleness(5, version=4) == 0  # round 5 trains on version 4
    assert books.staleness(3, version=4) == 2
    with pytest.raises(TooStale, match="3 server updates behind version 4"):
        books.staleness(2, version=4)
    for never_served in (0, 6):
        with pytest.raises(RoundClosed, match="has not served"):
            books.staleness(never_served, version=4)


def test_without_max_staleness_any_served_version_is_taken() -> None:
    assert _books().staleness(1, version=1000) == 1000


def test_the_books_remember_each_sites_last_folded_upload() -> None:
    books = _books()
    books.add(BufferedUpdate(_report("a"), base=0, staleness=0), upload_id="upload-a-1")
    with pytest.raises(AlreadyFolded):
        books.check_new("a", "upload-a-1")
    books.check_new("a", "upload-a-2")  # a new upload
    books.check_new("b", "upload-a-1")  # another site's ids are its own
    books.check_new("a", None)  # an upload without an id cannot be told apart
    again = _books()
    again.restore_uploads(books.uploads_json())  # as a checkpoint brings them back
    with pytest.raises(AlreadyFolded):
        again.check_new("a", "upload-a-1")


def test_a_server_updates_record_lists_its_updates_with_their_staleness() -> None:
    books = _books(size=3)
    books.open(now=100.0)
    for site, base, staleness in (("a", 4, 0), ("c", 1, 3), ("a", 4, 0)):
        books.add(BufferedUpdate(_report(site), base=base, staleness=staleness), upload_id=None)
    assert books.full and books.count == 3
    record = books.record(version=5, present=["a", "b"], seconds=2, aggregation_seconds=0)
    row = record.to_json()
    assert (row["round"], row["sampled"], row["answered"]) == (5, ["a", "b", "c"], ["a", "c"])
    assert row["buffer"]["updates"][1] == {"site": "c", "baseVersion": 1, "staleness": 3}
    assert (row["buffer"]["stalenessMean"], row["buffer"]["stalenessMax"]) == (1.0, 3)


def test_the_books_survive_being_written_down() -> None:
    books = _books()
    books.add(BufferedUpdate(_report("a", 7), base=2, staleness=1), upload_id="upload-a-1")
    again = _books()
    again.restore(json.loads(json.dumps(books.to_json())), now=0.0)
    assert again.count == 1 and again.status()["staleness"] == [1]
    with pytest.raises(AlreadyFolded):
        again.check_new("a", "upload-a-1")


# -- the fold ----------------------------------------------------------------------------------


def test_the_fold_weighs_an_update_by_its_staleness_and_resumes_a_written_sum() -> None:
    fold = RoundFold(rule=WeightedMean(), layout=LAYOUT, privacy=None)

    async def play() -> dict[str, torch.Tensor]:
        fold.begin()
        async with fold.turn():
            await fold.add(decode_update(LAYOUT.views(_filled(1.0)), max_norm=None), examples=1)
        held = fold.held()
        assert held is not None
        written, weight, count = bytearray(held[0]), held[1], held[2]
        assert (weight, count) == (1.0, 1)
        fold.take()  # the aggregator died; a new one resumes the sum it wrote down
        fold.resume(written, total_weight=weight, count=count)
        async with fold.turn():
            update = decode_update(LAYOUT.views(_filled(2.0)), max_norm=None)
            await fold.add(update, examples=3, staleness=8)  # s(8) = 1/3
        taken = fold.take()
        assert taken is not None
        await fold.finish(*taken, answered=2, sampled=2)
        return LAYOUT.views(taken[1])

    for tensor in asyncio.run(play()).values():
        assert torch.allclose(tensor, torch.full_like(tensor, 0.75))  # (1 + 3 * 2 / 3) / 4


# -- the journal -------------------------------------------------------------------------------


def _save(journal: BufferJournal, *, version: int, fill: float, count: int) -> None:
    books = {"updates": [{}] * count, "openedAt": 0.0, "uploads": {}}
    journal.save(
        version=version,
        accumulator=_filled(fill),
        total_weight=10.0 * count,
        count=count,
        books=books,
        identity=IDENTITY,
    )


def test_the_journal_gives_back_the_last_fold_written_of_a_version(tmp_path: Path) -> None:
    journal = BufferJournal(tmp_path)
    _save(journal, version=3, fill=1.0, count=1)
    _save(journal, version=3, fill=2.0, count=2)
    written = journal.load(3, LAYOUT, identity=IDENTITY)
    assert written is not None and (written.count, written.total_weight) == (2, 20.0)
    assert all(torch.all(v == 2.0) for v in LAYOUT.views(written.accumulator).values())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "buffer-000003.json",
        "sum-000003-000002.safetensors",
    ]
    assert journal.load(4, LAYOUT, identity=IDENTITY) is None


def test_a_fold_that_died_before_its_books_leaves_the_previous_one(tmp_path: Path) -> None:
    journal = BufferJournal(tmp_path)
    _save(journal, version=1, fill=1.0, count=1)
    (tmp_path / "sum-000001-000002.safetensors").write_bytes(_filled(9.0))  # then it died
    written = journal.load(1, LAYOUT, identity=IDENTITY)
    assert written is not None and written.count == 1
    assert all(torch.all(v == 1.0) for v in LAYOUT.views(written.accumulator).values())


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda d: (d / "sum-000001-000001.safetensors").write_bytes(b"short"), "not a sum"),
        (lambda d: (d / "buffer-000001.json").write_text("{"), "Expecting"),
        (lambda d: (d / "sum-000001-000001.safetensors").unlink(), "No such file"),
    ],
)
def test_a_journal_that_cannot_be_used_is_logged_and_dropped(
    tmp_path: Path, spoil: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    journal = BufferJournal(tmp_path)
    _save(journal, version=1, fill=1.0, count=1)
    spoil(tmp_path)  # type: ignore[operator]
    assert journal.load(1, LAYOUT, identity=IDENTITY) is None
    assert why in caplog.text and "its updates are lost" in caplog.text
    assert not (tmp_path / "buffer-000001.json").exists()


def test_another_jobs_journal_is_not_resumed(tmp_path: Path) -> None:
    journal = BufferJournal(tmp_path)
    _save(journal, version=1, fill=1.0, count=1)
    assert journal.load(1, LAYOUT, identity={"model": {"name": "cnn-small"}}) is None


def test_buffers_go_once_their_checkpoint_is_durable_or_their_base_is_gone(
    tmp_path: Path,
) -> None:
    journal = BufferJournal(tmp_path)
    for version in (1, 2, 3, 4):
        _save(journal, version=version, fill=1.0, count=1)
    journal.forget(through=1)
    journal.forget(first=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "buffer-000002.json",
        "buffer-000003.json",
        "sum-000002-000001.safetensors",
        "sum-000003-000001.safetensors",
    ]
