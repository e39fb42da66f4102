"""Render charts/flotilla with the real Helm engine, offline, and validate what it renders.

No registry ships a `helm` executable; helm-sdkpy embeds Helm v4's engine (Python >= 3.12)
but has no `template`. So this script runs its `Install` against KMock, an HTTP double of
the Kubernetes API, with HELM_DRIVER=memory (the release is kept in memory, nothing is
written anywhere): the release's manifest is exactly what `helm template` would print.
KMock needs two corrections for Helm: it reports Kubernetes 1.26 (the chart needs >= 1.28)
and names the core group "/v1" in its discovery, which client-go cannot map.

With --validate (once per version), every rendered object (and the chart's CRD) is checked
against the Kubernetes OpenAPI schemas of each version by kubernetes-validate, in strict
mode (unknown fields are errors); the package ships the schemas, so this is offline. The
chart reads no Capabilities, so one render stands for every version. The Prometheus
Operator's kinds have no schema there; they are listed as not validated and
tests/chart/test_render.py checks their shape.

Needs helm-sdkpy, kmock, kubernetes-validate and PyYAML in a Python >= 3.12 (`make
chart-check` builds .venv-helm). Prints one JSON object: manifest, notes, lint, validated (the
versions), errors (each prefixed with its version), unvalidated.

    .venv-helm/bin/python tests/chart/render.py [-f values.yaml]... [--validate 1.28.7]...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "flotilla"
KUBERNETES_VERSION = {
    "major": "1",
    "minor": "28",
    "gitVersion": "v1.28.7",
    "platform": "linux/amd64",
}
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# Every kind the chart can render and the CRD it installs: (group/version, plural, kind,
# namespaced).
RESOURCES = [
    ("v1", "namespaces", "Namespace", False),
    ("v1", "serviceaccounts", "ServiceAccount", True),
    ("v1", "services", "Service", True),
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "secrets", "Secret", True),
    ("v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("apps/v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor", True),
    ("monitoring.coreos.com/v1", "podmonitors", "PodMonitor", True),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule", True),
    ("flotilla.dev/v1alpha1", "federatedjobs", "FederatedJob", True),
]
LINT_SEVERITIES = {1: "info", 2: "warning", 3: "error"}
NO_SCHEMA_GROUPS = ("monitoring.coreos.com/", "flotilla.dev/")


def _kubeconfig(url: str, namespace: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "kmock", "user": {"token": "unused"}}],
            "contexts": [
                {
                    "name": "kmock",
                    "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace},
                }
            ],
            "current-context": "kmock",
        }
    )


def _core_discovery() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": plural, "singularName": kind.lower(), "kind": kind,
             "namespaced": namespaced, "verbs": VERBS}
            for group_version, plural, kind, namespaced in RESOURCES
            if group_version == "v1"
        ],
    }  # fmt: skip


async def render(*, values: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    """Install the chart into a fresh KMock; return Helm's release (manifest, info.notes)."""
    import helm_sdkpy
    import kmock

    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        for group_version, plural, kind, namespaced in RESOURCES:
            api.resources[f"{group_version}/{plural}"] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=set(VERBS)
            )
        api["get /version"] << KUBERNETES_VERSION
        api["get /api/v1"] << _core_discovery()
        config = helm_sdkpy.Configuration(
            namespace=namespace, kubeconfig=_kubeconfig(str(server.url), namespace)
        )
        # Helm's linter; its messages carry no text through helm-sdkpy, only path and severity.
        lint = await helm_sdkpy.Lint(config).run(str(CHART))
        release_info: dict[str, Any] = await helm_sdkpy.Install(config).run(
            release, str(CHART), values=values, wait=False, timeout=60
        )
        release_info["lint"] = [
            {"severity": LINT_SEVERITIES.get(m["Severity"], "unknown"), "path": m["Path"]}
            for m in lint.get("Messages") or []
        ]
        return release_info


def _documents(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def validate(documents: list[dict[str, Any]], version: str) -> tuple[list[str], list[str]]:
    """Errors of each object against Kubernetes `version`'s schemas; kinds without a schema."""
    import kubernetes_validate

    errors, unvalidated = [], []
    for document in documents:
        name = f"{document['kind']}/{document['metadata']['name']}"
        if document["apiVersion"].startswith(NO_SCHEMA_GROUPS):
            unvalidated.append(name)
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name}: {error.message} at {'.'.join(map(str, error.path))}")
    return errors, unvalidated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-f", "--values", action="append", type=Path, default=[])
    parser.add_argument("--release", default="flotilla")
    parser.add_argument("--namespace", default="flotilla-system")
    parser.add_argument(
        "--validate", metavar="K8S_VERSION", action="append", default=[], help="e.g. 1.28.7"
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for path in args.values:
        values = _merge(values, yaml.safe_load(path.read_text()) or {})
    release = asyncio.run(render(values=values, release=args.release, namespace=args.namespace))
    manifest = release["manifest"]
    result: dict[str, Any] = {
        "manifest": manifest,
        "notes": release.get("info", {}).get("notes", ""),
        "lint": release["lint"],
        "validated": args.validate,
        "errors": [],
        "unvalidated": [],
    }
    crds = [d for path in sorted((CHART / "crds").glob("*.yaml"))
            for d in _documents(path.read_text())]  # fmt: skip
    for version in args.validate:
        errors, unvalidated = validate(_documents(manifest) + crds, version)
        result["errors"] += [f"{version}: {error}" for error in errors]
        result["unvalidated"] = unvalidated  # the same kinds for every version
    json.dump(result, sys.stdout, indent=1)
    print()
    return 1 if result["errors"] else 0


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


if __name__ == "__main__":
    # Helm reads its storage driver from the environment when the library starts.
    if os.environ.get("HELM_DRIVER") != "memory":
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, "HELM_DRIVER": "memory"}
        )
    sys.exit(main())
