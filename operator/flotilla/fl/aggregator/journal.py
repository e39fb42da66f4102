"""The buffer of buffered aggregation, on disk: no acknowledged update is lost to a restart.

A synchronous round that dies with its aggregator is played again; a buffered update
cannot be: its client moved on the moment it was answered. So every fold is written down
before its client is answered: the weighted sum as it stands (the accumulator, one model,
written as is) and the buffer's books (buffer.py), one pair per server update in the
making, `sum-VVVVVV-KKKKKK.safetensors` (version V after K folds) and `buffer-VVVVVV.json`.
The JSON is replaced by rename after the sum is fsynced, so a crash leaves the previous
fold's pair or this one, never a mix. A buffer's pair stays until the checkpoint of the
server update it made is durable: between the step and that checkpoint, a restart replays
the step from it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.fl.aggregator.checkpoint import fsync_path, read_into_bytearray, write_synced
from flotilla.fl.wire import Layout

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_BOOKS = re.compile(r"buffer-(\d{6})\.json")
_SUM = re.compile(r"sum-(\d{6})-(\d{6})\.safetensors")


@dataclass(frozen=True)
class Written:
    """A buffer read back: the version it makes, its sum and its books."""

    version: int
    accumulator: bytearray
    total_weight: float
    count: int
    books: dict[str, Any]


class BufferJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(
        self,
        *,
        version: int,
        accumulator: bytearray,
        total_weight: float,
        count: int,
        books: Mapping[str, Any],
        identity: Mapping[str, Any],
    ) -> None:
        """Write the buffer of server update `version` after `count` folds. Blocking: call
        from a worker thread, while no fold changes `accumulator`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"sum-{version:06d}-{count:06d}.safetensors"
        write_synced(self.directory / name, accumulator)
        document = {
            "format": FORMAT_VERSION,
            "version": version,
            "count": count,
            "totalWeight": total_weight,
            "sum": name,
            "identity": dict(identity),
            "books": dict(books),
        }
        staging = self.directory / f".buffer-{version:06d}.json.tmp"
        write_synced(staging, json.dumps(document).encode())
        staging.replace(self.directory / f"buffer-{version:06d}.json")
        fsync_path(self.directory)
        for path in self._sums(version):
            if path.name != name:
                path.unlink(missing_ok=True)

    def load(self, version: int, layout: Layout, *, identity: Mapping[str, Any]) -> Written | None:
        """The buffer of server update `version` written here, or None (none, or one that
        cannot be used: it is logged with why, and deleted)."""
        path = self.directory / f"buffer-{version:06d}.json"
        if not path.exists():
            return None
        try:
            return self._read(path, version, layout, identity=identity)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error(
                "the buffer of server update %d (%s) cannot be used, its updates are lost: %s",
                version,
                path,
                error,
            )
            self.forget(first=version)
            return None

    def forget(self, *, through: int | None = None, first: int | None = None) -> None:
        """Delete the buffers of versions <= `through` (their checkpoint is durable) or >=
        `first` (they build on a model this aggregator does not serve)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            match = _BOOKS.fullmatch(path.name) or _SUM.fullmatch(path.name)
            if match is None:
                continue
            version = int(match.group(1))
            if (through is not None and version <= through) or (
                first is not None and version >= first
            ):
                path.unlink(missing_ok=True)

    def _sums(self, version: int) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [
            path
            for path in self.directory.iterdir()
            if (match := _SUM.fullmatch(path.name)) and int(match.group(1)) == version
        ]

    def _read(
        self, path: Path, version: int, layout: Layout, *, identity: Mapping[str, Any]
    ) -> Written:
        document = json.loads(path.read_bytes())
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            raise ValueError(f"not a buffer of format {FORMAT_VERSION}")
        if document["version"] != version:
            raise ValueError(f"it says version {document['version']!r}")
        if document["identity"] != dict(identity):
            raise ValueError("it belongs to a job with another model, labels or strategy")
        name = str(document["sum"])
        if _SUM.fullmatch(name) is None:
            raise ValueError(f"its sum {name[:80]!r} is not a sum file of this directory")
        accumulator = read_into_bytearray(self.directory / name)
        if len(accumulator) != layout.total_size or not accumulator.startswith(layout.header):
            raise ValueError(f"{name} is not a sum of this job's model")
        count, total_weight = int(document["count"]), float(document["totalWeight"])
        books = document["books"]
        if not isinstance(books, dict) or len(books.get("updates", [])) != count:
            raise ValueError(f"its books do not list its {count} updates")
        return Written(
            version=version,
            accumulator=accumulator,
            total_weight=total_weight,
            count=count,
            books=books,
        )
