"""A client Pod per placement: pinned to its node, its site's data mounted read-only from
the node, its own token and nothing else, overrides from the node's hardware profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from flotilla.api import FederatedJob
from flotilla.api.cluster import Profile
from flotilla.api.data import CVAT_SECRET_MOUNT, SITE_PLACEHOLDER
from flotilla.k8s import objects as o
from flotilla.k8s.aggregator_objects import token_key
from flotilla.k8s.nodes import Placement
from flotilla.k8s.security_objects import CA_KEY, TLS_DIR, ca_volume

DATA_DIR = "/data"


def aggregator_url(job: FederatedJob) -> str:
    """https unless the spec disables TLS; the host is one of the certificate's names."""
    scheme = "https" if job.spec.security.tls.enabled else "http"
    return f"{scheme}://{o.aggregator_name(job)}.{o.namespace(job)}.svc:{o.PORT}"


def client_pod(job: FederatedJob, placement: Placement) -> dict[str, Any]:
    """Raises SpecError when the site has no data source."""
    profile = _profile(job, placement)
    data = _site_data(job, placement.site)
    if job.spec.security.tls.enabled:
        volume, mount = ca_volume(job)
        trust = _SiteData(volumes=[volume], mounts=[mount], args=[f"--ca-file={TLS_DIR}/{CA_KEY}"])
        data = _SiteData(
            volumes=data.volumes + trust.volumes,
            mounts=data.mounts + trust.mounts,
            args=data.args + trust.args,
        )
    tmp_volume, tmp_mount = o.scratch()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": o.metadata(
            job,
            o.client_pod_name(job, placement.site),
            "client",
            **{o.NODE_LABEL: placement.node, o.SITE_LABEL: placement.site},
        ),
        "spec": {
            # The scheduler still checks taints and resources; matchFields pins the node
            # by name as DaemonSets do, where a hostname label might differ.
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {
                                        "key": "metadata.name",
                                        "operator": "In",
                                        "values": [placement.node],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "restartPolicy": "OnFailure",
            "automountServiceAccountToken": False,
            "securityContext": o.pod_security(),
            "tolerations": [t.to_dict() for t in job.spec.runtime.tolerations],
            "containers": [_container(job, placement, profile, data, tmp_mount)],
            "volumes": [*data.volumes, tmp_volume],
        },
    }


def _profile(job: FederatedJob, placement: Placement) -> Profile | None:
    profiles = job.spec.runtime.profiles
    return {"gpu": profiles.gpu, "arm": profiles.arm}.get(placement.profile)


@dataclass(frozen=True)
class _SiteData:
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    args: list[str]


def _site_data(job: FederatedJob, site: str) -> _SiteData:
    """An export: mounted read-only from its PersistentVolumeClaim, else from the node. A
    live CVAT: its credentials Secret mounted where the client looks, the task cache in the
    pod's /tmp (working dir)."""
    source = job.site_data(site)
    if source.cvat_export is not None and source.cvat_export.claim_name is not None:
        claim = source.cvat_export.claim_name.replace(SITE_PLACEHOLDER, site)
        volume = {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return _SiteData(
            volumes=[{"name": "data", **volume}],
            mounts=[{"name": "data", "mountPath": DATA_DIR, "readOnly": True}],
            args=[f"--data={PurePosixPath(DATA_DIR, source.cvat_export.path)}"],
        )
    if source.cvat_export is not None:
        path = PurePosixPath(source.cvat_export.path)
        mount = f"{DATA_DIR}/{path.name}"
        kind = "File" if path.suffix == ".zip" else "Directory"
        return _SiteData(
            volumes=[{"name": "data", "hostPath": {"path": str(path), "type": kind}}],
            mounts=[{"name": "data", "mountPath": mount, "readOnly": True}],
            args=[f"--data={mount}"],
        )
    assert source.cvat is not None  # the model holds exactly one of the two
    secret = source.cvat.credentials.secret_name
    if secret is None:
        return _SiteData(volumes=[], mounts=[], args=[])
    return _SiteData(
        volumes=[{"name": "cvat-credentials", "secret": {"secretName": secret}}],
        mounts=[{"name": "cvat-credentials", "mountPath": CVAT_SECRET_MOUNT, "readOnly": True}],
        args=[],
    )


def _container(
    job: FederatedJob,
    placement: Placement,
    profile: Profile | None,
    data: _SiteData,
    tmp_mount: dict[str, Any],
) -> dict[str, Any]:
    runtime = job.spec.runtime
    resources = (profile.resources if profile and profile.resources else None) or (
        runtime.client.resources
    )
    return {
        "name": "client",
        "image": (profile.image if profile and profile.image else None) or runtime.client.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "args": [
            "client",
            f"--aggregator={aggregator_url(job)}",
            *data.args,
            f"--device={'cuda' if placement.profile == 'gpu' else 'cpu'}",
            f"--metrics-port={o.CLIENT_METRICS_PORT}",
            # The operator ends client pods when the job ends; until then a client waits for
            # an aggregator that is starting, replaced or rescheduled, and never crash-loops.
            "--give-up-after=0",
            *_training_args(profile),
        ],
        "env": [
            {
                "name": "FLOTILLA_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": o.tokens_secret_name(job),
                        "key": token_key(placement.site),
                    }
                },
            },
            {"name": "FLOTILLA_SITE", "value": placement.site},
            {"name": "HOME", "value": "/tmp"},
        ],
        "ports": [{"name": "metrics", "containerPort": o.CLIENT_METRICS_PORT}],
        "resources": o.resources(resources.requests, resources.limits),
        "securityContext": o.container_security(),
        "volumeMounts": [*data.mounts, tmp_mount],
        "workingDir": "/tmp",  # a live CVAT's task cache goes under it, on the writable volume
    }


def _training_args(profile: Profile | None) -> list[str]:
    if profile is None:
        return []
    overrides = profile.training
    args = []
    if overrides.batch_size is not None:
        args.append(f"--batch-size={overrides.batch_size}")
    if overrides.local_epochs is not None:
        args.append(f"--local-epochs={overrides.local_epochs}")
    if overrides.max_seconds is not None:
        args.append(f"--max-seconds={overrides.max_seconds:g}")
    return args
