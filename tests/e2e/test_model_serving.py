"""After success, the final model served on a real API server: the serving Deployment and
Service, owned by the job, admitted and rolled out; a later job moving the alias rolls it;
serving turned off makes none.

This control plane has no pod network, so no aggregator can report success here: each job's
success is written into its status as the operator keeps it (phase, the Succeeded condition,
the registered model) while the operator is stopped, and the operator, started again, reads
it back as it does after any restart. What the aggregator reports and how status follows is
tested against real processes in tests/integration and tests/operator.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NewNamespace
from tests.e2e.kube import (
    apply,
    condition,
    eventually,
    get,
    items,
    kubectl,
    load,
    merge_patch,
    now,
    without_state,
)
from tests.e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "flotilla.dev/role=model"


def _job(name: str, **spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml"))
    job["metadata"]["name"] = name
    without_state(job)
    job["spec"] |= spec
    return job


def _succeeded(name: str, namespace: str, version: str, model: str = "digits-cnn") -> None:
    """The status the operator writes once the aggregator said done and registered `version`."""
    status = {
        "phase": "Succeeded",
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "RoundsCompleted",
                "message": "10 rounds completed",
                "lastTransitionTime": now(),
            }
        ],
        "model": {"name": model, "version": version, "alias": "candidate"},
        "completionTime": now(),
    }
    merge_patch("fj", name, {"status": status}, namespace=namespace, status=True)


def _served_version(namespace: str, name: str) -> str | None:
    deployment = get("deployment", name, namespace=namespace) or {}
    template = (deployment.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(
        "flotilla.dev/model-version"
    )


def _serving(namespace: str, job: str) -> dict[str, Any]:
    return condition(get("fj", job, namespace=namespace), "Serving")


def test_a_succeeded_job_serves_its_model_and_a_later_job_rolls_it(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    operator.stop()
    try:
        apply(_job("digits"), namespace=namespace)
        _succeeded("digits", namespace, "1")
    finally:
        operator.start()

    eventually(lambda: _served_version(namespace, "digits-model") == "1", what="version 1")
    job = get("fj", "digits", namespace=namespace)
    for kind in ("deployment", "service"):
        owners = get(kind, "digits-model", namespace=namespace)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"]) for o in owners] == [("FederatedJob", job["metadata"]["uid"])]
    # Deployment -> ReplicaSet -> Pod (the stand-in kubelet starts it): available.
    eventually(lambda: _serving(namespace, "digits").get("reason") == "ModelServed", what="served")
    endpoint = f"http://digits-model.{namespace}.svc:8080/invocations"
    assert endpoint in _serving(namespace, "digits")["message"]
    wide = kubectl("get", "fj", "digits", "-n", namespace, "-o", "wide").stdout
    assert endpoint in wide and "ENDPOINT" in wide
    assert not items("pods", namespace=namespace, selector="flotilla.dev/role=client")

    # A later job registers version 2 of the same model under the same alias; another, of
    # another model, succeeds with serving off.
    operator.stop()
    try:
        apply(_job("digits-2"), namespace=namespace)
        _succeeded("digits-2", namespace, "2")
        unserved = _job("unserved", serving={"enabled": False})
        unserved["spec"]["tracking"]["registeredModel"] = "other"
        apply(unserved, namespace=namespace)
        _succeeded("unserved", namespace, "1", model="other")
    finally:
        operator.start()

    eventually(lambda: _served_version(namespace, "digits-model") == "2", what="rolled to 2")
    eventually(lambda: _served_version(namespace, "digits-2-model") == "2", what="2 served")
    replica_sets = items("replicasets", namespace=namespace, selector="flotilla.dev/job=digits")
    assert len([rs for rs in replica_sets if "model" in rs["metadata"]["name"]]) == 2
    eventually(lambda: _serving(namespace, "digits").get("reason") == "ModelServed", what="rolled")
    operator.wait_resyncs(3)
    assert get("deployment", "unserved-model", namespace=namespace) is None
    assert _serving(namespace, "unserved") == {}

    # Deleting the job collects what serves its model (owner references; no finalizer).
    kubectl("delete", "fj", "digits", "-n", namespace, "--wait=true", timeout=60)
    eventually(
        lambda: (
            get("deployment", "digits-model", namespace=namespace) is None
            and get("service", "digits-model", namespace=namespace) is None
        ),
        what="the serving objects collected",
    )
    assert items("deployments", namespace=namespace, selector=MODEL)  # digits-2's stays
