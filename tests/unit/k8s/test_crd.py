"""The checked-in CRD is the one the models generate, it is structural, and it accepts what
the models accept (every example) and refuses what it can tell is wrong."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flotilla.api import FederatedJob, SpecError
from flotilla.k8s import crd as crd_module
from flotilla.k8s.crd import crd_yaml, custom_resource_definition
from flotilla.k8s.crd_checks import schema_problems

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "federatedjobs.flotilla.dev.yaml"
# FederatedJobs; examples of other kinds (a FederatedSchedule) have tests of their own.
EXAMPLES = sorted(
    path
    for path in (ROOT / "examples").glob("*.yaml")
    if yaml.safe_load(path.read_text()).get("kind") == "FederatedJob"
)


def _schema() -> dict[str, Any]:
    crd = custom_resource_definition()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 (nullable, boolean exclusiveMinimum) to the JSON Schema jsonschema reads,
    with unknown fields refused as `kubectl apply` (strict field validation) refuses them."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {k: _as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False  # kubectl's strict field validation
    if node.get("x-kubernetes-int-or-string"):
        pattern = result.pop("pattern", ".*")
        result["anyOf"] = [{"type": "integer"}, {"type": "string", "pattern": pattern}]
    if result.pop("nullable", False):
        if "type" in result:
            result["type"] = [result["type"], "null"]
        else:
            result["anyOf"].append({"type": "null"})
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if result.get(bound) is True:
            result[bound] = result.pop(limit)
    return result


def _validate(document: dict[str, Any]) -> None:
    jsonschema.validate(document, _as_json_schema(_schema()))


def test_the_checked_in_crd_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "run `flotilla crd > crds/...` and commit it"


def test_the_schema_holds_only_what_a_real_api_server_accepts() -> None:
    assert schema_problems(_schema()) == []


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            {"type": "object", "patternProperties": {"^a$": {"type": "string"}}},
            "openAPIV3Schema.patternProperties: Forbidden: patternProperties is not supported",
        ),
        ({"$ref": "#/x"}, "openAPIV3Schema.$ref: Forbidden"),
        ({"type": "object", "definitions": {}}, "openAPIV3Schema.definitions: Forbidden"),
        ({"type": "object", "dependencies": {}}, "openAPIV3Schema.dependencies: Forbidden"),
        ({"type": "array", "additionalItems": False}, "openAPIV3Schema.additionalItems"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems cannot be set to true"),
        ({"type": "object", "id": "x"}, "openAPIV3Schema.id: Forbidden"),
        ({"type": "object", "$schema": "x"}, "openAPIV3Schema.$schema: Forbidden"),
        ({"type": "string", "const": "x"}, "openAPIV3Schema.const: unknown field"),
        ({"type": "object", "x-kubernetes-preserve-unknown-fields": False}, "true or undefined"),
        ({"description": "untyped"}, "openAPIV3Schema.type: Required"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}},
             "additionalProperties": {"type": "string"}},
            "properties and additionalProperties are exclusive",
        ),
    ],
)  # fmt: skip
def test_the_check_names_each_node_the_api_server_refuses(
    node: dict[str, Any], expected: str
) -> None:
    nested = {"type": "object", "properties": {"spec": node}}

    assert any(expected in problem for problem in schema_problems(node))
    problems = schema_problems(nested)
    assert any(
        expected.replace("openAPIV3Schema.", "openAPIV3Schema.properties[spec].") in problem
        for problem in problems
    ), problems


def test_a_map_under_anyof_needs_no_type_but_one_under_items_does() -> None:
    assert schema_problems({"x-kubernetes-int-or-string": True, "anyOf": [{"minimum": 0}]}) == []
    assert schema_problems({"type": "array", "items": {"description": "x"}}) == [
        "openAPIV3Schema.items.type: Required: a structural schema types every node"
    ]


def test_the_generator_refuses_to_emit_what_the_api_server_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(crd_module, "_DROPPED", crd_module._DROPPED - {"propertyNames"})
    monkeypatch.setattr(crd_module, "_structural", _keep_property_names(crd_module._structural))

    with pytest.raises(ValueError, match=r"propertyNames: unknown field"):
        custom_resource_definition()


def _keep_property_names(structural: Any) -> Any:
    def wrapped(node: Any, defs: Any, path: tuple[str, ...]) -> dict[str, Any]:
        result: dict[str, Any] = structural(node, defs, path)
        if path == ("spec", "clients", "nodeSelector"):
            result["propertyNames"] = {"pattern": "^a"}
        return result

    return wrapped


def test_resource_maps_are_bounded_maps_of_int_or_string_with_a_cel_rule_on_keys() -> None:
    limits = _schema()["properties"]["spec"]["properties"]["runtime"]["properties"]["client"][
        "properties"
    ]["resources"]["properties"]["limits"]

    assert "patternProperties" not in limits
    assert limits["maxProperties"] == 32
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True
    assert limits["x-kubernetes-validations"][0]["rule"].startswith("self.all(key, key.matches(")


def test_a_quantity_may_be_an_integer_as_kubernetes_allows() -> None:
    document = copy.deepcopy(_digits())
    document["spec"]["runtime"] = {"client": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}

    _validate(document)
    job = FederatedJob.from_dict(document)
    assert job.spec.runtime.client.resources.limits == {"nvidia.com/gpu": "1"}


def test_status_subresource_short_names_and_printer_columns() -> None:
    version = custom_resource_definition()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = custom_resource_definition()["spec"]["names"]
    assert names["shortNames"] == ["fj", "fedjob"]
    columns = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        ".status.phase",
        ".status.progress",
        ".status.clientsReady",
        ".status.metrics.accuracy",
        ".status.metrics.map50",  # priority 1: shown with -o wide
        ".status.servingEndpoint",  # priority 1
        ".metadata.creationTimestamp",
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_against_the_crd_and_parses_as_the_model(example: Path) -> None:
    for document in yaml.safe_load_all(example.read_text()):
        _validate(document)
        FederatedJob.from_dict(document)


def _digits() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    return document


# Numbers the model refuses and JSON can carry (JSON has no NaN or Infinity, so those never
# reach the API server): both the CRD and the model must refuse each.
HOSTILE_NUMBERS = [
    (("seed",), 2**32),
    (("seed",), -1),
    (("clients", "minClients"), True),
    (("clients", "minClients"), 10_001),
    (("clients", "roundDeadlineSeconds"), 604_801),
    (("clients", "joinGraceSeconds"), 604_801),
    (("training", "weightDecay"), 1.5),
    (("training", "maxSeconds"), 604_801),
    (("rounds",), "3"),
    (("rounds",), 3.5),
    (("tracking", "flushTimeoutSeconds"), 604_801),
    (("ttlSecondsAfterFinished",), 2**31),
]


def _with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    document = copy.deepcopy(_digits())
    node = document["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return document


@pytest.mark.parametrize(("path", "value"), HOSTILE_NUMBERS)
def test_the_model_refuses_the_numbers_the_crd_refuses(
    path: tuple[str, ...], value: object
) -> None:
    with pytest.raises(SpecError, match=r"spec\." + r"\.".join(path)):
        FederatedJob.from_dict(_with(path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("rounds",), 0),
        (("training", "optimizer"), "rmsprop"),
        (("training", "learningRate"), 0),
        (("clients", "minClients"), 0),
        (("strategy", "name"), "fedsomething"),
        (("training", "learnRate"), 0.1),
        *HOSTILE_NUMBERS,
    ],
)
def test_the_api_server_would_refuse_what_the_schema_can_tell(
    path: tuple[str, ...], value: object
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _validate(_with(path, value))


def test_cel_rules_cover_what_json_schema_cannot() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert "has(self.name) != has(self.entrypoint)" in str(spec["model"])
    assert "self.perRound >=" in str(spec["clients"])
    assert "has(self.cvatExport) != has(self.cvat)" in str(spec["data"])
    assert "has(self.cvatExport) != has(self.cvat)" in str(spec["sites"]["items"])
    assert spec["sites"]["maxItems"] == 10_000  # bounds the cost of the per-site rule
    assert spec["labels"]["x-kubernetes-list-type"] == "set"
    assert spec["sites"]["x-kubernetes-list-map-keys"] == ["name"]
