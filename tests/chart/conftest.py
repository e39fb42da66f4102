"""Rendering the chart for real: a Python >= 3.12 with helm-sdkpy, apart from the project's.

The project supports Python 3.11; helm-sdkpy (Helm v4's engine) needs 3.12. The
`helm_python` fixture finds a Python >= 3.12 ($FLOTILLA_HELM_PYTHON, python3.12 or
python3.13 on PATH, or pyenv's versions), builds .venv-helm from requirements-helm.txt
once (pip, from the package index); `render` runs tests/chart/render.py with it in a
subprocess. Without such a Python the render tests are skipped with the reason (they fail
instead under FLOTILLA_CHART_RENDER=required, as `make chart-check` sets); if the build
fails they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_env import MISSING, BuildFailed, build_venv, find_python_312

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = ROOT / "charts" / "flotilla"

Render = Callable[..., dict[str, Any]]
# The schemas every render is validated against: the oldest Kubernetes the chart admits
# (Chart.yaml's kubeVersion >= 1.28; the e2e API server is v1.28.7) and 1.30.
KUBERNETES_VERSIONS = ("1.28.7", "1.30.0")


@pytest.fixture(scope="session")
def helm_python() -> Path:
    python = find_python_312()
    if python is None:
        reason = f"{MISSING}: the chart was NOT rendered"
        if os.environ.get("FLOTILLA_CHART_RENDER") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        return build_venv(python)
    except BuildFailed as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def render(helm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """render(values) -> {manifest, objects, notes, errors, unvalidated}; errors are the
    kubernetes-validate errors for each of KUBERNETES_VERSIONS, prefixed with the version.
    Raises RenderFailed when Helm refuses."""
    directory = tmp_path_factory.mktemp("values")

    def run(values: dict[str, Any] | None = None, *files: Path) -> dict[str, Any]:
        arguments = [arg for path in files for arg in ("-f", str(path))]
        if values:
            extra = directory / f"values-{len(list(directory.iterdir()))}.yaml"
            extra.write_text(yaml.safe_dump(values))
            arguments += ["-f", str(extra)]
        validate = [arg for version in KUBERNETES_VERSIONS for arg in ("--validate", version)]
        command = [str(helm_python), str(HERE / "render.py"), *arguments, *validate]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if not done.stdout.strip():
            raise RenderFailed(done.stderr)
        result: dict[str, Any] = json.loads(done.stdout)
        result["objects"] = [d for d in yaml.safe_load_all(result["manifest"]) if d]
        return result

    return run


class RenderFailed(Exception):
    """Helm refused to install the chart (the message is Helm's)."""
