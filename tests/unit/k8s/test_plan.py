"""Golden tests of the operator's desired state: input job + nodes -> expected objects.

Inputs are tests/data/k8s/input/*.yaml, outputs tests/data/k8s/output/*.yaml. After an
intended change, FLOTILLA_REGEN_GOLDEN=1 pytest tests/unit/k8s rewrites the outputs; read
the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import load_job, parse_job
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.objects import ClusterDefaults
from flotilla.k8s.plan import Plan, plan_job
from flotilla.k8s.serving import to_serve
from tests.unit.k8s.entropy import CountingEntropy, SeededEntropy

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "k8s"
CASES = sorted(p.stem for p in (DATA / "input").glob("*.yaml"))


def _plan(case: str) -> Plan:
    given = yaml.safe_load((DATA / "input" / f"{case}.yaml").read_text())
    # As the operator reads it from the cluster: paths as written, not resolved for this machine.
    written = yaml.safe_load((ROOT / given["job"]).read_text())
    document = parse_job(written, source=given["job"]).to_dict()
    document["metadata"] |= {"namespace": given["namespace"], "uid": "uid-1"}
    document["spec"] |= given.get("spec", {})
    job = parse_job(document, source=case)
    # A case with `succeeded: {model}` plans the job after success, its model registered.
    succeeded = given.get("succeeded")
    return plan_job(
        job,
        [NodeInfo.from_api(node) for node in given["nodes"]],
        existing_tokens=given["existingTokens"],
        entropy=CountingEntropy(),
        finished=succeeded is not None,
        served=to_serve(job, succeeded["model"], {}) if succeeded else None,
    )


def _objects(plan: Plan) -> list[dict[str, Any]]:
    return [*plan.aggregator, *plan.clients.values(), *plan.serving]


@pytest.mark.parametrize("case", CASES)
def test_desired_objects_match_the_golden_file(case: str) -> None:
    objects = _objects(_plan(case))
    expected_path = DATA / "output" / f"{case}.yaml"
    if os.environ.get("FLOTILLA_REGEN_GOLDEN"):
        expected_path.write_text(yaml.safe_dump_all(objects, sort_keys=False, width=100))
    expected = list(yaml.safe_load_all(expected_path.read_text()))
    assert objects == expected


def test_the_plan_is_a_function_of_its_inputs_and_its_random_source() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    assert job.spec.security.tls.mode == "operator"  # a key and a CA drawn, and tokens
    nodes = [NodeInfo(name=f"edge-{i}", labels={"flotilla.dev/edge": "true"}) for i in (1, 2)]

    def drawn(seed: int) -> list[dict[str, Any]]:
        return _objects(plan_job(job, nodes, entropy=SeededEntropy(seed), existing_tokens={}))

    assert drawn(7) == drawn(7)
    assert drawn(7) != drawn(8)


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


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pod an object makes: a Pod's spec, a workload's template."""
    specs = []
    for obj in objects:
        if obj["kind"] == "Pod":
            specs.append(obj["spec"])
        elif "template" in obj.get("spec", {}):
            specs.append(obj["spec"]["template"]["spec"])
    return specs


@pytest.mark.parametrize("case", CASES)
def test_every_pod_of_every_plan_is_hardened(case: str) -> None:
    plan = _plan(case)
    pods = _pod_specs(_objects(plan))
    # The aggregator's Deployment, the client Pods, and the served model's Deployment.
    assert len(pods) == 1 + len(plan.clients) + (1 if plan.serving else 0)
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["privileged"] is False
        assert pod["securityContext"]["runAsUser"] != 0


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
    assert kinds == [
        "ConfigMap",
        "Secret",
        "Secret",
        "Service",
        "PersistentVolumeClaim",
        "Deployment",
    ]
    assert plan.aggregator[1]["stringData"]["token-site-a"] == "kept-token-of-site-a-0123456789"


def test_a_site_without_data_is_a_problem_not_a_crash() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"data": None})})
    node = NodeInfo(name="edge-1", labels={"flotilla.dev/edge": "true"})

    plan = plan_job(job, [node], entropy=CountingEntropy(), existing_tokens={})

    assert plan.clients == {}
    assert plan.unplaceable["edge-1"].startswith("node edge-1: ")
    assert "is not listed (sites: none) and spec.data is not set" in plan.unplaceable["edge-1"]


