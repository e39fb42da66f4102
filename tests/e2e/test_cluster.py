"""Opt-in, against a real cluster (kind, k3d, any v1.30+): `KUBECONFIG=... make e2e`.

Installs the CRD, checks that the API server takes every example and refuses a bad job
with the field's name (the structural schema and CEL rules at work), runs the operator
from this checkout, and watches it report a job with no matching nodes. Skipped when no
KUBECONFIG is given or kubectl is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = f"flotilla-e2e-{os.getpid()}"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no KUBECONFIG: no cluster"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120, check=check
    )


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    kubectl("apply", "-f", str(ROOT / "crds" / "federatedjobs.flotilla.dev.yaml"))
    kubectl(
        "wait", "--for=condition=Established", "crd/federatedjobs.flotilla.dev", "--timeout=60s"
    )
    kubectl("create", "namespace", NAMESPACE)
    yield NAMESPACE
    kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.parametrize(
    "example", ["federatedjob.yaml", "federatedjob-gpu-arm.yaml", "digits.yaml"]
)
def test_the_api_server_accepts_every_example(namespace: str, example: str) -> None:
    result = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "examples" / example)
    )
    assert result.returncode == 0, result.stderr


def test_the_api_server_refuses_a_bad_job_naming_the_field(namespace: str) -> None:
    job = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    job["spec"]["clients"]["perRound"] = 1  # below minClients: a CEL rule
    job["spec"]["training"]["learnRate"] = 0.1  # unknown: strict field validation
    result = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(job), check=False
    )
    assert result.returncode != 0
    assert "perRound must be >= minClients" in result.stderr
    assert "learnRate" in result.stderr


def test_the_operator_reports_a_job_without_matching_nodes(namespace: str) -> None:
    job = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    job["spec"]["clients"]["nodeSelector"] = {"flotilla.dev/e2e-no-such-node": "true"}
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flotilla",
            "operator",
            "--namespace",
            namespace,
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
        ]
    )
    try:
        deadline = time.monotonic() + 120
        conditions: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            got = kubectl("get", "fj", "digits", "-n", namespace, "-o", "json")
            conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
            if any(c["reason"] == "NoMatchingNodes" for c in conditions):
                break
            time.sleep(1)  # a real cluster: nothing to await but its answers
        assert any(c["reason"] == "NoMatchingNodes" for c in conditions), conditions
        deployment = kubectl(
            "get", "deployment", "digits-aggregator", "-n", namespace, "-o", "json"
        )
        owners = json.loads(deployment.stdout)["metadata"]["ownerReferences"]
        assert owners[0]["kind"] == "FederatedJob" and owners[0]["uid"]
    finally:
        operator.terminate()
        operator.wait(timeout=30)
