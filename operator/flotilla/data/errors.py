"""The one error a data source raises: what failed, for which site, source and task."""

from __future__ import annotations

import reprlib
from typing import Any


class DataSourceError(Exception):
    """A site's data cannot be read; the message names the site, the path or task, the problem."""


# Values in messages come from a site's files and travel to the aggregator: long enough to
# recognise, never a whole hostile document.
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 200
_SHOWN.maxlist = _SHOWN.maxdict = 8


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    return _SHOWN.repr(value)