def test_a_live_cvat_site_gets_its_credentials_secret_and_no_host_path() -> None:
    pod = _plan("live-cvat").clients["site-a"]["spec"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cvat-credentials"]["secret"] == {"secretName": "cvat-site-a"}
    assert not any("hostPath" in v for v in pod["volumes"])
    container = pod["containers"][0]
    assert not any(arg.startswith("--data") for arg in container["args"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/secrets/flotilla/cvat"]["readOnly"] is True


def test_the_aggregator_serves_tls_and_each_client_trusts_only_the_ca() -> None:
    plan = _plan("three-of-five-nodes")
    secrets = {o["metadata"]["name"]: o for o in plan.aggregator if o["kind"] == "Secret"}
    assert secrets["inspection-tls"]["stringData"] == {
        "tls.crt": "CERTIFICATE",
        "tls.key": "PRIVATE KEY",
        "ca.crt": "CA CERTIFICATE",
    }
    aggregator = plan.aggregator[-1]["spec"]["template"]["spec"]
    args = aggregator["containers"][0]["args"]
    assert "--tls-cert=/etc/flotilla/tls/tls.crt" in args
    assert "--tls-key=/etc/flotilla/tls/tls.key" in args
    assert aggregator["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    for site, pod in plan.clients.items():
        spec = pod["spec"]
        tls = next(v for v in spec["volumes"] if v["name"] == "tls")["secret"]
        assert tls == {
            "secretName": "inspection-tls",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        container = spec["containers"][0]
        assert "--aggregator=https://inspection-aggregator.factory.svc:8080" in container["args"]
        assert "--ca-file=/etc/flotilla/tls/ca.crt" in container["args"]
        assert {"name": "FLOTILLA_SITE", "value": site} in container["env"]


def test_tls_disabled_is_plain_http_with_no_tls_objects() -> None:
    plan = _plan("three-of-five-nodes")
    job = load_job(ROOT / "examples" / "federatedjob.yaml").to_dict()
    job["spec"]["security"] = {"tls": {"mode": "disabled"}}
    job["metadata"]["namespace"] = "factory"
    plain = plan_job(
        parse_job(job, source="test"),
        [NodeInfo(name="edge-1", labels={"flotilla.dev/edge": "true"})],
        entropy=CountingEntropy(),
        existing_tokens={},
    )

    assert [o["metadata"]["name"] for o in plain.aggregator if o["kind"] == "Secret"] == [
        "digits-tokens"
    ]
    container = plain.clients["edge-1"]["spec"]["containers"][0]
    assert "--aggregator=http://digits-aggregator.factory.svc:8080" in container["args"]
    assert not any(a.startswith("--ca-file") for a in container["args"])
    assert plan.ca == "CA CERTIFICATE" and plain.ca is None


def test_cert_manager_writes_the_secret_and_the_policy_fences_the_aggregator() -> None:
    plan = _plan("cert-manager-network-policy")
    kinds = {o["kind"]: o for o in plan.aggregator}
    assert [o["metadata"]["name"] for o in plan.aggregator if o["kind"] == "Secret"] == [
        "digits-tokens"
    ]  # no keys made by the operator
    certificate = kinds["Certificate"]["spec"]
    assert certificate["secretName"] == "digits-tls"
    assert certificate["issuerRef"] == {
        "name": "flotilla-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert certificate["dnsNames"] == [
        "digits-aggregator",
        "digits-aggregator.ml",
        "digits-aggregator.ml.svc",
        "digits-aggregator.ml.svc.cluster.local",
    ]
    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        "flotilla.dev/job": "digits",
        "flotilla.dev/role": "aggregator",
    }
    api, metrics = policy["ingress"]
    assert api["ports"] == [{"protocol": "TCP", "port": 8080}]
    peers = api["from"]
    assert {
        "podSelector": {
            "matchLabels": {"flotilla.dev/job": "digits", "flotilla.dev/role": "client"}
        }
    } in peers
    assert {
        "namespaceSelector": {},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/part-of": "flotilla",
                "app.kubernetes.io/component": "operator",
            }
        },
    } in peers
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert prometheus in peers and metrics["from"] == [prometheus]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}]


