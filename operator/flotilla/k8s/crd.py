"""The FederatedJob CustomResourceDefinition, generated from the pydantic models.

The API server wants a *structural* OpenAPI v3 schema: no $ref, no anyOf for optional
fields (``nullable`` instead), every node typed, OpenAPI 3.0's boolean
``exclusiveMinimum``, maps as ``additionalProperties`` (``patternProperties`` is forbidden:
a key pattern becomes a CEL rule). Defaults are left to the models, so the cluster and
`flotilla run` agree on them. What JSON Schema cannot say is added as
``x-kubernetes-validations`` (CEL) and list types, so `kubectl apply` refuses what
the model refuses wherever the API server can tell. `crd_checks` refuses, before anything
is written, every keyword the apiextensions API server would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from flotilla.api import API_GROUP, FederatedJob
from flotilla.k8s.crd_checks import schema_problems

PLURAL = "federatedjobs"
NAME = f"{PLURAL}.{API_GROUP}"
VERSION = "v1alpha1"
_DROPPED = {"title", "default", "propertyNames", "$defs"}

_ONE_SOURCE = [
    {"rule": "has(self.cvatExport) != has(self.cvat)", "message": "set one of cvatExport or cvat"}
]
_PROJECT_OR_TASKS = [
    {
        "rule": "has(self.projectId) != (has(self.taskIds) && size(self.taskIds) > 0)",
        "message": "set one of projectId or taskIds",
    }
]
# CEL rules the schema cannot express, by the path of the object they apply to. Lists
# they run under have maxItems, so the API server's cost estimate stays bounded.
_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec", "data"): _ONE_SOURCE,
    ("spec", "data", "cvat"): _PROJECT_OR_TASKS,
    ("spec", "sites", "[]", "data"): _ONE_SOURCE,
    ("spec", "sites", "[]", "data", "cvat"): _PROJECT_OR_TASKS,
    ("spec", "model"): [
        {
            "rule": "has(self.name) != has(self.entrypoint)",
            "message": "set exactly one of name or entrypoint",
        }
    ],
    ("spec", "clients"): [
        {
            "rule": "!has(self.perRound) || self.perRound >= "
            "(has(self.minClients) ? self.minClients : 1)",
            "message": "perRound must be >= minClients",
        }
    ],
}
# Lists whose items the API server must keep unique.
_SET_LISTS = {("spec", "labels")}
_MAP_LISTS = {("spec", "sites"): ["name"]}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Round", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Clients", "type": "string", "jsonPath": ".status.clientsReady"},
    {"name": "Accuracy", "type": "number", "jsonPath": ".status.metrics.accuracy"},
    {"name": "mAP50", "type": "number", "jsonPath": ".status.metrics.map50", "priority": 1},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.servingEndpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schema() -> dict[str, Any]:
    """The structural schema of a whole FederatedJob object."""
    return structural_schema(FederatedJob)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a whole object of `model` (this CRD's, or another's:
    schedule_crd.py). The CEL rules and list types above are keyed by a FederatedJob's paths."""
    source = model.model_json_schema(by_alias=True)
    definitions = source.get("$defs", {})
    root = _structural(source, definitions, ())
    properties = root["properties"]
    # The API server owns these; a structural schema may only say they are there.
    properties["metadata"] = {"type": "object"}
    properties["apiVersion"] = {"type": "string"}
    properties["kind"] = {"type": "string"}
    return root


def _structural(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    if "$ref" in node:
        return _structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs, path)
    options = node.get("anyOf")
    if options is not None:
        kept = [o for o in options if o.get("type") != "null"]
        if len(kept) != 1:
            raise ValueError(f"{'.'.join(path)}: a union the CRD schema cannot express")
        optional = _structural(kept[0], defs, path)
        if len(kept) < len(options):
            optional["nullable"] = True
        if "description" in node:
            optional.setdefault("description", node["description"])
        return optional
    result: dict[str, Any] = {}
    rules: list[dict[str, str]] = []
    for key, value in node.items():
        if key in _DROPPED or (key == "additionalProperties" and value is False):
            continue
        if key == "additionalProperties" and value is True:
            result["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "patternProperties":
            pattern, values = _one_pattern(value, path)
            result["additionalProperties"] = _structural(values, defs, (*path, "[]"))
            rules.append(_keys_match(pattern))
        elif key == "properties":
            result[key] = {k: _structural(v, defs, (*path, k)) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            result[key] = _structural(value, defs, (*path, "[]"))
        elif key == "exclusiveMinimum":
            result["minimum"], result["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            result["maximum"], result["exclusiveMaximum"] = value, True
        elif key == "const":
            result["enum"] = [value]
        else:
            result[key] = value
    if "properties" in result or "additionalProperties" in result:
        result.setdefault("type", "object")
    rules += _RULES.get(path, [])
    if rules:
        result["x-kubernetes-validations"] = rules
    if path in _SET_LISTS:
        result["x-kubernetes-list-type"] = "set"
    if path in _MAP_LISTS:
        result["x-kubernetes-list-type"] = "map"
        result["x-kubernetes-list-map-keys"] = _MAP_LISTS[path]
    return result


def _one_pattern(
    pattern_properties: Mapping[str, Any], path: tuple[str, ...]
) -> tuple[str, Mapping[str, Any]]:
    if len(pattern_properties) != 1 or "'" in next(iter(pattern_properties)):
        raise ValueError(f"{'.'.join(path)}: a map the CRD schema cannot express")
    return next(iter(pattern_properties.items()))


def _keys_match(pattern: str) -> dict[str, str]:
    """The key pattern pydantic writes as patternProperties, as a CEL rule on the map.

    CEL's raw string keeps the regex's backslashes; the map's maxProperties bounds its cost."""
    return {
        "rule": f"self.all(key, key.matches(r'{pattern}'))",
        "message": f"every key must match {pattern}",
    }


def custom_resource_definition() -> dict[str, Any]:
    """The CRD; raises ValueError naming each node a real API server would refuse."""
    return crd_document(
        openapi_schema(),
        kind="FederatedJob",
        plural=PLURAL,
        short_names=["fj", "fedjob"],
        printer_columns=PRINTER_COLUMNS,
    )


def crd_document(
    schema: dict[str, Any],
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    printer_columns: list[Any],
) -> dict[str, Any]:
    """A namespaced CRD of Flotilla's API group serving `schema` with a status subresource;
    raises ValueError naming each node of `schema` a real API server would refuse."""
    problems = schema_problems(schema)
    if problems:
        raise ValueError("the CRD schema would be refused: " + "; ".join(problems))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["flotilla"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_yaml() -> str:
    return manifest_yaml(custom_resource_definition())


def manifest_yaml(document: Mapping[str, Any]) -> str:
    """A generated CRD as the checked-in file holds it."""
    header = (
        "# Generated from operator/flotilla/api by `flotilla crd`; do not edit.\n"
        "# A test fails when this file and the models drift apart.\n"
    )
    text = yaml.dump(dict(document), Dumper=_NoAliases, sort_keys=False, width=100)
    return header + text


class _NoAliases(yaml.SafeDumper):
    """Rules shared by several paths are written out each time, not as YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
