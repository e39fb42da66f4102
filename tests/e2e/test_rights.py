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


def _right(entry: dict[str, Any]) -> Right:
    ref = entry["objectRef"]
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, entry["verb"])


def test_every_right_of_the_operator_is_used_and_none_is_refused(
    operator: OperatorProcess, cluster: datetime
) -> None:
    log = os.environ.get("FLOTILLA_E2E_AUDIT_LOG")
    if not log:
        pytest.skip("no FLOTILLA_E2E_AUDIT_LOG: only make e2e's control plane keeps one")
    requests = _requests(Path(log), cluster)

    refused = sorted(
        {
            _right(r)
            for r in requests
            if r.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"
        }
    )
    used = {_right(r) for r in requests}
    rights = granted(config_roles()["flotilla-operator"])

    assert refused == [], f"RBAC refused the operator: {refused}"
    assert used <= rights, sorted(used - rights)
    unused = sorted(rights - used - set(NOT_EXERCISED))
    assert unused == [], f"granted but never used in the suite (drop them, or name why): {unused}"
