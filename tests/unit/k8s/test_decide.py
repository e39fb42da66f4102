"""Golden tests of a reconcile's decisions: job + what the operator observed + clock + a
seeded random source -> the actions, in order, and the status they settle to.

Inputs are tests/data/k8s/decide/input/*.yaml, outputs tests/data/k8s/decide/output/*.yaml.
After an intended change, FLOTILLA_REGEN_GOLDEN=1 pytest tests/unit/k8s rewrites the
outputs; read the diff before committing it. Each input says in a comment what it shows.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import FederatedJob, parse_job
from flotilla.k8s import objects as o
from flotilla.k8s.actions import Action, Apply, CreatePod, Delete, DeletePod, Note
from flotilla.k8s.aggregator_objects import ROTATE_ANNOTATION, TOKENS_KEY
from flotilla.k8s.decide import Decision, Seen, Snapshot, decide
from flotilla.k8s.security_objects import CA_KEY, CERT_KEY, PRIVATE_KEY
from flotilla.k8s.settle import Refused, settle
from tests.unit.k8s.entropy import SeededEntropy

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "k8s" / "decide"
CASES = sorted(p.stem for p in (DATA / "input").glob("*.yaml"))


def _job(given: dict[str, Any]) -> FederatedJob:
    written = yaml.safe_load((ROOT / given["job"]).read_text())
    document = parse_job(written, source=given["job"]).to_dict()
    document["metadata"] |= {"namespace": "ml", "uid": "uid-1"}
    document["spec"] |= given.get("spec", {})
    return parse_job(document, source="case")


def _node(name: str, site: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"flotilla.dev/edge": "true", o.SITE_LABEL: site}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _pod(job: FederatedJob, site: str, pod: dict[str, Any]) -> dict[str, Any]:
    """A client pod as the index holds it: `{node, phase, ready, deleting}`."""
    metadata: dict[str, Any] = {
        "name": f"{job.metadata.name}-client-{site}",
        "labels": {o.SITE_LABEL: site, o.NODE_LABEL: pod["node"]},
    }
    if pod.get("deleting"):
        metadata["deletionTimestamp"] = "2026-03-01T11:59:00Z"
    ready = "True" if pod.get("ready") else "False"
    return {
        "metadata": metadata,
        "status": {
            "phase": pod.get("phase", "Running"),
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def _tokens_secret(given: dict[str, Any]) -> dict[str, Any] | None:
    if "tokens" not in given:
        return None
    rotate = "true" if given.get("rotateOnResume") else "false"
    return {
        "metadata": {"annotations": {ROTATE_ANNOTATION: rotate}},
        "stringData": {TOKENS_KEY: json.dumps(given["tokens"])},
    }


def _snapshot(job: FederatedJob, given: dict[str, Any]) -> Snapshot:
    name = job.metadata.name
    deployment = given.get("deployment")
    seen = Seen(
        nodes=[_node(node, site) for node, site in (given.get("nodes") or {}).items()],
        pods=[_pod(job, site, pod) for site, pod in (given.get("pods") or {}).items()],
        aggregator_pods=given.get("aggregatorPods") or [],
        deployment={"metadata": {"name": f"{name}-aggregator"}} if deployment else None,
        serving_deployment=given.get("servingDeployment"),
    )
    tls = {CERT_KEY: "CERTIFICATE", PRIVATE_KEY: "KEY", CA_KEY: "CA"}
    return Snapshot(
        seen=seen,
        tokens_secret=_tokens_secret(given),
        tls_secret={"stringData": tls} if given.get("tls") else None,
        answer=given.get("answer"),
        previous=given.get("previous") or {},
        generation=1,
        replacements=given.get("replacements") or {},
        recorded_replacements=given.get("recordedReplacements"),
        placements=given.get("placements") or {},
        full=bool(given.get("full")),
    )


def _now(given: dict[str, Any]) -> datetime:
    return datetime.strptime(given["now"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _described(action: Action) -> Any:
    match action:
        case Apply(part, objects):
            return {
                f"apply {part}": [f"{obj['kind']} {obj['metadata']['name']}" for obj in objects]
            }
        case Delete(kind, name, why):
            return f"delete {kind} {name}: {why}"
        case DeletePod(name, _, node, why, replaced):
            counted = f" (replacement {replaced})" if replaced is not None else ""
            return f"delete Pod {name} on {node}: {why}{counted}"
        case CreatePod(site, node, pod):
            return f"create Pod {pod['metadata']['name']} on {node} for site {site}"
        case Note(reason, message):
            return f"event {reason}: {message}"


def _rendered(decision: Decision, status: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rotate": decision.rotate,
        "finished": decision.finished,
        "expired": decision.expired,
        "actions": [_described(action) for action in decision.actions],
    }
    for action in decision.actions:
        if isinstance(action, Apply) and action.part == "aggregator":
            secret = next(
                obj for obj in action.objects if obj["metadata"]["name"].endswith("-tokens")
            )
            out["tokens"] = json.loads(secret["stringData"][TOKENS_KEY])
    out["replacements"] = dict(decision.replacements)
    out["lostNodes"] = [dict(entry) for entry in decision.lost_nodes]
    out["status"] = status
    return out


def _decided(case: str) -> tuple[Decision, dict[str, Any]]:
    given = yaml.safe_load((DATA / "input" / f"{case}.yaml").read_text())
    job = _job(given)
    snapshot = _snapshot(job, given)
    now = _now(given)
    decision = decide(job, snapshot, now=now, entropy=SeededEntropy(given.get("seed", 1)))
    return decision, settle(job, decision, Refused(), snapshot, now=now).status


class _PlainDumper(yaml.SafeDumper):
    """Shared values (a nodeSelector) print twice, not as &id001 / *id001."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@pytest.mark.parametrize("case", CASES)
def test_decisions_match_the_golden_file(case: str) -> None:
    rendered = _rendered(*_decided(case))
    expected_path = DATA / "output" / f"{case}.yaml"
    if os.environ.get("FLOTILLA_REGEN_GOLDEN"):
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.dump(rendered, Dumper=_PlainDumper, sort_keys=False, width=100)
        expected_path.write_text(text)
    assert rendered == yaml.safe_load(expected_path.read_text())


@pytest.mark.parametrize("case", CASES)
def test_the_same_inputs_give_the_same_decision(case: str) -> None:
    assert _decided(case) == _decided(case)


def test_a_refused_pod_settles_into_the_status_and_a_warning() -> None:
    given = yaml.safe_load((DATA / "input" / "first-pass.yaml").read_text())
    job = _job(given)
    snapshot = _snapshot(job, given)
    decision = decide(job, snapshot, now=_now(given), entropy=SeededEntropy(1))
    refusal = 'pod digits-client-site-a: violates PodSecurity "baseline:latest": hostPath'
    refused = Refused(pods={"site-a": refusal})

    settled = settle(job, decision, refused, snapshot, now=_now(given))

    assert settled.warnings == (("PodRefused", f"client pod of site site-a: {refusal}"),)
    scheduled = next(c for c in settled.status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "PodsRefused" and "hostPath" in scheduled["message"]
