"""`helm install` of charts/flotilla on a real v1.28 API server, with Helm's own engine, and the
plain manifests of config/ as `kubectl apply` takes them.

This module runs first (name order): on the throwaway control plane of `make e2e`, the CRD is
removed beforehand, so that the one the chart installs is what every later test uses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import CRD_FILE, FAKE_NODES, NewNamespace
from tests.e2e.kube import eventually, get, items, kubectl
from tests.helm_env import MISSING, BuildFailed, build_venv, find_python_312
from tests.rbac import config_roles, granted

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RELEASE = "e2e"
CRD_NAME = "federatedjobs.flotilla.dev"


@pytest.fixture(scope="module")
def helm_python(cluster: object) -> Path:
    python = find_python_312()
    if python is None:
        pytest.skip(f"{MISSING}: the chart was NOT installed")
    try:
        return build_venv(python)
    except BuildFailed as error:
        pytest.fail(str(error))


def _helm(python: Path, action: str, namespace: str, values: dict[str, Any] | None = None) -> Any:
    command = [
        str(python), str(ROOT / "tests" / "e2e" / "helm_release.py"), action,
        "--release", RELEASE, "--namespace", namespace, "--values", json.dumps(values or {}),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"helm {action} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_helm_installs_the_chart_and_its_crd_on_kubernetes_1_28(
    helm_python: Path, new_namespace: NewNamespace
) -> None:
    if FAKE_NODES:  # a throwaway cluster: the chart's CRD is the one installed
        kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=120)
    namespace = new_namespace(**{"pod-security.kubernetes.io/enforce": "restricted"})

    values = {"grafana": {"dashboards": {"enabled": True}}, "certManager": {"enabled": True}}
    release = _helm(helm_python, "install", namespace, values)
    try:
        _check_release(release, namespace)
    finally:
        _helm(helm_python, "uninstall", namespace)

    fullname = f"{RELEASE}-flotilla"
    eventually(
        lambda: (
            get("deployment", f"{fullname}-operator", namespace=namespace) is None
            and get("clusterrole", f"{fullname}-operator") is None
        ),
        what="the release's objects deleted by helm uninstall",
    )
    assert get("crd", CRD_NAME) is not None  # Helm never deletes a chart's CRDs


def _check_release(release: dict[str, Any], namespace: str) -> None:
    assert release.get("info", {}).get("status") == "deployed", release
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    installed = get("crd", CRD_NAME)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    shipped = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]
    assert installed == shipped["openAPIV3Schema"]
    fullname = f"{RELEASE}-flotilla"
    deployment = get("deployment", f"{fullname}-operator", namespace=namespace)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{fullname}-operator"
    mlflow = f"http://{fullname}-mlflow.{namespace}.svc:5000"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--default-tracking-uri={mlflow}" in args
    # The MLflow server's Deployment made its pod, admitted under `restricted` too.
    eventually(
        lambda: items("pods", namespace=namespace, selector="app.kubernetes.io/component=tracking"),
        what="the MLflow server's pod",
    )
    assert get("service", f"{fullname}-mlflow", namespace=namespace) is not None
    # The Deployment's ReplicaSet made the operator's pod: admitted under `restricted`.
    pods = eventually(
        lambda: items("pods", namespace=namespace, selector="app.kubernetes.io/component=operator"),
        what="the operator pod, made by the Deployment's ReplicaSet",
    )
    assert len(pods) == 1
    dashboards = items("configmaps", namespace=namespace, selector="grafana_dashboard=1")
    assert len(dashboards) == 2
    role = get("clusterrole", f"{fullname}-operator")
    cluster_role = get("clusterrole", f"{fullname}-operator-cluster")
    assert granted(role, cluster_role) == granted(config_roles()["flotilla-operator"])


def test_the_plain_manifests_of_config_are_what_the_api_server_takes(cluster: object) -> None:
    kubectl("apply", "-f", str(ROOT / "config" / "namespace.yaml"))
    for manifest in ("rbac.yaml", "mlflow.yaml", "operator.yaml"):
        kubectl("apply", "--dry-run=server", "-f", str(ROOT / "config" / manifest))
