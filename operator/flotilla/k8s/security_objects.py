"""A job's security objects: the TLS Secret (or the cert-manager Certificate that writes it)
and the aggregator's NetworkPolicy. Pure functions of the job; key material comes in."""

from __future__ import annotations

from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.certs import TlsMaterial, service_dns_names
from flotilla.k8s import objects as o

CERT_KEY, PRIVATE_KEY, CA_KEY = "tls.crt", "tls.key", "ca.crt"
TLS_DIR = "/etc/flotilla/tls"


def dns_names(job: FederatedJob) -> list[str]:
    """Every name the aggregator's Service answers to: its certificate holds them all."""
    return service_dns_names(o.aggregator_name(job), o.namespace(job))


def tls_secret(job: FederatedJob, material: TlsMaterial) -> dict[str, Any]:
    """Made once (reconcile keeps what exists): a new CA would lock out running clients."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": o.metadata(job, o.tls_secret_name(job), "aggregator"),
        "stringData": {CERT_KEY: material.cert, PRIVATE_KEY: material.key, CA_KEY: material.ca},
    }


def certificate(job: FederatedJob) -> dict[str, Any]:
    """cert-manager writes tls.crt, tls.key and ca.crt into the same Secret name."""
    issuer = job.spec.security.tls.issuer_ref
    assert issuer is not None  # the spec model requires it with mode certManager
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": o.metadata(job, o.aggregator_name(job), "aggregator"),
        "spec": {
            "secretName": o.tls_secret_name(job),
            "commonName": o.aggregator_name(job),
            "dnsNames": dns_names(job),
            "usages": ["server auth", "digital signature"],
            "privateKey": {"algorithm": "ECDSA", "size": 256},
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": "cert-manager.io"},
        },
    }


def network_policy(job: FederatedJob) -> dict[str, Any]:
    """The aggregator's API port open to the job's clients, the operator (it polls
    /v1/status) and `allowFrom`; its metrics port to `allowFrom` only (Prometheus)."""
    policy = job.spec.security.network_policy
    extra = [peer.to_dict() for peer in policy.allow_from]
    api_peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": o.selector(job, "client")}}]
    if policy.allow_operator:
        operator = {"matchLabels": dict(o.OPERATOR_POD_LABELS)}
        api_peers.append({"namespaceSelector": {}, "podSelector": operator})
    rules: list[dict[str, Any]] = [
        {"from": api_peers + extra, "ports": [{"protocol": "TCP", "port": o.PORT}]}
    ]
    if extra:
        metrics = {"protocol": "TCP", "port": o.AGGREGATOR_METRICS_PORT}
        # Fresh copies: one object twice in a manifest would be YAML anchors.
        rules.append({"from": [peer.to_dict() for peer in policy.allow_from], "ports": [metrics]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": o.metadata(job, o.aggregator_name(job), "aggregator"),
        "spec": {
            "podSelector": {"matchLabels": o.selector(job, "aggregator")},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def ca_volume(job: FederatedJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """A client's view of the TLS Secret: ca.crt and nothing else."""
    volume = {
        "name": "tls",
        "secret": {
            "secretName": o.tls_secret_name(job),
            "items": [{"key": CA_KEY, "path": CA_KEY}],
        },
    }
    return volume, {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}


def serving_volume(job: FederatedJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """The aggregator's view: its certificate and key, readable by its group only."""
    volume = {
        "name": "tls",
        "secret": {
            "secretName": o.tls_secret_name(job),
            "items": [{"key": k, "path": k} for k in (CERT_KEY, PRIVATE_KEY)],
            "defaultMode": 0o440,
        },
    }
    return volume, {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}
