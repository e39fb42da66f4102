"""kubectl against the test cluster, as a user would type it, and a few things only a test does.

Every call goes through the real kubectl and the real API server: validation, admission,
RBAC, the controllers and the scheduler all have their say. Waiting is polling the API
(`eventually`) or kubectl's own watch (`kubectl wait`): a cluster has no other event to
await from outside.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlFailed(AssertionError):
    pass


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise KubectlFailed(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done


def get(kind: str, name: str | None = None, *, namespace: str | None = None) -> Any:
    """The object as JSON (a List when no name), or None when it does not exist."""
    scope = ["-n", namespace] if namespace else []
    done = kubectl("get", kind, *([name] if name else []), *scope, "-o", "json", check=False)
    if done.returncode != 0:
        if "NotFound" in done.stderr:
            return None
        raise KubectlFailed(f"kubectl get {kind} {name}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def items(kind: str, *, namespace: str | None = None, selector: str = "") -> list[dict[str, Any]]:
    scope = ["-n", namespace] if namespace else ["-A"]
    extra = ["-l", selector] if selector else []
    done = kubectl("get", kind, *scope, *extra, "-o", "json")
    found: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return found


def apply(document: Mapping[str, Any] | str, *, namespace: str | None = None) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    scope = ["-n", namespace] if namespace else []
    return kubectl("apply", *scope, "-f", "-", stdin=text).stdout


def merge_patch(
    kind: str,
    name: str,
    patch: Mapping[str, Any],
    *,
    namespace: str | None = None,
    status: bool = False,
) -> None:
    scope = ["-n", namespace] if namespace else []
    sub = ["--subresource=status"] if status else []
    kubectl("patch", kind, name, *scope, *sub, "--type=merge", "-p", json.dumps(patch))


# kopf takes a watch stream that sent nothing for 70 s (settings.watching.inactivity_timeout)
# for dead and reconnects: a flow waits out one such reconnect before it calls a change lost.
EVENTUALLY_SECONDS = 150


def eventually(
    check: Callable[[], T | None], *, what: str, timeout: float = EVENTUALLY_SECONDS
) -> T:
    """Poll the cluster until `check` returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def condition(job: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((job or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def load(path: Any) -> dict[str, Any]:
    with open(path) as file:
        document: dict[str, Any] = yaml.safe_load(file)
    return document


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fake_node(name: str, labels: Mapping[str, str], *, arch: str = "amd64", gpus: int = 0) -> None:
    """A Node with capacity and Ready, as a kubelet would register it; with no kubelet the
    not-ready taint admission puts on new nodes is lifted here (as ../shared/k8s/nodes.sh)."""
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        **labels,
    }
    apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": all_labels}})
    capacity = {"cpu": "4", "memory": "16Gi", "pods": "110"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "e2e fake node",
        "lastHeartbeatTime": now(),
        "lastTransitionTime": now(),
    }
    status = {"capacity": capacity, "allocatable": capacity, "conditions": [ready]}
    merge_patch("node", name, {"status": status}, status=True)
    kubectl("taint", "node", name, "node.kubernetes.io/not-ready:NoSchedule-", check=False)


def without_state(job: dict[str, Any]) -> dict[str, Any]:
    """The aggregator's checkpoints in an emptyDir: its pod schedules without a volume."""
    job["spec"].setdefault("runtime", {}).setdefault("aggregator", {})["storage"] = {
        "ephemeral": True
    }
    return job
