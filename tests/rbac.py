"""RBAC roles as sets of (API group, resource, verb): config/rbac.yaml's, the chart's, the
cluster's, and what the API server's audit log shows the operator used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
Right = tuple[str, str, str]  # API group, resource[/subresource], verb


def granted(*roles: dict[str, Any]) -> set[Right]:
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def config_roles() -> dict[str, dict[str, Any]]:
    """config/rbac.yaml's ClusterRoles by name; the operator's is `flotilla-operator`."""
    documents = yaml.safe_load_all((ROOT / "config" / "rbac.yaml").read_text())
    return {d["metadata"]["name"]: d for d in documents if d and d["kind"] == "ClusterRole"}
