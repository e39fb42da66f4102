"""The aggregator's tokens: parsed strictly, looked up in constant time, re-read when the
file changes (as the kubelet swaps a mounted Secret), the last good ones kept on a bad file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from flotilla.fl.aggregator.tokens import TokenBook, TokenFileWatcher, load_tokens, parse_tokens

A, B, C = "token-a-0123456789ab", "token-b-0123456789ab", "token-c-0123456789ab"


def _write(path: Path, tokens: dict[str, str]) -> None:
    """As the kubelet does: a new file swapped in, never one rewritten in place."""
    temporary = path.with_suffix(".new")
    temporary.write_text(json.dumps(tokens))
    os.replace(temporary, path)


def test_tokens_are_a_map_of_site_to_a_long_token_and_may_be_empty() -> None:
    assert parse_tokens(json.dumps({"a": A}), source="f") == {"a": A}
    assert parse_tokens("{}", source="f") == {}  # no node matches yet: the aggregator waits
    for bad in ('["a"]', '{"a": "short"}', json.dumps({"": A}), '{"a": 1}', "{"):
        with pytest.raises(ValueError, match="tokens file f"):
            parse_tokens(bad, source="f")


def test_a_token_names_its_site_and_an_unknown_one_none() -> None:
    book = TokenBook({"a": A, "b": B})

    assert (book.site_of(A), book.site_of(B), book.site_of(C), book.site_of("")) == (
        "a",
        "b",
        None,
        None,
    )


def test_the_watcher_applies_a_join_a_leave_and_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"a": A, "b": B})
    book = TokenBook(load_tokens(path))
    told: list[list[str]] = []
    watcher = TokenFileWatcher(path, book, on_change=lambda sites: told.append(list(sites)))

    assert watcher.check() is False  # unchanged: nothing read
    _write(path, {"a": A, "c": C})  # c joins, b leaves
    assert watcher.check() is True
    _write(path, {"a": B, "c": C})  # a's token rotated
    assert watcher.check() is True

    assert told == [["a", "c"], ["a", "c"]]
    assert (book.site_of(A), book.site_of(B), book.site_of(C)) == (None, "a", "c")


def test_a_bad_or_missing_file_keeps_the_tokens_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"a": A})
    book = TokenBook(load_tokens(path))
    watcher = TokenFileWatcher(path, book, on_change=lambda sites: None)

    path.write_text('{"a": "short"}')
    with caplog.at_level(logging.ERROR):
        assert watcher.check() is False
    path.unlink()
    assert watcher.check() is False

    assert book.site_of(A) == "a"
    assert "the tokens in force stay as they were" in caplog.text
    assert A not in caplog.text  # a token is never logged
