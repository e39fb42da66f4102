"""The chart's Grafana dashboards and Prometheus alerts: well formed, up to date, and using
only the metrics that docs/metrics.md documents.

promtool (Debian's `prometheus` package) checks and unit-tests the rules where it is
installed; CI machines lack it, so those two tests skip there and the pure-Python checks
below still hold every query to the documented metric names and labels.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "flotilla"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULES = CHART / "alerts" / "flotilla-rules.yaml"
RULE_TESTS = ROOT / "tests" / "alerts" / "flotilla-rules.test.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Labels Prometheus adds to every target (`namespace` with Kubernetes service discovery) and
# the histogram bucket label, beside the ones docs/metrics.md names.
TARGET_LABELS = {"job", "instance", "namespace", "le"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def documented_metrics() -> tuple[set[str], set[str]]:
    """Every series name a query may select (histograms as _bucket/_sum/_count) and every
    label, from the tables of docs/metrics.md."""
    names, labels = {"up"}, {"flotilla_job", "site"}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        kind = cells[1]
        for name in re.findall(r"`(flotilla_\w+)`", cells[0]):
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        if len(cells) >= 4:  # the aggregator's and the operator's tables have a labels column
            labels |= set(re.findall(r"^`(\w+)`", cells[2]))
            labels |= set(re.findall(r"`(\w+)`", cells[2].split("(")[0]))
        labels |= set(re.findall(r"by `(\w+)`", cells[-1]))
    return names, labels


def selected_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?(ms|[smhdwy])?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def used_labels(expr: str) -> set[str]:
    """Label names in matchers and in by/without/on/ignoring clauses."""
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def load_dashboard(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panel_exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_parsers_see_what_a_query_selects() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, trigger) (rate(a_bucket{x=~"$y"}[$__rate_interval])))'
        " / on (namespace) (b_total offset 30m) and up == 1"
    )
    assert selected_metrics(expr) == {"a_bucket", "b_total", "up"}
    assert used_labels(expr) == {"le", "trigger", "x", "namespace"}
    names, labels = documented_metrics()
    assert {"flotilla_round_duration_seconds_bucket", "flotilla_global_accuracy"} <= names
    assert "flotilla_round_duration_seconds" not in names  # a histogram has no bare series
    assert {"phase", "reason", "source", "state", "trigger", "error", "status"} <= labels


def test_there_are_two_dashboards() -> None:
    assert [path.name for path in DASHBOARDS] == ["flotilla-job.json", "flotilla-overview.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_a_dashboard_queries_only_documented_metrics(path: Path) -> None:
    names, labels = documented_metrics()
    exprs = panel_exprs(load_dashboard(path))
    assert exprs
    for title, expr in exprs:
        assert selected_metrics(expr), f"{title}: no metric in {expr}"
        assert selected_metrics(expr) <= names, f"{title}: undocumented metric in {expr}"
        assert used_labels(expr) <= labels | TARGET_LABELS, f"{title}: unknown label in {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_a_dashboard_is_well_formed(path: Path) -> None:
    board = load_dashboard(path)
    assert board["schemaVersion"] >= 39
    assert board["uid"] == path.stem
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["flotilla_job"]
    assert job["query"] == "label_values(flotilla_round_current, flotilla_job)"
    assert job["datasource"]["uid"] == "${datasource}"


def test_the_job_dashboard_shows_each_sites_link_with_units() -> None:
    """The Links row: resets by site and direction, resumed bytes and upload rate by site."""
    panels = load_dashboard(CHART / "dashboards" / "flotilla-job.json")["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and "Links" in p["title"])
    row = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        row.append(panel)
    selected = {
        metric: used_labels(target["expr"])
        for panel in row
        for target in panel["targets"]
        for metric in selected_metrics(target["expr"])
    }
    assert selected == {
        "flotilla_site_transfer_resets_total": {"flotilla_job", "site", "direction"},
        "flotilla_site_resumed_bytes_total": {"flotilla_job", "site"},
        "flotilla_site_upload_bytes_per_second": {"flotilla_job", "site"},
    }
    assert all(panel["fieldConfig"]["defaults"]["unit"] != "short" for panel in row)


def test_the_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.skip("grafana-foundation-sdk is not installed (the dev extra has it)")
    generator = CHART / "dashboards" / "generate.py"
    result = subprocess.run(
        [sys.executable, str(generator), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_alert_queries_documented_metrics_and_says_what_to_do() -> None:
    names, labels = documented_metrics()
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "FlotillaJobStuck",
        "FlotillaClientsBelowMinimum",
        "FlotillaAggregatorDown",
        "FlotillaUpdatesRejectedRising",
        "FlotillaOperatorReconcileErrors",
    }
    for rule in rules:
        expr = rule["expr"]
        assert selected_metrics(expr) <= names, f"{rule['alert']}: undocumented metric"
        assert used_labels(expr) <= labels | TARGET_LABELS, f"{rule['alert']}: unknown label"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert set(rule["annotations"]) >= {"summary", "description", "runbook"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fire_and_spare_each_alert() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
