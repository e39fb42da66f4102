"""Lost nodes are remembered until replaced or out of the spec's reach."""

from __future__ import annotations

from typing import Any

from flotilla.k8s.lost_nodes import MAX_LOST_NODES, track_lost_nodes

EDGE = {"flotilla.dev/edge": "true"}
T0, T1 = "2026-12-02T10:00:00Z", "2026-12-02T10:00:10Z"


def _track(previous: list[dict[str, Any]], **given: Any) -> list[dict[str, Any]]:
    arguments: dict[str, Any] = {
        "gone": {},
        "placed_sites": [],
        "node_selector": EDGE,
        "reachable": lambda site: True,
        "now": T1,
    } | given
    return track_lost_nodes(previous, **arguments)


def test_a_node_gone_is_recorded_once_with_when_and_under_which_selector() -> None:
    first = _track([], gone={"site-c": "edge-3"}, now=T0)
    again = _track(first, gone={"site-c": "edge-3"})
    kept = _track(again)  # its pod is collected: nothing says it is gone any more

    expected = [{"node": "edge-3", "site": "site-c", "since": T0, "nodeSelector": EDGE}]
    assert first == again == kept == expected


def test_a_site_placed_again_is_no_longer_lost() -> None:
    lost = _track([], gone={"site-c": "edge-3"})

    assert _track(lost, placed_sites=["site-c"]) == []


def test_a_site_the_spec_no_longer_reaches_is_forgotten() -> None:
    lost = _track([], gone={"site-c": "edge-3"})

    assert _track(lost, node_selector={"flotilla.dev/edge": "gpu"}) == []
    assert _track(lost, reachable=lambda site: site != "site-c") == []
    assert _track([], gone={"site-c": "edge-3"}, reachable=lambda site: False) == []


def test_the_list_is_bounded_keeping_the_newest() -> None:
    many = {f"site-{i:03}": f"edge-{i}" for i in range(MAX_LOST_NODES + 5)}
    old = _track([], gone={"site-000": "edge-0"}, now=T0)

    lost = _track(old, gone=many)

    assert len(lost) == MAX_LOST_NODES
    assert "site-000" not in {entry["site"] for entry in lost}
