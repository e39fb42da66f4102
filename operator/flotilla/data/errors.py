"""The one error a data source raises: what failed, for which site, source and task."""

from __future__ import annotations


class DataSourceError(Exception):
    """A site's data cannot be read; the message names the site, the path or task, the problem."""
