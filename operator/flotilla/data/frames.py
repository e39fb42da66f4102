"""Annotated frames as every reader yields them, before labels are mapped to indices.

Readers (CVAT for images 1.1, COCO 1.0, a live CVAT task) only parse; mapping names
to the job's label indices and loading pixels happen once, in ``flotilla.data.site``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class RawBox:
    """An axis-aligned rectangle in the frame's own pixel coordinates."""

    label: str
    xtl: float
    ytl: float
    xbr: float
    ybr: float


@dataclass(frozen=True)
class RawFrame:
    """One frame: its name, CVAT subset, tag and rectangle labels, and how to load its pixels."""

    name: str
    subset: str | None
    tags: tuple[str, ...]
    boxes: tuple[RawBox, ...]
    load: Callable[[], Image.Image] = field(compare=False, repr=False)

    @property
    def annotated(self) -> bool:
        return bool(self.tags or self.boxes)
