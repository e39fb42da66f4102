"""The operator's RBAC grants what it calls and no more; its pods need none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.rbac import config_roles, granted

ROOT = Path(__file__).resolve().parents[3]
# What a plan can hold besides pods, by (group, resource): applied server-side (an apply
# that creates its object needs `create` beside `patch`), deleted after the TTL.
APPLIED = {
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("apps", "deployments"),
    ("networking.k8s.io", "networkpolicies"),
    ("cert-manager.io", "certificates"),
}


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "config" / name).read_text()) if d]


def _operator_role() -> dict[str, Any]:
    return config_roles()["flotilla-operator"]


def test_the_operator_may_do_what_its_reconcile_needs() -> None:
    rights = granted(_operator_role())
    needed = {
        ("flotilla.dev", "federatedjobs", "watch"),
        ("flotilla.dev", "federatedjobs/status", "patch"),
        ("", "nodes", "watch"),
        ("", "pods", "watch"),
        ("", "pods", "create"),
        ("", "pods", "delete"),
        ("apps", "deployments", "watch"),
        ("", "secrets", "get"),
        ("", "events", "create"),
        ("flotilla.dev", "federatedschedules", "watch"),
        ("flotilla.dev", "federatedschedules/status", "patch"),
    }
    for group, plural in APPLIED:
        needed |= {(group, plural, verb) for verb in ("create", "patch", "delete")}
    # Its spec is immutable once bound: created once, never applied again.
    needed |= {("", "persistentvolumeclaims", "create"), ("", "persistentvolumeclaims", "delete")}
    assert needed <= rights, sorted(needed - rights)


def test_the_operator_may_not_touch_what_it_does_not_own() -> None:
    rights = granted(_operator_role())
    assert {verb for _, r, verb in rights if r == "nodes"} == {"list", "watch"}
    # Its own Secrets by name; a list or watch would read every Secret of every namespace.
    secrets = {verb for _, r, verb in rights if r == "secrets"}
    assert secrets == {"get", "create", "patch", "delete"}
    assert not any(
        r in ("roles", "rolebindings", "clusterroles", "serviceaccounts") for _, r, _ in rights
    )
    # Jobs are created and deleted only as a FederatedSchedule's (history limits, Replace).
    jobs = {verb for _, r, verb in rights if r == "federatedjobs"}
    assert jobs == {"list", "watch", "patch", "create", "delete"}
    assert {verb for _, r, verb in rights if r == "federatedschedules"} == {"list", "watch"}
    assert not any(verb in ("update", "deletecollection", "*") for _, _, verb in rights)


def test_viewer_and_editor_roles_aggregate_into_the_builtin_ones() -> None:
    roles = {
        d["metadata"]["name"]: d for d in _documents("rbac.yaml") if d["kind"] == "ClusterRole"
    }
    viewer = roles["flotilla-federatedjob-viewer"]
    editor = roles["flotilla-federatedjob-editor"]
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert {v for _, _, v in granted(viewer)} == {"get", "list", "watch"}


def test_the_operator_deployment_is_one_hardened_replica() -> None:
    deployment = _documents("operator.yaml")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
