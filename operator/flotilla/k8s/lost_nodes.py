"""Nodes a job lost: remembered in its status until a node takes the site again or the spec
no longer reaches the site. Pure.

A deleted node leaves nothing in the API to rebuild this from (its pod goes with it), so,
like a Job's failed-pod count, it is kept in status. A node that is unlabelled or cordoned
is not lost: someone chose to take it out, and its site simply stops being desired.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

MAX_LOST_NODES = 50  # status lives in etcd: the oldest are forgotten first


def track_lost_nodes(
    previous: Sequence[Mapping[str, Any]],
    *,
    gone: Mapping[str, str],
    placed_sites: Collection[str],
    node_selector: Mapping[str, str],
    reachable: Callable[[str], bool],
    now: str,
) -> list[dict[str, Any]]:
    """`previous` entries and the sites `gone` now (site -> its node, deleted from the
    cluster), less those a node took again (`placed_sites`), those the spec no longer
    reaches (`reachable` says no, or `node_selector` is not the one they were lost under)."""
    selector = dict(node_selector)
    kept: dict[str, dict[str, Any]] = {}
    for entry in previous:
        site = str(entry.get("site", ""))
        if site in placed_sites or not reachable(site):
            continue
        if dict(entry.get("nodeSelector") or {}) != selector:
            continue
        kept[site] = dict(entry)
    for site, node in gone.items():
        if site in placed_sites or site in kept or not reachable(site):
            continue
        kept[site] = {"node": node, "site": site, "since": now, "nodeSelector": selector}
    ordered = sorted(kept.values(), key=lambda entry: (entry["since"], entry["site"]))
    return ordered[-MAX_LOST_NODES:]
