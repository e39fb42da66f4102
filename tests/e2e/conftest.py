"""End-to-end tests on a real Kubernetes API server: `make e2e`.

`make e2e` (tests/e2e/run.sh) starts the kubelet-less control plane of ../shared/k8s when
KUBECONFIG is unset and sets FLOTILLA_E2E_FAKE_NODES=1 and FLOTILLA_E2E_AUDIT_LOG; with your
own KUBECONFIG (kind, k3d, any cluster v1.28+) the tests that need fake nodes or the audit log
are skipped, saying why. Without a cluster every test here is skipped.

Fixtures install what a user installs (the CRD, config/rbac.yaml), run the operator from
this checkout as its ServiceAccount, and play the kubelet the control plane lacks. Modules
run in name order; test_rights.py comes last on purpose: it reads the audit log of all the
others.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kube import fake_node, kubectl
from tests.e2e.kubelet import FakeKubelet
from tests.e2e.operator_process import OperatorProcess, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "federatedjobs.flotilla.dev.yaml"
SCHEDULE_CRD_FILE = ROOT / "crds" / "federatedschedules.flotilla.dev.yaml"
FAKE_NODES = os.environ.get("FLOTILLA_E2E_FAKE_NODES") == "1"
# The four nodes of every flow: three edge sites (amd64, arm64, GPU) and a core node.
NODES = {
    "edge-1": ({"flotilla.dev/edge": "true", "flotilla.dev/site": "site-a"}, "amd64", 0),
    "edge-2": ({"flotilla.dev/edge": "true", "flotilla.dev/site": "site-b"}, "arm64", 0),
    "gpu-1": (
        {
            "flotilla.dev/edge": "true",
            "flotilla.dev/site": "site-c",
            "nvidia.com/gpu.present": "true",
        },
        "amd64",
        1,
    ),
    "cpu-1": ({"node-role.kubernetes.io/core": "true"}, "amd64", 0),
}
NewNamespace = Callable[..., str]
LOG_OFFSET = pytest.StashKey[int]()
NAMESPACES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def cluster() -> datetime:
    """The session's start (the audit log is read from then on); skips without a cluster."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no KUBECONFIG: no cluster (make e2e starts ../shared/k8s when it exists)")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    kubectl("version", "-o", "json", timeout=30)
    return datetime.now(UTC)


@pytest.fixture(scope="session")
def crd(cluster: datetime) -> None:
    kubectl("apply", "-f", str(CRD_FILE), "-f", str(SCHEDULE_CRD_FILE))
    kubectl(
        "wait", "--for=condition=Established", "crd/federatedjobs.flotilla.dev",
        "crd/federatedschedules.flotilla.dev", "--timeout=60s",
    )  # fmt: skip


@pytest.fixture(scope="session")
def nodes(cluster: datetime) -> list[str]:
    if not FAKE_NODES:
        pytest.skip("needs the kubelet-less control plane of make e2e (fake nodes)")
    for name, (labels, arch, gpus) in NODES.items():
        fake_node(name, labels, arch=arch, gpus=gpus)
    return list(NODES)


@pytest.fixture(scope="session")
def kubelet(nodes: list[str]) -> Iterator[FakeKubelet]:
    stand_in = FakeKubelet()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def operator(
    crd: None, kubelet: FakeKubelet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    directory = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(service_account_kubeconfig(directory), directory / "operator.log")
    process.start()
    yield process
    process.stop()
    print(f"operator log: {process.log}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed flow says what the cluster and the operator did meanwhile: CI keeps nothing
    else (the operator's log, the namespaces' pods and events, the scheduler's log)."""
    report = yield
    if report.when == "call" and report.failed:
        for title, text in diagnose(item).items():
            report.sections.append((title, text))
    return report


def diagnose(item: pytest.Item) -> dict[str, str]:
    sections: dict[str, str] = {}
    funcargs = getattr(item, "funcargs", {})
    process = funcargs.get("operator")
    started = item.stash.get(LOG_OFFSET, 0)
    if isinstance(process, OperatorProcess) and process.log.exists():
        with process.log.open("rb") as log:
            log.seek(started)
            lines = log.read().decode(errors="replace").splitlines()
        sections["operator log during the test (last 150 lines)"] = "\n".join(lines[-150:])
    for namespace in item.stash.get(NAMESPACES, []):
        for what in ("pods", "events", "federatedjobs"):
            shape = "yaml" if what == "federatedjobs" else "wide"
            listed = kubectl("get", what, "-n", namespace, "-o", shape, check=False)
            sections[f"{what} in {namespace}"] = listed.stdout + listed.stderr
    if isinstance(process, OperatorProcess):
        sections["operator process"] = "running" if process.running() else "exited"
    logs = Path(os.environ.get("K8S_HOME", "/tmp/flotilla-k8s")) / "run"
    for component in ("kube-scheduler", "kube-apiserver"):
        path = logs / f"{component}.log"
        if path.exists():  # klog: I info, W warning, E error
            lines = path.read_text(errors="replace").splitlines()
            worth = [line for line in lines if line[:1] in ("W", "E")]
            sections[f"{component} warnings and errors (last 40)"] = "\n".join(worth[-40:])
    return sections


@pytest.fixture(autouse=True)
def _mark_operator_log(request: pytest.FixtureRequest) -> None:
    """Where the operator's log stood when the test began (diagnose reads from there)."""
    if "operator" in request.fixturenames:
        process = request.getfixturevalue("operator")
        request.node.stash[LOG_OFFSET] = process.log.stat().st_size if process.log.exists() else 0


@pytest.fixture
def new_namespace(cluster: datetime, request: pytest.FixtureRequest) -> Iterator[NewNamespace]:
    """new_namespace(label=value, ...) -> a fresh namespace, deleted after the test."""
    made: list[str] = []

    def make(**labels: str) -> str:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        kubectl("create", "namespace", name)
        if labels:
            kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
        made.append(name)
        request.node.stash[NAMESPACES] = made
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
