"""Which nodes get a client, which site each one is, and which hardware profile it takes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flotilla.api import FederatedJob

SITE_LABEL = "flotilla.dev/site"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_RESOURCE = "nvidia.com/gpu"
ARCH_LABEL = "kubernetes.io/arch"

ProfileName = Literal["gpu", "arm", "cpu"]


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    unschedulable: bool = False

    @classmethod
    def from_api(cls, node: Mapping[str, Any]) -> NodeInfo:
        metadata, status = node.get("metadata", {}), node.get("status", {})
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            name=metadata["name"],
            labels=dict(metadata.get("labels") or {}),
            capacity=dict(status.get("capacity") or {}),
            ready=ready,
            unschedulable=bool(node.get("spec", {}).get("unschedulable")),
        )


@dataclass(frozen=True)
class Placement:
    """One client: the site it is, the node it runs on, the profile it takes."""

    site: str
    node: str
    profile: ProfileName


def hardware_profile(node: NodeInfo) -> ProfileName:
    gpus = node.capacity.get(GPU_RESOURCE, "0")
    if node.labels.get(GPU_PRESENT_LABEL) == "true" or (gpus.isdigit() and int(gpus) > 0):
        return "gpu"
    if node.labels.get(ARCH_LABEL) == "arm64":
        return "arm"
    return "cpu"


def site_name(node: NodeInfo) -> str:
    """The node's `flotilla.dev/site` label, else its name made a DNS label."""
    label = node.labels.get(SITE_LABEL)
    if label:
        return label
    name = re.sub(r"[^a-z0-9-]", "-", node.name.lower()).strip("-")
    return name[:63].rstrip("-") or "node"


def matches(job: FederatedJob, node: NodeInfo) -> bool:
    selector = job.spec.clients.node_selector
    return all(node.labels.get(key) == value for key, value in selector.items())


def placements(job: FederatedJob, nodes: list[NodeInfo]) -> list[Placement]:
    """A client for every matching, schedulable node, one per site, ordered by site.

    Not-ready nodes keep their place (their pod shows as not ready); two nodes claiming
    the same site keep the first by name, so a site never trains twice per round.
    """
    chosen: dict[str, Placement] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        if node.unschedulable or not matches(job, node):
            continue
        site = site_name(node)
        chosen.setdefault(
            site, Placement(site=site, node=node.name, profile=hardware_profile(node))
        )
    return [chosen[site] for site in sorted(chosen)]
