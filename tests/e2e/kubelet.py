"""A stand-in kubelet for a control plane that has none: it watches pods and does the two
things a kubelet does that the flows under test depend on.

- A pod bound to a node starts: phase Running, its containers running and ready.
- A pod being deleted (deletionTimestamp set, its grace period running) is finished off,
  as a kubelet confirms its containers stopped by deleting it with no grace period (and
  that pod only: its UID is a precondition). Without
  that, every deleted pod of a bound node would stay Terminating forever.

Only pods labelled `app.kubernetes.io/part-of=flotilla` are touched. A test that needs a pod
in another state (crash-looping, failed) patches its status itself after the start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from typing import Any

from tests.e2e.kube import KubectlFailed, kubectl, merge_patch, now

SELECTOR = "app.kubernetes.io/part-of=flotilla"


class FakeKubelet:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():  # the server ends a watch now and then: watch again
            self._process = subprocess.Popen(
                ["kubectl", "get", "pods", "-A", "-l", SELECTOR, "--watch", "-o", "json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert self._process.stdout is not None
            for pod in _json_stream(self._process.stdout):
                # A pod deleted meanwhile leaves nothing to do: its patch fails, nothing else.
                with contextlib.suppress(KubectlFailed):
                    self._handle(pod)
            self._process.wait()

    def _handle(self, pod: dict[str, Any]) -> None:
        metadata, spec = pod["metadata"], pod.get("spec") or {}
        name, namespace = metadata["name"], metadata["namespace"]
        # Events may be stale: a pod deleted and made again under the same name (a site's
        # client pod) must not be deleted or started for its predecessor, so the UID is a
        # precondition of both (a mismatch is a 409 and nothing changes).
        uid = metadata["uid"]
        if metadata.get("deletionTimestamp"):
            options = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            }
            kubectl(
                "delete", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}", "-f", "-",
                stdin=json.dumps(options), check=False,
            )  # fmt: skip
            return
        status = pod.get("status") or {}
        if spec.get("nodeName") and status.get("phase") == "Pending":
            running = {"metadata": {"uid": uid}, "status": _running(spec)}
            merge_patch("pod", name, running, namespace=namespace, status=True)


def _running(spec: dict[str, Any]) -> dict[str, Any]:
    started = now()
    containers = [
        {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": started}},
        }
        for container in spec.get("containers") or []
    ]
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": started}
        for kind in ("Initialized", "PodScheduled", "ContainersReady", "Ready")
    ]
    return {
        "phase": "Running",
        "startTime": started,
        "conditions": conditions,
        "containerStatuses": containers,
    }


def _json_stream(lines: Any) -> Any:
    """The objects of kubectl's watch output: JSON documents one after another."""
    decoder = json.JSONDecoder()
    buffer = ""
    for line in lines:
        buffer += line
        while buffer.strip():
            try:
                document, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break  # not a whole document yet
            buffer = buffer.lstrip()[end:]
            yield document
