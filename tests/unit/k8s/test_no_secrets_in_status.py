"""The operator's status and events never carry a site's token, whatever it reconciles.

The tokens live in one Secret (the plan makes it; that is their place). Everything
else the reconcile emits is searched for them: the status it computes, the events it
records, and every object it creates or patches apart from that Secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flotilla.api import load_job
from flotilla.k8s.aggregator_objects import TOKENS_KEY
from flotilla.k8s.api import Ref
from flotilla.k8s.decide import Seen
from flotilla.k8s.reconcile import Context, JobMemory, reconcile

ROOT = Path(__file__).resolve().parents[3]
TOKENS = {"site-a": "tok-a-Qw83LmZp01xYv", "site-b": "tok-b-Rt62NnBq44cWs"}


class FakeApi:
    """The existing tokens Secret, and a record of what was written, by kind."""

    def __init__(self, secret: dict[str, Any]) -> None:
        self.secret = secret
        self.written: list[tuple[str, str, Mapping[str, Any]]] = []

    async def get(self, target: Ref) -> dict[str, Any] | None:
        return self.secret if target.kind == "Secret" else None

    async def create(
        self, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        self.written.append(("create", body["kind"], body))
        return dict(body)

    async def apply(self, body: Mapping[str, Any], *, namespace: str | None = None) -> bool:
        self.written.append(("apply", body["kind"], body))
        return body["kind"] != "Secret"  # the Secret was there

    async def delete(self, target: Ref) -> bool:
        self.written.append(("delete", target.kind, {}))
        return True


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def info(self, reason: str, message: str) -> None:
        self.seen.append(f"{reason}: {message}")

    def warn(self, reason: str, message: str) -> None:
        self.seen.append(f"{reason}: {message}")


def _node(name: str, site: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"flotilla.dev/edge": "true", "flotilla.dev/site": site},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_reconcile_outputs_hold_no_token(tmp_path: Path) -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml").to_dict()
    job["metadata"] |= {"namespace": "ml", "uid": "uid-1", "generation": 2}
    secret = {
        "metadata": {"name": f"{job['metadata']['name']}-tokens"},
        "data": {TOKENS_KEY: base64.b64encode(json.dumps(TOKENS).encode()).decode()},
    }
    api = FakeApi(secret)
    seen = Seen(nodes=[_node("edge-1", "site-a"), _node("edge-2", "site-b")])
    events = Events()
    # What the aggregator's /v1/status says, a site's refusal included.
    aggregator = {
        "phase": "training",
        "round": 2,
        "rounds": 10,
        "completedRounds": 1,
        "message": "round 2: training on 2 clients",
        "clients": {"known": 2, "present": 2, "sampled": 2, "answered": 0},
        "siteErrors": {"site-b": "CVAT at https://cvat.example refused user 'alice'"},
        "tracking": {"enabled": True, "state": "ok", "runId": "r1"},
    }

    async def poll(*_: Any) -> Mapping[str, Any]:
        return aggregator

    ctx = Context(api=api, recorder=events, poll=poll)  # type: ignore[arg-type]
    outcome = asyncio.run(reconcile(ctx, job, seen=seen, full=True, memory=JobMemory()))

    assert api.written and events.seen  # it did create objects and say so
    emitted = {
        "status": json.dumps(outcome.status),
        "annotations": json.dumps(outcome.annotations),
        "events": "\n".join(events.seen),
        "objects": yaml.safe_dump(
            [dict(body) for _, kind, body in api.written if kind != "Secret"]
        ),
    }
    for where, text in emitted.items():
        for site, token in TOKENS.items():
            assert token not in text, f"{site}'s token appears in the {where}"
    # Client pods reference their token through the Secret, never by value.
    pods = [body for _, _, body in api.written if body.get("kind") == "Pod"]
    assert pods
    for pod in pods:
        env = pod["spec"]["containers"][0].get("env", [])
        assert any("secretKeyRef" in (e.get("valueFrom") or {}) for e in env), env
