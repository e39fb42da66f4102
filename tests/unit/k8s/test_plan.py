"""Golden tests of the operator's desired state: input job + nodes -> expected objects.

Inputs are tests/data/k8s/input/*.yaml, outputs tests/data/k8s/output/*.yaml. After an
intended change, FLOTILLA_REGEN_GOLDEN=1 pytest tests/unit/k8s rewrites the outputs; read
the diff before committing it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import load_job, parse_job
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.plan import Plan, plan_job

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "k8s"
CASES = sorted(p.stem for p in (DATA / "input").glob("*.yaml"))


def _plan(case: str) -> Plan:
    given = yaml.safe_load((DATA / "input" / f"{case}.yaml").read_text())
    document = load_job(ROOT / given["job"]).to_dict()
    document["metadata"] |= {"namespace": given["namespace"], "uid": "uid-1"}
    document["spec"] |= given.get("spec", {})
    job = parse_job(document, source=case)
    counter = itertools.count(1)
    return plan_job(
        job,
        [NodeInfo.from_api(node) for node in given["nodes"]],
        existing_tokens=given["existingTokens"],
        new_token=lambda: f"generated-token-{next(counter)}",
    )


def _objects(plan: Plan) -> list[dict[str, Any]]:
    return [*plan.aggregator, *plan.clients.values()]


@pytest.mark.parametrize("case", CASES)
def test_desired_objects_match_the_golden_file(case: str) -> None:
    objects = _objects(_plan(case))
    expected_path = DATA / "output" / f"{case}.yaml"
    if os.environ.get("FLOTILLA_REGEN_GOLDEN"):
        expected_path.write_text(yaml.safe_dump_all(objects, sort_keys=False, width=100))
    expected = list(yaml.safe_load_all(expected_path.read_text()))
    assert objects == expected


def test_three_of_five_nodes_get_a_client_with_their_profile() -> None:
    plan = _plan("three-of-five-nodes")

    assert plan.sites == ["pi-7-factory-local", "plant-a", "plant-c"]
    gpu = plan.clients["plant-a"]["spec"]["containers"][0]
    assert gpu["image"].endswith("flotilla-cuda:0.1.0")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--device=cuda" in gpu["args"] and "--batch-size=128" in gpu["args"]
    arm = plan.clients["pi-7-factory-local"]["spec"]["containers"][0]
    assert "--batch-size=8" in arm["args"] and "--max-seconds=60" in arm["args"]
    assert arm["image"] == "ghcr.io/flotilla-dev/flotilla-client:0.1.0"  # multi-arch by default
    plain = plan.clients["plant-c"]["spec"]["containers"][0]
    assert "--device=cpu" in plain["args"]
    assert plain["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}


def test_every_object_is_owned_by_the_job_and_labelled() -> None:
    for obj in _objects(_plan("three-of-five-nodes")):
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["flotilla.dev/job"] == "inspection"
        assert meta["labels"]["flotilla.dev/role"] in ("aggregator", "client")
        assert meta["namespace"] == "factory"


def test_every_pod_is_hardened() -> None:
    plan = _plan("three-of-five-nodes")
    deployment = plan.aggregator[-1]
    pods = [deployment["spec"]["template"]["spec"], *(p["spec"] for p in plan.clients.values())]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}


def test_a_client_gets_its_own_token_only() -> None:
    plan = _plan("three-of-five-nodes")
    secret = plan.aggregator[1]

    for site, pod in plan.clients.items():
        env = pod["spec"]["containers"][0]["env"]
        refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
        assert refs == [{"name": "inspection-tokens", "key": f"token-{site}"}]
        assert f"token-{site}" in secret["stringData"]


def test_suspended_keeps_the_aggregator_and_tokens_but_no_clients() -> None:
    plan = _plan("digits-suspended")

    assert plan.clients == {}
    kinds = [obj["kind"] for obj in plan.aggregator]
    assert kinds == ["ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment"]
    assert plan.aggregator[1]["stringData"]["token-site-a"] == "kept-token-of-site-a-0123456789"


def test_a_site_without_data_is_a_problem_not_a_crash() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"data": None})})
    node = NodeInfo(name="edge-1", labels={"flotilla.dev/edge": "true"})

    plan = plan_job(job, [node], existing_tokens={})

    assert plan.clients == {}
    assert "site edge-1 (node edge-1)" in plan.problems[0]
    assert "is not listed (sites: none) and spec.data is not set" in plan.problems[0]


def test_a_live_cvat_site_gets_its_credentials_secret_and_no_host_path() -> None:
    pod = _plan("live-cvat").clients["site-a"]["spec"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cvat-credentials"]["secret"] == {"secretName": "cvat-site-a"}
    assert not any("hostPath" in v for v in pod["volumes"])
    container = pod["containers"][0]
    assert not any(arg.startswith("--data") for arg in container["args"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/secrets/flotilla/cvat"]["readOnly"] is True
