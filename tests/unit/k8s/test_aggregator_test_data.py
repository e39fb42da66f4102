"""The aggregator's central test split in a cluster: mounted read-only where the container
is told to read it, as the real `flotilla aggregator` parser takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import SpecError, parse_job
from flotilla.cli import build_parser
from flotilla.k8s.aggregator_objects import deployment

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "federatedjob.yaml"


def _pod(test_data: dict[str, Any] | None) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    if test_data is not None:
        document["spec"]["evaluation"] = {"testData": {"cvatExport": test_data}}
    pod: dict[str, Any] = deployment(parse_job(document, source="test"))["spec"]["template"]
    return pod["spec"]


def _mounted(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    container = pod["containers"][0]
    volume = next(v for v in pod["volumes"] if v["name"] == "test-data")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "test-data")
    return volume, mount, container["args"]


def test_test_data_in_a_claim_is_mounted_read_only_and_passed_to_the_aggregator() -> None:
    volume, mount, args = _mounted(_pod({"path": "digits/test", "claimName": "digits-test"}))

    assert volume["persistentVolumeClaim"] == {"claimName": "digits-test", "readOnly": True}
    assert mount == {"name": "test-data", "mountPath": "/test-data", "readOnly": True}
    parsed = build_parser().parse_args(args)
    assert parsed.test_data == Path("/test-data/digits/test")


@pytest.mark.parametrize(
    ("host", "kind", "inside"),
    [
        ("/var/lib/flotilla/digits-test", "Directory", "/test-data/digits-test"),
        ("/srv/exports/test.zip", "File", "/test-data/test.zip"),
    ],
)
def test_test_data_without_a_claim_comes_from_the_aggregators_node(
    host: str, kind: str, inside: str
) -> None:
    volume, mount, args = _mounted(_pod({"path": host}))

    assert volume["hostPath"] == {"path": host, "type": kind}
    assert mount["mountPath"] == inside and mount["readOnly"] is True
    assert build_parser().parse_args(args).test_data == Path(inside)


def test_a_job_without_test_data_mounts_none() -> None:
    pod = _pod(None)

    assert all(v["name"] != "test-data" for v in pod["volumes"])
    assert not any(arg.startswith("--test-data") for arg in pod["containers"][0]["args"])


def test_test_data_flag_replaces_the_path_and_names_what_is_missing() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    job = parse_job(document, source="test")
    with pytest.raises(SpecError, match=r"spec\.evaluation\.testData"):
        job.with_test_data_path(Path("/elsewhere"))

    document["spec"]["evaluation"] = {
        "testData": {"cvatExport": {"path": "/x", "format": "coco-1.0"}}
    }
    moved = parse_job(document, source="test").with_test_data_path(Path("/elsewhere"))
    export = moved.spec.evaluation.test_data
    assert export is not None
    assert export.cvat_export.path == "/elsewhere"
    assert export.cvat_export.format == "coco-1.0"  # the rest of the source is kept
