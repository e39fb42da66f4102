"""The chart's files, without rendering: the CRD copy, values and their schema and README,
the alert rules and dashboards it packs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "flotilla"
VALUES = CHART / "values.yaml"
ALL_ON = Path(__file__).resolve().parent / "values" / "all-on.yaml"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):")


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())  # type: ignore[no-any-return]


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


def _paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every value as a dotted path: the leaves, and the maps passed on as they are."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in FREE_FORM:
            yield from _paths(value, f"{path}.")
        else:
            yield path


# Maps handed to Kubernetes as they are: documented as a whole, not key by key.
FREE_FORM = {"podSecurityContext", "securityContext", "resources", "mlflow.resources"}


@pytest.mark.parametrize(
    "name", ["federatedjobs.flotilla.dev.yaml", "federatedschedules.flotilla.dev.yaml"]
)
def test_the_chart_crds_are_byte_copies_of_the_generated_ones(name: str) -> None:
    generated = ROOT / "crds" / name
    copy = CHART / "crds" / name
    assert copy.read_bytes() == generated.read_bytes(), (
        f"{copy} differs from {generated}: run "
        f"`cp {generated.relative_to(ROOT)} {copy.relative_to(ROOT)}`"
    )
    # Helm installs every file there: a second copy under another name fails the install.
    generated_names = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == generated_names


def test_the_schema_is_draft_07_and_the_default_values_follow_it() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_values())


def test_the_all_toggles_values_follow_the_schema() -> None:
    jsonschema.Draft7Validator(_schema()).validate(yaml.safe_load(ALL_ON.read_text()))


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 2},  # not a value of this chart: one replica, always
        {"image": {"pullPolicy": "Sometimes"}},
        {"metrics": {"port": 0}},
        {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        {"watchNamespace": "Not_A_Namespace"},
        {"grafana": {"dashboards": {"lable": "grafana_dashboard"}}},
    ],
)
def test_the_schema_refuses_wrong_values(values: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(values)


def test_every_value_has_a_comment() -> None:
    """A key is commented when it, or a map above it, has a comment right above."""
    lines = VALUES.read_text().splitlines()
    commented_at: dict[int, bool] = {}  # indent -> the enclosing key was commented
    missing = []
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        commented_at = {i: c for i, c in commented_at.items() if i < indent}
        above = lines[number - 1].strip() if number else ""
        commented = above.startswith("#") or any(commented_at.values())
        is_leaf = line.split(":", 1)[1].strip() != ""
        if is_leaf and not commented:
            missing.append(f"values.yaml:{number + 1}: {line.strip()}")
        commented_at[indent] = above.startswith("#")
    assert not missing, missing


def test_every_value_is_in_the_readme() -> None:
    readme = (ROOT / "charts" / "README.md").read_text()
    undocumented = [path for path in _paths(_values()) if f"`{path}`" not in readme]
    assert not undocumented, undocumented


def test_the_alert_rules_are_a_prometheus_rules_file() -> None:
    rules = yaml.safe_load((CHART / "alerts" / "flotilla-rules.yaml").read_text())
    assert set(rules) == {"groups"}
    alerts = {}
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["expr"].strip()
            alerts[rule.get("alert") or rule["record"]] = rule
    assert "FlotillaAggregatorDown" in alerts
    # The chart's PodMonitor names the aggregators' scrape job flotilla-aggregator.
    selector = re.search(r'up\{job=~"([^"]+)"\}', alerts["FlotillaAggregatorDown"]["expr"])
    assert selector and re.fullmatch(selector.group(1), "flotilla-aggregator")


def test_the_dashboards_are_grafana_json_with_names_fit_for_configmaps() -> None:
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] and dashboard["uid"] and dashboard["panels"], path.name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", path.stem), path.name
