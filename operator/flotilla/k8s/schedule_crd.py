"""The FederatedSchedule CustomResourceDefinition, generated from its pydantic model.

Built as crd.py builds the FederatedJob's, and `jobTemplate.spec` is the FederatedJob CRD's
own `spec` node, CEL rules included: `kubectl apply` refuses a bad template as it would
refuse the job. What CEL cannot check (a cron expression, a time zone, the FederatedJob
model's cross-field rules) the operator reports in the schedule's `Ready` condition.
"""

from __future__ import annotations

from typing import Any

from flotilla.api import API_GROUP
from flotilla.api.schedule import MAX_NAME, SCHEDULE_KIND, FederatedSchedule
from flotilla.k8s.crd import crd_document, manifest_yaml, openapi_schema, structural_schema

PLURAL = "federatedschedules"
NAME = f"{PLURAL}.{API_GROUP}"
FILE = f"{NAME}.yaml"

_SPEC_RULES = [
    {
        "rule": "has(self.schedule) || (has(self.onDataChange) && "
        "(!has(self.onDataChange.enabled) || self.onDataChange.enabled))",
        "message": "set schedule or onDataChange.enabled: nothing would ever create a job",
    },
    {"rule": "!has(self.timeZone) || has(self.schedule)", "message": "timeZone needs a schedule"},
]
_ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_NAME}",
        "message": f"metadata.name: at most {MAX_NAME} characters: each job adds a suffix to it",
    }
]

PRINTER_COLUMNS = [
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
    {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
    {"name": "Active", "type": "string", "jsonPath": ".status.active[*].name"},
    {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    {"name": "Last Trigger", "type": "string", "jsonPath": ".status.lastTrigger.type"},
    {"name": "Policy", "type": "string", "jsonPath": ".spec.concurrencyPolicy", "priority": 1},
    {"name": "Time Zone", "type": "string", "jsonPath": ".spec.timeZone", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schedule_schema() -> dict[str, Any]:
    """The structural schema of a whole FederatedSchedule object."""
    root = structural_schema(FederatedSchedule)
    spec = root["properties"]["spec"]
    spec["x-kubernetes-validations"] = _SPEC_RULES
    template = spec["properties"]["jobTemplate"]
    template["properties"]["spec"] = openapi_schema()["properties"]["spec"]
    root["x-kubernetes-validations"] = _ROOT_RULES
    return root


def schedule_custom_resource_definition() -> dict[str, Any]:
    """The CRD; raises ValueError naming each node a real API server would refuse."""
    return crd_document(
        openapi_schedule_schema(),
        kind=SCHEDULE_KIND,
        plural=PLURAL,
        short_names=["fsched"],
        printer_columns=PRINTER_COLUMNS,
    )


def schedule_crd_yaml() -> str:
    """What `flotilla crd` writes to crds/federatedschedules.flotilla.dev.yaml."""
    return manifest_yaml(schedule_custom_resource_definition())
