"""The chart rendered by Helm's own engine (tests/chart/render.py): valid for Kubernetes
1.28 and 1.30, the same pod and rights as config/*.yaml, and what each toggle adds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api.loader import load_job
from flotilla.k8s import aggregator_objects, objects
from tests.rbac import config_roles, granted

from .conftest import CHART, KUBERNETES_VERSIONS, ROOT, Render, RenderFailed

ALL_ON = Path(__file__).resolve().parent / "values" / "all-on.yaml"


def _one(rendered: dict[str, Any], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in rendered["objects"]
        if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.fixture(scope="module")
def default(render: Render) -> dict[str, Any]:
    return render()


@pytest.fixture(scope="module")
def all_on(render: Render) -> dict[str, Any]:
    return render(None, ALL_ON)


def test_defaults_render_valid_kubernetes_1_28_and_1_30_objects(default: dict[str, Any]) -> None:
    assert default["validated"] == list(KUBERNETES_VERSIONS) == ["1.28.7", "1.30.0"]
    assert default["errors"] == []
    assert default["unvalidated"] == []
    assert Counter(d["kind"] for d in default["objects"]) == {
        "ServiceAccount": 1,
        "ClusterRole": 4,
        "ClusterRoleBinding": 2,
        "Service": 2,  # the operator's metrics, MLflow
        "Deployment": 2,  # the operator, MLflow
        "PersistentVolumeClaim": 1,  # MLflow's
    }


def test_helm_lint_finds_nothing_worse_than_info(default: dict[str, Any]) -> None:
    # Helm's one info is "icon is recommended": the project has no icon.
    assert [m for m in default["lint"] if m["severity"] != "info"] == []


def test_every_toggle_on_renders_valid_objects(all_on: dict[str, Any]) -> None:
    assert all_on["validated"] == list(KUBERNETES_VERSIONS)
    assert all_on["errors"] == []
    assert sorted(all_on["unvalidated"]) == [
        "PodMonitor/flotilla-aggregators",
        "PrometheusRule/flotilla",
        "ServiceMonitor/flotilla-operator",
    ]


def test_the_operator_pod_is_hardened(default: dict[str, Any]) -> None:
    deployment = _one(default, "Deployment", "flotilla-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_the_operator_runs_with_kopf_health_probes_and_metrics(default: dict[str, Any]) -> None:
    pod = _one(default, "Deployment", "flotilla-operator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/flotilla-dev/flotilla-operator:0.1.0"
    assert container["args"] == [
        "operator",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--metrics-port=8080",
        "--default-tracking-uri=http://flotilla-mlflow.flotilla-system.svc:5000",
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["serviceAccountName"] == _one(default, "ServiceAccount")["metadata"]["name"]
    service = _one(default, "Service", "flotilla-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = _one(default, "Deployment", "flotilla-operator")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_rbac_grants_what_config_rbac_grants(default: dict[str, Any]) -> None:
    rendered = {d["metadata"]["name"]: d for d in default["objects"] if d["kind"] == "ClusterRole"}
    config = config_roles()
    operator = granted(rendered["flotilla-operator"], rendered["flotilla-operator-cluster"])
    # config/ grants cert-manager certificates always; the chart with certManager.enabled.
    certificates = {g for g in granted(config["flotilla-operator"]) if g[0] == "cert-manager.io"}
    assert operator == granted(config["flotilla-operator"]) - certificates
    for role in ("flotilla-federatedjob-viewer", "flotilla-federatedjob-editor"):
        assert granted(rendered[role]) == granted(config[role])
        aggregate = {k: v for k, v in rendered[role]["metadata"]["labels"].items() if "rbac" in k}
        assert aggregate == config[role]["metadata"]["labels"]
    account = _one(default, "ServiceAccount")["metadata"]
    for binding in (d for d in default["objects"] if d["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
        assert binding["roleRef"]["name"] in rendered


def test_watch_namespace_narrows_the_operator_to_it(all_on: dict[str, Any]) -> None:
    (container,) = _one(all_on, "Deployment", "flotilla-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--namespace=ml" in container["args"]
    binding = _one(all_on, "RoleBinding")
    assert binding["metadata"]["namespace"] == "ml"
    assert binding["roleRef"]["name"] == "flotilla-operator"
    cluster_binding = _one(all_on, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == "flotilla-operator-cluster"


def test_the_service_monitor_scrapes_the_operator_service(all_on: dict[str, Any]) -> None:
    monitor = _one(all_on, "ServiceMonitor")
    service = _one(all_on, "Service", "flotilla-metrics")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["flotilla-system"]}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["interval"] == "15s"


def test_the_pod_monitor_scrapes_what_the_operator_makes_aggregators(
    all_on: dict[str, Any],
) -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    deployment = aggregator_objects.deployment(job)
    aggregator = deployment["spec"]["template"]
    (container,) = aggregator["spec"]["containers"]
    monitor = _one(all_on, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {objects.ROLE_LABEL: "aggregator"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= aggregator["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    # Not the API port: it speaks TLS, which the monitor does not.
    assert f"--metrics-port={objects.AGGREGATOR_METRICS_PORT}" in container["args"]
    assert endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "flotilla-aggregator"} in endpoint["relabelings"]


def test_the_pod_monitor_watches_every_namespace_by_default(render: Render) -> None:
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert _one(rendered, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def test_the_prometheus_rule_carries_the_alert_file(all_on: dict[str, Any]) -> None:
    rule = _one(all_on, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "alerts" / "flotilla-rules.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["namespace"] == "monitoring"


def test_one_dashboard_configmap_per_json_file(all_on: dict[str, Any]) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    maps = [
        d
        for d in all_on["objects"]
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert len(maps) == len(files)
    for path in files:
        (config_map,) = (m for m in maps if path.name in m["data"])
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Flotilla"}
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text())


def test_the_dashboard_label_is_configurable(render: Render) -> None:
    rendered = render(
        {"grafana": {"dashboards": {"enabled": True, "label": "dash", "labelValue": "yes"}}}
    )
    config_maps = [d for d in rendered["objects"] if d["kind"] == "ConfigMap"]
    assert config_maps
    for config_map in config_maps:
        assert config_map["metadata"]["labels"]["dash"] == "yes"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]


def test_cert_manager_enabled_grants_certificates_as_config_does(
    default: dict[str, Any], all_on: dict[str, Any]
) -> None:
    def operator_rules(rendered: dict[str, Any]) -> set[tuple[str, str, str]]:
        roles = [d for d in rendered["objects"] if d["kind"] == "ClusterRole"]
        return granted(*(r for r in roles if r["metadata"]["name"].endswith("-operator")))

    config = granted(config_roles()["flotilla-operator"])
    wanted = {g for g in config if g[0] == "cert-manager.io"}
    assert wanted and wanted <= operator_rules(all_on)
    assert not wanted & operator_rules(default)


def test_without_rbac_and_service_account_the_chart_uses_the_given_account(
    render: Render,
) -> None:
    rendered = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "x"}})
    assert Counter(d["kind"] for d in rendered["objects"]) == {
        "Service": 2,
        "Deployment": 2,
        "PersistentVolumeClaim": 1,
    }
    assert (
        _one(rendered, "Deployment", "flotilla-operator")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        == "x"
    )


def test_helm_enforces_the_values_schema(render: Render) -> None:
    with pytest.raises(RenderFailed, match="pullPolicy"):
        render({"image": {"pullPolicy": "Sometimes"}})


def test_the_notes_say_how_to_run_the_example(default: dict[str, Any]) -> None:
    assert "kubectl apply -f examples/federatedjob.yaml" in default["notes"]
    assert "kubectl get fj -w" in default["notes"]


def test_the_mlflow_server_is_every_job_default_and_never_selected_as_the_operator(
    default: dict[str, Any],
) -> None:
    deployment = _one(default, "Deployment", "flotilla-mlflow")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["mlflow"]
    assert container["args"][:3] == ["server", "--host=0.0.0.0", "--port=5000"]
    assert "--backend-store-uri=sqlite:////var/lib/mlflow/mlflow.db" in container["args"]
    assert "--serve-artifacts" in container["args"]
    hosts = next(a for a in container["args"] if a.startswith("--allowed-hosts="))
    assert "flotilla-mlflow.flotilla-system.svc:*" in hosts and "localhost:*" in hosts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    operator = _one(default, "Deployment", "flotilla-operator")["spec"]["selector"]["matchLabels"]
    assert not set(operator.items()) <= set(pod["metadata"]["labels"].items())
    service = _one(default, "Service", "flotilla-mlflow")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    claim = _one(default, "PersistentVolumeClaim", "flotilla-mlflow")
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_mlflow_off_leaves_jobs_without_a_default(render: Render) -> None:
    rendered = render({"mlflow": {"enabled": False}})

    assert [d["metadata"]["name"] for d in rendered["objects"] if d["kind"] == "Deployment"] == [
        "flotilla-operator"
    ]
    (container,) = _one(rendered, "Deployment", "flotilla-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    assert not any(a.startswith("--default-tracking-uri") for a in container["args"])


def test_a_production_mlflow_takes_its_store_and_credentials_from_secrets(render: Render) -> None:
    rendered = render(
        {
            "mlflow": {
                "backendStore": {"secretName": "mlflow-db"},
                "artifactsDestination": "s3://models/flotilla",
                "envFromSecret": "mlflow-s3",
            }
        }
    )

    assert rendered["errors"] == []
    (container,) = _one(rendered, "Deployment", "flotilla-mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
    assert "--artifacts-destination=s3://models/flotilla" in container["args"]
    store = next(e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]


def test_the_plain_mlflow_manifest_is_what_the_chart_renders(default: dict[str, Any]) -> None:
    def plain(document: dict[str, Any]) -> dict[str, Any]:
        for labels in (
            document["metadata"]["labels"],
            document.get("spec", {}).get("template", {}).get("metadata", {}).get("labels"),
        ):
            for helm_only in (
                "helm.sh/chart",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/version",
            ):
                (labels or {}).pop(helm_only, None)
        return document

    rendered = [plain(d) for d in default["objects"] if d["metadata"]["name"] == "flotilla-mlflow"]
    config = [d for d in yaml.safe_load_all((ROOT / "config" / "mlflow.yaml").read_text()) if d]
    assert config == rendered
    operator = yaml.safe_load((ROOT / "config" / "operator.yaml").read_text())
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--default-tracking-uri=http://flotilla-mlflow.flotilla-system.svc:5000" in args