def _template(plan: Plan) -> dict[str, Any]:
    deployment = plan.aggregator[-1]
    assert deployment["kind"] == "Deployment"
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_suspending_or_client_settings_leave_the_aggregator_pod_as_it_is() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    node = NodeInfo(name="edge-1", labels={"flotilla.dev/edge": "true"})
    tokens = {"edge-1": "kept-token-0123456789abcdef"}
    runtime = job.spec.runtime.model_copy(
        update={"client": job.spec.runtime.client.model_copy(update={"image": "other:1"})}
    )
    changes = [
        {"suspend": True},
        {"ttlSecondsAfterFinished": 5, "backoffLimit": 9},
        {"runtime": runtime},
    ]
    before = _template(plan_job(job, [node], existing_tokens=tokens, entropy=CountingEntropy()))

    for change in changes:
        spec = job.spec.model_copy(update={_snake(k): v for k, v in change.items()})
        changed = job.model_copy(update={"spec": spec})
        plan = plan_job(changed, [node], existing_tokens=tokens, entropy=CountingEntropy())
        assert _template(plan) == before, change


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def test_the_aggregator_prefers_nodes_the_clients_selector_does_not_match() -> None:
    affinity = _template(_plan("three-of-five-nodes"))["spec"]["affinity"]

    assert affinity == {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {"key": "flotilla.dev/edge", "operator": "NotIn", "values": ["true"]}
                        ]
                    },
                }
            ]
        }
    }


def test_a_placement_given_for_the_aggregator_replaces_the_preference() -> None:
    pod = _template(_plan("restricted-namespace"))["spec"]

    assert pod["nodeSelector"] == {"node-role.kubernetes.io/core": "true"}
    assert "affinity" not in pod
    assert {"key": "dedicated", "operator": "Equal", "value": "core", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )


def test_each_site_reads_its_export_from_its_own_claim_without_host_path() -> None:
    plan = _plan("restricted-namespace")

    for site, pod in plan.clients.items():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {
            "claimName": f"digits-data-{site}",
            "readOnly": True,
        }
        assert not any("hostPath" in v for v in pod["spec"]["volumes"])
        assert "--data=/data/digits" in pod["spec"]["containers"][0]["args"]


def test_nodes_joining_or_leaving_and_new_tokens_leave_the_aggregator_pod_as_it_is() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    edge = {"flotilla.dev/edge": "true"}
    one = [NodeInfo(name="edge-1", labels=edge)]
    two = [*one, NodeInfo(name="edge-2", labels=edge)]

    def template(nodes: list[NodeInfo], tokens: dict[str, str]) -> str:
        plan = plan_job(job, nodes, existing_tokens=tokens, entropy=CountingEntropy())
        return yaml.safe_dump(_template(plan))  # byte for byte

    before = template(one, {"edge-1": "a" * 32})
    assert template(two, {"edge-1": "a" * 32}) == before  # labelled
    assert template([], {}) == before  # every node unlabelled
    assert template(one, {"edge-1": "b" * 32}) == before  # rotated


def test_the_aggregator_state_is_a_claim_by_default_sized_from_the_model() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    model = job.spec.model.model_copy(update={"name": None, "entrypoint": "mine.models:build"})
    own = job.model_copy(update={"spec": job.spec.model_copy(update={"model": model})})

    def claim_size(j: Any) -> str:
        plan = plan_job(j, [], entropy=CountingEntropy(), existing_tokens={})
        claims = [o for o in plan.aggregator if o["kind"] == "PersistentVolumeClaim"]
        size: str = claims[0]["spec"]["resources"]["requests"]["storage"]
        return size

    assert claim_size(job) == "1Gi"
    assert claim_size(own) == "20Gi"


def test_ephemeral_state_is_an_empty_dir_and_no_claim() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    runtime = job.spec.runtime
    storage = runtime.aggregator.storage.model_copy(update={"ephemeral": True})
    aggregator = runtime.aggregator.model_copy(update={"storage": storage})
    spec = job.spec.model_copy(
        update={"runtime": runtime.model_copy(update={"aggregator": aggregator})}
    )

    plan = plan_job(
        job.model_copy(update={"spec": spec}), [], entropy=CountingEntropy(), existing_tokens={}
    )

    assert "PersistentVolumeClaim" not in [o["kind"] for o in plan.aggregator]
    volumes = {v["name"]: v for v in _template(plan)["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}


def test_the_cluster_default_tracking_uri_reaches_the_aggregator_below_the_job_own() -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    defaults = ClusterDefaults(tracking_uri="http://flotilla-mlflow.flotilla-system.svc:5000")

    env = _template(
        plan_job(job, [], entropy=CountingEntropy(), existing_tokens={}, defaults=defaults)
    )["spec"]["containers"][0]["env"]
    bare = _template(plan_job(job, [], entropy=CountingEntropy(), existing_tokens={}))["spec"][
        "containers"
    ][0]["env"]

    assert {"name": "FLOTILLA_DEFAULT_TRACKING_URI", "value": defaults.tracking_uri} in env
    assert not any(e["name"] == "FLOTILLA_DEFAULT_TRACKING_URI" for e in bare)
