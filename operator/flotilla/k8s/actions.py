"""What one reconcile may do, as values: decide.py chooses them, apply.py carries them out
in order. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Apply:
    """Apply each object (server-side: created, or its fields set); the first refusal is
    the part's (aggregator or serving) for status."""

    part: Literal["aggregator", "serving"]
    objects: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Delete:
    kind: str
    name: str
    why: str  # for the event: "Deleted <kind> <name>: <why>"
    api_version: str


@dataclass(frozen=True)
class DeletePod:
    name: str
    site: str
    node: str
    why: str  # node gone, failed, no longer wanted
    replaced: int | None = None  # a failed pod's replacement: the site's count with this one


@dataclass(frozen=True)
class CreatePod:
    site: str
    node: str
    pod: dict[str, Any]


@dataclass(frozen=True)
class Note:
    """A Normal event."""

    reason: str
    message: str


Action = Apply | Delete | DeletePod | CreatePod | Note
