"""The FederatedSchedule CRD is the generated one, embeds the FederatedJob's spec schema, takes
the example and refuses what it can tell is wrong; the model names every bad field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flotilla.api import SpecError
from flotilla.api.schedule import FederatedSchedule
from flotilla.k8s.crd import openapi_schema
from flotilla.k8s.crd_checks import schema_problems
from flotilla.k8s.schedule_crd import (
    FILE,
    schedule_crd_yaml,
    schedule_custom_resource_definition,
)
from tests.unit.k8s.test_crd import _as_json_schema

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "federatedschedule.yaml"


def _schema() -> dict[str, Any]:
    crd = schedule_custom_resource_definition()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def test_the_checked_in_crd_and_the_charts_copy_are_the_generated_one() -> None:
    generated = schedule_crd_yaml()
    assert (ROOT / "crds" / FILE).read_text() == generated, f"write it to crds/{FILE}"
    assert (ROOT / "charts" / "flotilla" / "crds" / FILE).read_text() == generated


def test_the_schema_holds_only_what_a_real_api_server_accepts() -> None:
    assert schema_problems(_schema()) == []
    crd = schedule_custom_resource_definition()
    assert crd["spec"]["names"]["shortNames"] == ["fsched"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_the_job_template_is_checked_as_a_job_is() -> None:
    template = _schema()["properties"]["spec"]["properties"]["jobTemplate"]
    assert template["properties"]["spec"] == openapi_schema()["properties"]["spec"]


def test_the_example_validates_against_the_crd_and_parses_as_the_model() -> None:
    jsonschema.validate(_example(), _as_json_schema(_schema()))
    schedule = FederatedSchedule.from_dict(_example())
    assert schedule.spec.schedule == "30 2 * * *"
    assert schedule.spec.on_data_change is not None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("onDataChange", "checkIntervalSeconds"), 10),
        (("concurrencyPolicy",), "Allow"),
        (("successfulJobsHistoryLimit",), -1),
        (("jobTemplate", "spec", "rounds"), 0),
        (("jobTemplate", "spec", "training", "bogus"), 1),
        (("jobTemplate", "metadata", "name"), "x"),
    ],
)
def test_the_crd_refuses_bad_values(path: tuple[str, ...], value: Any) -> None:
    document = _example()
    node = document["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, _as_json_schema(_schema()))
    with pytest.raises(SpecError):
        FederatedSchedule.from_dict(document)


def _problems(**changes: Any) -> str:
    document = _example()
    for key, value in changes.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    with pytest.raises(SpecError) as caught:
        FederatedSchedule.from_dict(document)
    return "\n".join(caught.value.problems)


def test_every_problem_names_its_field() -> None:
    assert "spec.schedule: bad minute (got '99 * * * *')" in _problems(schedule="99 * * * *")
    assert "spec.schedule: unknown macro '@fortnightly'" in _problems(schedule="@fortnightly")
    zone = _problems(timeZone="Europe/Atlantis")
    assert "spec.timeZone: not an IANA time zone" in zone
    both = _problems(schedule=None, onDataChange=None, timeZone=None)
    assert "spec: set schedule or onDataChange.enabled: nothing would ever create a job" in both
    assert "spec.timeZone: needs a schedule" in _problems(schedule=None)


def test_a_bad_template_is_named_down_to_the_jobs_field() -> None:
    document = _example()
    spec = document["spec"]["jobTemplate"]["spec"]
    spec["strategy"] = {"name": "krum", "byzantineClients": 1}
    spec["clients"]["minClients"] = 2
    with pytest.raises(SpecError) as caught:
        FederatedSchedule.from_dict(document)
    (problem,) = caught.value.problems
    assert problem.startswith("spec.jobTemplate.spec.clients.minClients: strategy 'krum'")


def test_a_name_leaves_room_for_its_jobs_suffix() -> None:
    document = copy.deepcopy(_example())
    document["metadata"]["name"] = "n" * 41
    with pytest.raises(SpecError, match=r"metadata\.name: at most 40 characters"):
        FederatedSchedule.from_dict(document)
    rules = _schema()["x-kubernetes-validations"]
    assert rules[0]["rule"] == "size(self.metadata.name) <= 40"


def test_the_status_the_operator_writes_is_in_the_schema() -> None:
    status = {
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Scheduling", "message": ""}],
        "active": [{"name": "n-1", "uid": "u"}],
        "lastScheduleTime": "2026-05-04T10:00:00Z",
        "lastSuccessfulTime": "2026-05-04T10:00:00Z",
        "lastTrigger": {"type": "dataChange", "time": "t", "job": "n-d1", "message": "m"},
        "lastDigests": {"site-a": "sha256:00"},
        "pendingDataChange": ["site-a"],
        "lastProbeTime": "2026-05-04T10:00:00Z",
        "probe": {"startedAt": "t", "sites": {"site-a": "edge-1"}, "failed": {}},
        "dataCheckRequest": "1",
        "lastModel": {"name": "digits", "version": "3", "alias": "candidate"},
    }
    jsonschema.validate({**_example(), "status": status}, _as_json_schema(_schema()))
