"""The CRD as a real API server takes it: Established, every example accepted, bad jobs refused
with the field and the rule, by the schema, CEL or strict field validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NewNamespace
from tests.e2e.kube import get, kubectl, load

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_crd_is_established_with_its_status_subresource_and_columns(crd: None) -> None:
    found = get("crd", "federatedjobs.flotilla.dev")

    conditions = {c["type"]: c["status"] for c in found["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    version = found["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:3] == [
        "Phase",
        "Round",
        "Clients",
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_api_server_accepts_every_example(
    crd: None, new_namespace: NewNamespace, example: Path
) -> None:
    kubectl("apply", "--dry-run=server", "-n", new_namespace(), "-f", str(example))


def _refusal(namespace: str, job: dict[str, Any]) -> str:
    done = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(job), check=False
    )
    assert done.returncode != 0, f"the API server took it: {done.stdout}"
    return done.stderr


def _digits(**spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml"))
    job["spec"] |= spec
    return job


MODEL_TWICE = {"name": "cnn-small", "entrypoint": "a.b:c", "input": {"height": 8, "width": 8}}
TWO_SOURCES = {"cvatExport": {"path": "/x"}, "cvat": {"taskIds": [1]}}
BAD_JOBS = {
    # CEL rules
    "cel-per-round": (
        {"clients": {"minClients": 3, "perRound": 2}},
        "perRound must be >= minClients",
    ),
    "cel-model": ({"model": MODEL_TWICE}, "set exactly one of name or entrypoint"),
    "cel-source": ({"data": TWO_SOURCES}, "set one of cvatExport or cvat"),
    # The schema: bounds, enums, patterns, and the CEL rule on resource names
    "rounds": (
        {"rounds": 0},
        "spec.rounds: Invalid value: 0: spec.rounds in body should be greater than or equal to 1",
    ),
    "enum": (
        {"strategy": {"name": "fedsomething"}},
        'spec.strategy.name: Unsupported value: "fedsomething"',
    ),
    "quantity": (
        {"runtime": {"client": {"resources": {"limits": {"memory": "lots"}}}}},
        "spec.runtime.client.resources.limits.memory: Invalid value",
    ),
    "resource-key": (
        {"runtime": {"client": {"resources": {"limits": {"bad key!": 1}}}}},
        'spec.runtime.client.resources.limits: Invalid value: "object": every key must match',
    ),
    "claim": (
        {"data": {"cvatExport": {"path": "d", "claimName": "Data_{site}"}}},
        "spec.data.cvatExport.claimName: Invalid value",
    ),
}


@pytest.mark.parametrize(("change", "message"), BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_the_api_server_refuses_a_bad_job_naming_the_field(
    crd: None, new_namespace: NewNamespace, change: dict[str, Any], message: str
) -> None:
    assert message in _refusal(new_namespace(), _digits(**change))


def test_strict_field_validation_refuses_an_unknown_field_before_any_rule(
    crd: None, new_namespace: NewNamespace
) -> None:
    job = _digits()
    job["spec"]["training"]["learnRate"] = 0.1

    refusal = _refusal(new_namespace(), job)

    assert 'unknown field "spec.training.learnRate"' in refusal


def test_a_quantity_may_be_an_integer(crd: None, new_namespace: NewNamespace) -> None:
    job = _digits(runtime={"client": {"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": 2}}}})

    kubectl("apply", "--dry-run=server", "-n", new_namespace(), "-f", "-", stdin=json.dumps(job))
