"""The checked-in CRD is the one the models generate, it is structural, and it accepts what
the models accept (every example) and refuses what it can tell is wrong."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flotilla.api import FederatedJob
from flotilla.k8s.crd import crd_yaml, custom_resource_definition

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "federatedjobs.flotilla.dev.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


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
    if result.pop("nullable", False):
        result["type"] = [result["type"], "null"]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if result.get(bound) is True:
            result[bound] = result.pop(limit)
    return result


def _validate(document: dict[str, Any]) -> None:
    jsonschema.validate(document, _as_json_schema(_schema()))


def test_the_checked_in_crd_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "run `flotilla crd > crds/...` and commit it"


def test_the_schema_is_structural() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
            if "properties" in node or "additionalProperties" in node:
                assert node.get("type") == "object", path
            if path.count(".properties.") and "type" not in node:
                assert node.get("x-kubernetes-preserve-unknown-fields"), path
            for key, value in node.items():
                if key in ("properties",):
                    for name, child in value.items():
                        walk(child, f"{path}.properties.{name}")
                elif key in ("items", "additionalProperties"):
                    walk(value, f"{path}.{key}")

    walk(_schema(), "openAPIV3Schema")


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


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("rounds",), 0),
        (("training", "optimizer"), "rmsprop"),
        (("training", "learningRate"), 0),
        (("clients", "minClients"), 0),
        (("strategy", "name"), "fedsomething"),
        (("training", "learnRate"), 0.1),
    ],
)
def test_the_api_server_would_refuse_what_the_schema_can_tell(
    path: tuple[str, ...], value: object
) -> None:
    document = copy.deepcopy(_digits())
    node = document["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

    with pytest.raises(jsonschema.ValidationError):
        _validate(document)


def test_cel_rules_cover_what_json_schema_cannot() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert "has(self.name) != has(self.entrypoint)" in str(spec["model"])
    assert "self.perRound >=" in str(spec["clients"])
    assert "has(self.cvatExport) != has(self.cvat)" in str(spec["data"])
    assert "has(self.cvatExport) != has(self.cvat)" in str(spec["sites"]["items"])
    assert spec["sites"]["maxItems"] == 10_000  # bounds the cost of the per-site rule
    assert spec["labels"]["x-kubernetes-list-type"] == "set"
    assert spec["sites"]["x-kubernetes-list-map-keys"] == ["name"]
