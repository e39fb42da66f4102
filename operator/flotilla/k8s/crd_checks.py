"""What the apiextensions API server accepts in a CRD's openAPIV3Schema, checked before we emit it.

A CRD schema is not JSON Schema: the API server decodes it into `JSONSchemaProps`
(apiextensions.k8s.io/v1), refuses fields that type does not have (strict decoding), and
forbids some that it has (`patternProperties`, `$ref`, `definitions`, `dependencies`,
`additionalItems`, `uniqueItems: true`, `id`, `$schema`). Structural schemas add more: every
node typed unless it preserves unknown fields or is int-or-string, `properties` and
`additionalProperties` never together. kmock validates nothing, so the generator runs these
checks itself and refuses to emit a CRD that a real server would refuse.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Every field of JSONSchemaProps in apiextensions.k8s.io/v1, with the x-kubernetes-* extensions.
KNOWN_KEYWORDS = frozenset(
    {
        "id", "$schema", "$ref", "description", "type", "format", "title", "default",
        "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
        "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
        "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
        "additionalProperties", "patternProperties", "dependencies", "additionalItems",
        "definitions", "externalDocs", "example", "nullable",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
        "x-kubernetes-map-type", "x-kubernetes-validations",
    }
)  # fmt: skip
# Fields JSONSchemaProps has but the API server forbids in a CRD, with its reason.
FORBIDDEN = {
    "patternProperties": "patternProperties is not supported",
    "$ref": "$ref is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
    "additionalItems": "additionalItems is not supported",
    "id": "id is not supported",
    "$schema": "$schema is not supported",
}
# Keys whose value is a map of names to schemas, and keys whose value is one schema (or a list).
_NAMED_SCHEMAS = ("properties",)
_SUB_SCHEMAS = ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf")


def schema_problems(schema: Mapping[str, Any], *, root: str = "openAPIV3Schema") -> list[str]:
    """Every reason the API server would refuse `schema`, each with the path of its node."""
    return [f"{path}: {problem}" for path, problem in _walk(schema, root, typed=True)]


def _walk(node: Mapping[str, Any], path: str, *, typed: bool) -> Iterator[tuple[str, str]]:
    for key in node:
        if key in FORBIDDEN:
            yield f"{path}.{key}", f"Forbidden: {FORBIDDEN[key]}"
        elif key not in KNOWN_KEYWORDS:
            yield f"{path}.{key}", "unknown field: not a JSONSchemaProps field"
    if node.get("uniqueItems") is True:
        yield f"{path}.uniqueItems", "Forbidden: uniqueItems cannot be set to true"
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        yield f"{path}.x-kubernetes-preserve-unknown-fields", "must be true or undefined"
    if "properties" in node and isinstance(node.get("additionalProperties"), Mapping):
        yield f"{path}.additionalProperties", "properties and additionalProperties are exclusive"
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-int-or-string"
    )
    if typed and "type" not in node and not untyped_ok:
        yield f"{path}.type", "Required: a structural schema types every node"
    for key in _NAMED_SCHEMAS:
        for name, child in (node.get(key) or {}).items():
            yield from _walk(child, f"{path}.{key}[{name}]", typed=True)
    for key in _SUB_SCHEMAS:
        value = node.get(key)
        # Under anyOf/allOf/oneOf/not only value validations may appear: no type needed.
        typed_child = key in ("items", "additionalProperties")
        if isinstance(value, Mapping):
            yield from _walk(value, f"{path}.{key}", typed=typed_child)
        elif isinstance(value, list):
            for index, child in enumerate(value):
                yield from _walk(child, f"{path}.{key}[{index}]", typed=typed_child)
