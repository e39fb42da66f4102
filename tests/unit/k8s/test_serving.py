"""The served model: which version, which objects, which condition; `flotilla serve`'s command."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import FederatedJob, SpecError, parse_job
from flotilla.api.tracking import DEFAULT_TRACKING_URI_ENV, TRACKING_URI_ENV
from flotilla.k8s import serving
from flotilla.k8s.aggregator_objects import deployment as aggregator_deployment
from flotilla.k8s.objects import HASH_ANNOTATION, ClusterDefaults
from flotilla.k8s.plan import plan_job
from flotilla.k8s.status import compute_status
from flotilla.k8s.views import Observation
from flotilla.tracking.serve import NoTrackingServer, serve_command
from tests.unit.k8s.entropy import CountingEntropy

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
OWN = {"name": "digits-cnn", "version": "3", "alias": "candidate"}


def _job(name: str = "digits", namespace: str = "ml", **spec: Any) -> FederatedJob:
    document = copy.deepcopy(EXAMPLE)
    document["metadata"] |= {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    document["spec"] |= spec
    return parse_job(document, source=name)


def _body(job: FederatedJob, model: dict[str, str] | None) -> dict[str, Any]:
    return job.to_dict() | {"status": {"model": model} if model else {}}


def test_serving_is_on_by_default_and_off_without_tracking_or_when_disabled() -> None:
    assert serving.wanted(_job())
    assert not serving.wanted(_job(serving={"enabled": False}))
    assert not serving.wanted(_job(tracking={"enabled": False}))


def test_asking_to_serve_with_tracking_off_names_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        _job(serving={"enabled": True}, tracking={"enabled": False})
    assert "spec.serving.enabled" in str(caught.value)
    assert "spec.tracking.enabled" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"), [("replicas", -1), ("replicas", 101), ("alias", "1-bad"), ("port", 1)]
)
def test_bad_serving_fields_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(SpecError) as caught:
        _job(serving={field: value})
    assert f"spec.serving.{field}" in str(caught.value)


def test_nothing_is_served_before_the_model_is_registered() -> None:
    assert serving.to_serve(_job(), None, {}) is None
    plan = plan_job(_job(), [], entropy=CountingEntropy(), existing_tokens={}, finished=True)
    assert plan.serving == []


def test_the_newest_version_under_the_same_model_and_alias_is_served() -> None:
    first, second = _job("digits"), _job("digits-2")
    newest = serving.newest_versions(
        [_body(first, OWN), _body(second, OWN | {"version": "12"}), _body(_job("x"), None)]
    )
    served = serving.to_serve(first, OWN, newest)
    assert served == serving.Served(name="digits-cnn", alias="candidate", version="12")
    assert served.uri == "models:/digits-cnn@candidate"  # numbers, not text: 12 > 3


@pytest.mark.parametrize(
    "other",
    [
        _job("elsewhere", namespace="other-team"),
        _job("other-alias", tracking={"registeredModel": "digits-cnn", "alias": "staging"}),
        _job("other-server", tracking={"trackingUri": "http://mlflow.b:5000"}),
    ],
)
def test_another_namespace_alias_or_server_is_another_model(other: FederatedJob) -> None:
    registered = OWN | {"version": "9", "alias": other.spec.tracking.alias}
    newest = serving.newest_versions([_body(other, registered)])
    assert len(newest) == 1
    assert serving.to_serve(_job(), OWN, newest) == serving.Served("digits-cnn", "candidate", "3")


def test_a_serving_alias_of_its_own_serves_what_it_points_to() -> None:
    served = serving.to_serve(_job(serving={"alias": "champion"}), OWN, {})
    assert served == serving.Served("digits-cnn", "champion", None)
    assert served is not None
    deployment = serving.objects(_job(), served)[1]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {}


def test_a_new_version_changes_only_the_pod_template_annotation() -> None:
    job = _job()
    old = serving.objects(job, serving.Served("digits-cnn", "candidate", "3"))
    new = serving.objects(job, serving.Served("digits-cnn", "candidate", "4"))
    assert old[0] == new[0]  # the Service
    template = new[1]["spec"]["template"]
    assert template["metadata"]["annotations"] == {serving.VERSION_ANNOTATION: "4"}
    old[1]["spec"]["template"]["metadata"]["annotations"][serving.VERSION_ANNOTATION] = "4"
    assert old == new
    assert new[1]["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0}


def test_the_serving_pod_finds_mlflow_as_the_aggregator_does() -> None:
    served = serving.Served("digits-cnn", "candidate", "3")
    defaults = ClusterDefaults(tracking_uri="http://flotilla-mlflow.flotilla-system.svc:5000")
    job = _job(runtime={"aggregator": {"envFromSecret": "mlflow"}})
    container = serving.objects(job, served, defaults)[1]["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert container["args"] == [
        "serve",
        "--model-uri=models:/digits-cnn@candidate",
        "--host=0.0.0.0",
        "--port=8080",
    ]
    assert {"name": DEFAULT_TRACKING_URI_ENV, "value": defaults.tracking_uri} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow"}}]  # as the aggregator
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}
    spec_uri = _job(tracking={"registeredModel": "digits-cnn", "trackingUri": "http://m:5000"})
    args = serving.objects(spec_uri, served)[1]["spec"]["template"]["spec"]["containers"][0]
    assert args["args"][-1] == "--tracking-uri=http://m:5000"


def test_serving_settings_never_restart_the_aggregator() -> None:
    before = aggregator_deployment(_job())
    after = aggregator_deployment(_job(serving={"replicas": 3, "enabled": False}))
    assert before["spec"]["template"] == after["spec"]["template"]
    assert before["spec"]["template"]["metadata"]["annotations"][HASH_ANNOTATION]


def _succeeded(job: FederatedJob, **observed: Any) -> dict[str, Any]:
    observation = Observation(
        desired_sites=[],
        pods=[],
        aggregator={"phase": "done", "completedRounds": 10, "message": "10 rounds"},
        **observed,
    )
    return compute_status(job, observation, previous={}, generation=1, now="2026-12-02T10:00:00Z")


def _serving_condition(status: dict[str, Any]) -> tuple[str, str, str]:
    found = next(c for c in status["conditions"] if c["type"] == "Serving")
    return found["status"], found["reason"], found["message"]


def _available(replicas: int, *, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


def test_the_serving_condition_tells_each_step() -> None:
    job, served = _job(), serving.Served("digits-cnn", "candidate", "3")
    waiting = _succeeded(job)
    assert _serving_condition(waiting)[:2] == ("False", "NoRegisteredModel")
    assert "servingEndpoint" not in waiting

    loading = _succeeded(job, model=OWN, served=served)
    assert _serving_condition(loading)[:2] == ("False", "ServingStarting")
    assert loading["model"] == OWN
    assert loading["servingEndpoint"] == "http://digits-model.ml.svc:8080/invocations"

    ready = _succeeded(job, model=OWN, served=served, serving_deployment=_available(1))
    status, reason, message = _serving_condition(ready)
    assert (status, reason) == ("True", "ModelServed")
    assert "models:/digits-cnn@candidate (version 3)" in message

    rolling = _available(1, generation=3, observed=2)
    assert _serving_condition(
        _succeeded(job, model=OWN, served=served, serving_deployment=rolling)
    )[:2] == ("True", "Rolling")

    refused = _succeeded(job, model=OWN, served=served, serving_refused="quota exceeded")
    assert _serving_condition(refused) == ("False", "ServingRefused", "quota exceeded")


def test_a_job_that_recorded_nothing_says_why_nothing_is_served() -> None:
    off = {"enabled": False, "reason": "no tracking URI: set spec.tracking.trackingUri"}
    observation = Observation(
        desired_sites=[], pods=[], aggregator={"phase": "done", "tracking": off}
    )
    status = compute_status(
        _job(), observation, previous={}, generation=1, now="2026-12-02T10:00:00Z"
    )
    assert _serving_condition(status) == (
        "False",
        "TrackingOff",
        "no model was registered: no tracking URI: set spec.tracking.trackingUri",
    )


def test_no_serving_condition_while_running_or_when_serving_is_off() -> None:
    running = compute_status(
        _job(),
        Observation(desired_sites=[], pods=[], aggregator={"phase": "training"}),
        previous={},
        generation=1,
        now="2026-12-02T10:00:00Z",
    )
    assert all(c["type"] != "Serving" for c in running["conditions"])
    off = _succeeded(_job(serving={"enabled": False}), model=OWN)
    assert all(c["type"] != "Serving" for c in off["conditions"])
    assert off["model"] == OWN  # registered all the same


def test_serve_resolves_the_tracking_server_flag_then_mlflow_then_the_cluster() -> None:
    def uri(flag: str | None, **environ: str) -> str:
        command = serve_command(
            "models:/m@a", host="0.0.0.0", port=8080, tracking_uri=flag, environ=environ
        )
        assert command.argv[1:] == [
            "models", "serve", "-m", "models:/m@a", "--env-manager", "local",
            "-h", "0.0.0.0", "-p", "8080",
        ]  # fmt: skip
        return command.env[TRACKING_URI_ENV]

    cluster = {DEFAULT_TRACKING_URI_ENV: "http://cluster"}
    assert uri("http://flag", **{TRACKING_URI_ENV: "http://secret"}, **cluster) == "http://flag"
    assert uri(None, **{TRACKING_URI_ENV: "http://secret"}, **cluster) == "http://secret"
    assert uri(None, **cluster) == "http://cluster"
    with pytest.raises(NoTrackingServer, match="--tracking-uri"):
        uri(None)
