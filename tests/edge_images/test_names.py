"""The names `make images` tags are the ones the operator, the chart and config/ pull."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from flotilla.api.cluster import DEFAULT_CLIENT_IMAGE, DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE
from tests.edge_images.test_dockerfiles import BY_NAME, makefile_vars

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _image(variable: str) -> str:
    variables = makefile_vars()
    return f"{variables['REGISTRY']}/{variables[variable]}"


def test_the_makefile_takes_its_version_from_pyproject() -> None:
    assert "pyproject.toml" in makefile_vars()["VERSION"]


def test_operator_defaults_are_the_runtime_client_and_cuda_images() -> None:
    assert f"{_image('RUNTIME_IMAGE')}:{VERSION}" == DEFAULT_IMAGE
    assert f"{_image('CLIENT_IMAGE')}:{VERSION}" == DEFAULT_CLIENT_IMAGE
    assert f"{_image('CUDA_IMAGE')}:{VERSION}" == DEFAULT_CUDA_IMAGE
    # The runtime image runs the aggregator; clients get the lean image or the CUDA one.
    assert BY_NAME[makefile_vars()["RUNTIME_IMAGE"]].target == "aggregator"
    assert BY_NAME[makefile_vars()["CLIENT_IMAGE"]].target == "client"
    assert BY_NAME[makefile_vars()["CUDA_IMAGE"]].target == "cuda-client"


def test_chart_and_manifest_pull_the_operator_image() -> None:
    chart = ROOT / "charts" / "flotilla"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values["image"]["repository"] == _image("OPERATOR_IMAGE")
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"] == VERSION
    deployment = yaml.safe_load((ROOT / "config" / "operator.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{_image('OPERATOR_IMAGE')}:{VERSION}"
