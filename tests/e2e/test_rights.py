"""Least privilege, measured: every right config/rbac.yaml gives the operator was used by the
operator during this suite (the API server's audit log says so), and none was refused.

It runs last (modules run in name order) and reads what the other tests made the operator do.
The audit log is the control plane's of `make e2e` (FLOTILLA_E2E_AUDIT_LOG); with another
cluster this test is skipped.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operator_process import USER, OperatorProcess
from tests.rbac import Right, config_roles, granted

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# Rights the suite cannot make the operator use, each with the reason. Keep it empty.
NOT_EXERCISED: dict[Right, str] = {}


def _requests(log: Path, since: datetime) -> list[dict[str, Any]]:
    """The operator's requests in the audit log since the suite started."""
    found = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("user", {}).get("username") != USER or "objectRef" not in entry:
            continue
        when = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if when >= since:
            found.append(entry)
    return found


def _right(entry: dict[str, Any], verb: str | None = None) -> Right:
    ref = entry["objectRef"]
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, verb or entry["verb"])


def _rights(entry: dict[str, Any]) -> set[Right]:
    """The rights a request used. A server-side apply (a patch) that creates its object
    needs `create` too, which the API server checks within the request: the log shows a
    patch that answered 201 Created."""
    used = {_right(entry)}
    if entry["verb"] == "patch" and entry.get("responseStatus", {}).get("code") == 201:
        used.add(_right(entry, "create"))
    return used


def _refused(entry: dict[str, Any]) -> set[Right]:
    """The rights RBAC refused to a request: its own verb, or an apply's `create`: the patch
    was allowed, and the check within it answered 403 with RBAC's empty reason (admission's
    403s, such as a namespace being deleted, say why)."""
    decision = entry.get("annotations", {}).get("authorization.k8s.io/decision")
    if decision == "forbid":
        return {_right(entry)}
    answer = entry.get("responseStatus", {})
    within = answer.get("code") == 403 and str(answer.get("message", "")).endswith("forbidden: ")
    if entry["verb"] == "patch" and within:
        return {_right(entry, "create")}
    return set()


def test_every_right_of_the_operator_is_used_and_none_is_refused(
    operator: OperatorProcess, cluster: datetime
) -> None:
    log = os.environ.get("FLOTILLA_E2E_AUDIT_LOG")
    if not log:
        pytest.skip("no FLOTILLA_E2E_AUDIT_LOG: only make e2e's control plane keeps one")
    requests = _requests(Path(log), cluster)

    refused = sorted(set().union(*(_refused(r) for r in requests)))
    used: set[Right] = set().union(*(_rights(r) for r in requests))
    rights = granted(config_roles()["flotilla-operator"])

    assert refused == [], f"RBAC refused the operator: {refused}"
    assert used <= rights, sorted(used - rights)
    unused = sorted(rights - used - set(NOT_EXERCISED))
    assert unused == [], f"granted but never used in the suite (drop them, or name why): {unused}"
