"""`flotilla plan`: the operator's own plan for a job on given nodes, printed as YAML, with what
the operator generates at apply time shown as placeholders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import read_job
from flotilla.api.tracking import DEFAULT_TRACKING_URI_ENV
from flotilla.cli import main
from flotilla.k8s import aggregator_objects
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.objects import ClusterDefaults
from flotilla.k8s.preview import GENERATED, parse_node

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "federatedjob-restricted.yaml")
GPU_NODE = "gpu-1,flotilla.dev/edge=true,flotilla.dev/site=site-c,nvidia.com/gpu.present=true"


def test_a_node_is_its_name_and_labels() -> None:
    assert parse_node("edge-1,flotilla.dev/edge=true,kubernetes.io/arch=arm64") == NodeInfo(
        name="edge-1", labels={"flotilla.dev/edge": "true", "kubernetes.io/arch": "arm64"}
    )
    for bad, said in [("=x", "starts with the node's name"), ("edge-1,arch", "'arch' is not")]:
        with pytest.raises(ValueError, match=said):
            parse_node(bad)


def test_plan_prints_every_object_in_apply_order_with_no_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "plan", EXAMPLE, "--namespace", "ml",
            "--node", "edge-1,flotilla.dev/edge=true,flotilla.dev/site=site-a",
            "--node", GPU_NODE,
            "--node", "core-1,node-role.kubernetes.io/core=true",
        ]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "ConfigMap", "Secret", "Secret", "Service", "PersistentVolumeClaim", "Deployment",
        "Pod", "Pod",
    ]  # fmt: skip
    assert all(o["metadata"]["namespace"] == "ml" for o in objects)
    pods = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Pod"}
    gpu = pods["digits-client-site-c"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    claims = pods["digits-client-site-a"]["volumes"][0]["persistentVolumeClaim"]
    assert claims["claimName"] == "digits-data-site-a"  # the path as the cluster holds it
    tokens = objects[1]["stringData"]
    assert set(tokens) == {"token-site-a", "token-site-c", "tokens.json"}
    assert tokens["token-site-a"] == GENERATED
    assert objects[2]["stringData"]["tls.key"] == GENERATED


def test_plan_says_when_no_node_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", EXAMPLE, "--node", "core-1"]) == 0
    assert "no node matches spec.clients.nodeSelector" in capsys.readouterr().err


def test_plan_after_success_shows_the_served_model_and_no_clients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = "edge-1,flotilla.dev/edge=true,flotilla.dev/site=site-a"
    code = main(["plan", EXAMPLE, "--node", node, "--status-phase", "Succeeded"])

    out = capsys.readouterr().out
    assert code == 0
    assert "&id" not in out and "*id" not in out  # shared dicts printed in full, no aliases
    objects = list(yaml.safe_load_all(out))
    served = [
        (o["kind"], o["metadata"]["name"]) for o in objects if "-model" in o["metadata"]["name"]
    ]
    assert served == [("Service", "digits-model"), ("Deployment", "digits-model")]
    assert "Pod" not in [o["kind"] for o in objects]
    container = objects[-1]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["serve", "--model-uri=models:/digits-cnn@candidate"]

    main(["plan", EXAMPLE, "--node", node])
    running = list(yaml.safe_load_all(capsys.readouterr().out))
    assert not [o for o in running if "-model" in o["metadata"]["name"]]


CHART_MLFLOW = "http://flotilla-mlflow.flotilla-system.svc:5000"  # the chart's default server


def _default_tracking_uris(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each Deployment's FLOTILLA_DEFAULT_TRACKING_URI values, over all its containers."""
    return {
        o["metadata"]["name"]: [
            e["value"]
            for c in o["spec"]["template"]["spec"]["containers"]
            for e in c.get("env") or []
            if e["name"] == DEFAULT_TRACKING_URI_ENV
        ]
        for o in objects
        if o["kind"] == "Deployment"
    }


def test_plan_takes_the_operator_default_tracking_uri_as_the_chart_sets_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEFAULT_TRACKING_URI_ENV, raising=False)
    node = "edge-1,flotilla.dev/edge=true,flotilla.dev/site=site-a"
    succeeded = ["plan", EXAMPLE, "--node", node, "--status-phase", "Succeeded"]

    assert main([*succeeded, "--default-tracking-uri", CHART_MLFLOW]) == 0
    planned = list(yaml.safe_load_all(capsys.readouterr().out))
    # As a chart-installed operator makes them: the aggregator and the served model.
    assert _default_tracking_uris(planned) == {
        "digits-aggregator": [CHART_MLFLOW],
        "digits-model": [CHART_MLFLOW],
    }
    # The aggregator Deployment the operator itself builds with that default (its uid aside).
    job = read_job(Path(EXAMPLE))
    where = {"namespace": job.metadata.namespace or "default", "uid": GENERATED}
    placed = job.model_copy(update={"metadata": job.metadata.model_copy(update=where)})
    operators = aggregator_objects.deployment(placed, ClusterDefaults(tracking_uri=CHART_MLFLOW))
    (aggregator,) = [
        o
        for o in planned
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "digits-aggregator"
    ]
    assert aggregator == operators

    # Without the flag, the operator's own default: $FLOTILLA_DEFAULT_TRACKING_URI, else none.
    assert main(succeeded) == 0
    plain = _default_tracking_uris(list(yaml.safe_load_all(capsys.readouterr().out)))
    assert plain == {"digits-aggregator": [], "digits-model": []}
    monkeypatch.setenv(DEFAULT_TRACKING_URI_ENV, "http://mlflow.example:5000")
    assert main(succeeded) == 0
    from_env = _default_tracking_uris(list(yaml.safe_load_all(capsys.readouterr().out)))
    assert set(map(tuple, from_env.values())) == {("http://mlflow.example:5000",)}
