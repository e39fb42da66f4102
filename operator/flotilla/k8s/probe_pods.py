"""A data probe's pod: the site's client pod cut down to `flotilla data digest`. Pure.

The same node, image, data volume and CVAT credentials as the site's client; the job (with
only this site's entry of spec.sites) handed over in an annotation, mounted as a file by
the downward API, so a probe needs no object of its own. It writes the digest to its
termination message (`/dev/termination-log`) and exits.
"""

from __future__ import annotations

from typing import Any

import yaml

from flotilla.api import FederatedJob
from flotilla.api.schedule import FederatedSchedule
from flotilla.k8s import objects as o
from flotilla.k8s.client_pods import client_pod
from flotilla.k8s.nodes import Placement
from flotilla.k8s.schedule_views import CYCLE_LABEL, PROBE_ROLE, SCHEDULE_LABEL

JOB_ANNOTATION = "flotilla.dev/probe-job"
JOB_DIR = "/etc/flotilla/probe"
TIMEOUT_SECONDS = 600
TERMINATION_LOG = "/dev/termination-log"  # the container's default terminationMessagePath


def probe_pod(
    schedule: FederatedSchedule, template: FederatedJob, placement: Placement, *, cycle: str
) -> dict[str, Any]:
    """The site's client pod, cut down to `flotilla data digest`. Raises SpecError when the
    site has no data source."""
    # Without TLS the client pod mounts no CA: a probe talks to no aggregator.
    plain = _without_tls(template)
    client = client_pod(plain, placement)
    spec, container = client["spec"], client["spec"]["containers"][0]
    tmp_volume, tmp_mount = o.scratch()
    job_volume = {
        "name": "probe-job",
        "downwardAPI": {
            "items": [
                {
                    "path": "job.yaml",
                    "fieldRef": {"fieldPath": f"metadata.annotations['{JOB_ANNOTATION}']"},
                }
            ]
        },
    }
    data_args = [arg for arg in container["args"] if arg.startswith("--data=")]
    metadata = _metadata(schedule, placement, cycle)
    metadata["annotations"] = {JOB_ANNOTATION: _site_job_yaml(plain, placement.site)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "affinity": spec["affinity"],
            "restartPolicy": "Never",
            "activeDeadlineSeconds": TIMEOUT_SECONDS,
            "automountServiceAccountToken": False,
            "securityContext": spec["securityContext"],
            "tolerations": spec["tolerations"],
            "containers": [
                {
                    "name": "probe",
                    "image": container["image"],
                    "imagePullPolicy": container["imagePullPolicy"],
                    "args": [
                        *("data", "digest", f"{JOB_DIR}/job.yaml", "--site", placement.site),
                        *data_args,
                        f"--termination-log={TERMINATION_LOG}",
                    ],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": o.resources({"cpu": "50m", "memory": "128Mi"}, {"memory": "1Gi"}),
                    "securityContext": container["securityContext"],
                    "terminationMessagePolicy": "File",
                    "volumeMounts": [
                        *(m for m in container["volumeMounts"] if m["name"] != tmp_mount["name"]),
                        {"name": "probe-job", "mountPath": JOB_DIR, "readOnly": True},
                        tmp_mount,
                    ],
                    "workingDir": "/tmp",
                }
            ],
            "volumes": [
                *(v for v in spec["volumes"] if v["name"] != tmp_volume["name"]),
                job_volume,
                tmp_volume,
            ],
        },
    }


def probe_name(schedule: str, site: str, cycle: str) -> str:
    return f"{schedule}-probe-{site}-{cycle}"


def _metadata(schedule: FederatedSchedule, placement: Placement, cycle: str) -> dict[str, Any]:
    name = schedule.metadata.name
    metadata: dict[str, Any] = {
        "name": probe_name(name, placement.site, cycle),
        "labels": {
            "app.kubernetes.io/name": o.APP,
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": PROBE_ROLE,
            "app.kubernetes.io/managed-by": "flotilla-operator",
            "app.kubernetes.io/part-of": o.APP,
            SCHEDULE_LABEL: name,
            o.ROLE_LABEL: PROBE_ROLE,
            o.SITE_LABEL: placement.site,
            o.NODE_LABEL: placement.node,
            CYCLE_LABEL: cycle,
        },
        "ownerReferences": [schedule_owner(schedule)],
    }
    if schedule.metadata.namespace:
        metadata["namespace"] = schedule.metadata.namespace
    return metadata


def schedule_owner(schedule: FederatedSchedule) -> dict[str, Any]:
    """Deleting the schedule garbage-collects its jobs and probes."""
    return {
        "apiVersion": schedule.api_version,
        "kind": schedule.kind,
        "name": schedule.metadata.name,
        "uid": schedule.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _without_tls(job: FederatedJob) -> FederatedJob:
    tls = job.spec.security.tls.model_copy(update={"mode": "disabled"})
    security = job.spec.security.model_copy(update={"tls": tls})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"security": security})})


def _site_job_yaml(job: FederatedJob, site: str) -> str:
    """The job as the probe reads it: only this site's entry of spec.sites (the others' data
    is none of its business, and the annotation stays small)."""
    document = job.to_dict()
    spec = document["spec"]
    spec["sites"] = [entry for entry in spec.get("sites") or [] if entry.get("name") == site]
    document["metadata"] = {"name": job.metadata.name}
    return yaml.safe_dump(document, sort_keys=False)
