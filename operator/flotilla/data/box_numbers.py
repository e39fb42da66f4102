"""Box coordinates from an export or a live CVAT, checked: finite numbers that make a box.

COCO gives ``bbox`` as JSON numbers ``[x, y, width, height]``, CVAT XML four corner
attributes as text, a live CVAT server ``points`` [xtl, ytl, xbr, ybr]. Either way each
coordinate must be a real number (not a string, not a bool), finite, and the box must lie
in its image: a NaN reaches the detector's targets and crashes training, and a negative or
huge box clipped to the image becomes a silent zero-size box. A box is checked against its
image's size when the image is loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flotilla.data.errors import DataSourceError, shown
from flotilla.data.frames import RawBox

# Annotation tools let a drag end a little past the edge and CVAT rounds to two decimals;
# such boxes are clipped to the image. A box further out is a wrong box, and refused.
EDGE_TOLERANCE_PIXELS = 1.0

_CORNERS = ("xtl", "ytl", "xbr", "ybr")
# A decimal number as CVAT writes one; float() would also take "nan", "inf", "1_0" and
# digits of other scripts.
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)


def coco_box(value: Any, *, label: str, where: str) -> RawBox:
    """A COCO ``bbox`` [x, y, width, height] as corners."""
    if not (isinstance(value, list) and len(value) == 4 and all(map(_is_real, value))):
        raise DataSourceError(f"{where}: bbox {shown(value)} is not four numbers [x, y, w, h]")
    x, y, width, height = (_as_float(v) for v in value)
    if not all(map(math.isfinite, (x, y, width, height))):
        raise DataSourceError(f"{where}: bbox {shown(value)} holds a number that is not finite")
    if min(x, y) < -EDGE_TOLERANCE_PIXELS or min(width, height) < 0:
        raise DataSourceError(
            f"{where}: bbox {shown(value)} has a negative position or size; "
            "x and y are from the image's top left, width and height at least 0"
        )
    return RawBox(label, x, y, x + width, y + height)


def xml_box(attributes: Mapping[str, str], *, label: str, where: str) -> RawBox:
    """A CVAT XML ``<box>`` from its xtl, ytl, xbr, ybr attributes."""
    corners = {name: _decimal(attributes.get(name), name=name, where=where) for name in _CORNERS}
    return _corner_box(corners, label=label, where=where)


def points_box(points: Any, *, label: str, where: str) -> RawBox:
    """A live CVAT rectangle from its ``points`` [xtl, ytl, xbr, ybr]. The server's JSON is
    read by a decoder that takes NaN and Infinity, so they are checked as in an export."""
    if not (isinstance(points, list | tuple) and len(points) == 4 and all(map(_is_real, points))):
        raise DataSourceError(f"{where}: points {shown(points)} are not four numbers")
    corners = dict(zip(_CORNERS, map(_as_float, points), strict=True))
    if not all(map(math.isfinite, corners.values())):
        raise DataSourceError(f"{where}: points {shown(points)} hold a number that is not finite")
    return _corner_box(corners, label=label, where=where)


def _corner_box(corners: Mapping[str, float], *, label: str, where: str) -> RawBox:
    """The box of four finite corners, when they lie in order and not left of or above it."""
    for name, number in corners.items():
        if number < -EDGE_TOLERANCE_PIXELS:
            raise DataSourceError(f"{where}: {name}={number} is left of or above the image")
    for near, far in (("xtl", "xbr"), ("ytl", "ybr")):
        if corners[far] < corners[near]:
            raise DataSourceError(
                f"{where}: {far}={corners[far]} lies before {near}={corners[near]}"
            )
    return RawBox(label, *(corners[name] for name in _CORNERS))


def check_inside(boxes: Iterable[RawBox], *, width: int, height: int, where: str) -> None:
    """Refuse a box that reaches past the image's right or bottom edge (by more than rounding)."""
    for box in boxes:
        if box.xbr - width > EDGE_TOLERANCE_PIXELS or box.ybr - height > EDGE_TOLERANCE_PIXELS:
            corners = (box.xtl, box.ytl, box.xbr, box.ybr)
            raise DataSourceError(f"{where}: box {corners} reaches past the {width}x{height} image")


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int of hundreds of digits
        return math.inf


def _decimal(text: str | None, *, name: str, where: str) -> float:
    if text is None or not _DECIMAL.fullmatch(text.strip()):
        raise DataSourceError(f"{where}: {name}={shown(text)} is missing or not a number")
    number = float(text)
    if not math.isfinite(number):  # "1e999"
        raise DataSourceError(f"{where}: {name}={shown(text)} is not a finite number")
    return number
