"""The chart's own Python (>= 3.12, .venv-helm), apart from the project's 3.11: helm-sdkpy
embeds Helm v4's engine and needs 3.12. Found on PATH, under pyenv or in
$FLOTILLA_HELM_PYTHON, and built once from tests/chart/requirements-helm.txt. tests/chart
renders the chart with it; tests/e2e installs the chart with it on a real API server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-helm"
REQUIREMENTS = ROOT / "tests" / "chart" / "requirements-helm.txt"
STAMP = VENV / ".requirements"
MISSING = (
    "the Helm engine needs Python >= 3.12 for helm-sdkpy (none found on PATH, under pyenv "
    "or in $FLOTILLA_HELM_PYTHON)"
)


class BuildFailed(Exception):
    pass


def _is_312(python: str) -> bool:
    probe = [python, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def find_python_312() -> str | None:
    explicit = os.environ.get("FLOTILLA_HELM_PYTHON")
    if explicit:
        return explicit if _is_312(explicit) else None
    candidates = [sys.executable]
    candidates += [p for name in ("python3.13", "python3.12") if (p := shutil.which(name))]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.1[2-9]*/bin/python"), reverse=True)]
    return next((c for c in candidates if _is_312(c)), None)


def build_venv(python: str) -> Path:
    """.venv-helm, (re)built when requirements-helm.txt changed."""
    interpreter = VENV / "bin" / "python"
    wanted = REQUIREMENTS.read_text()
    if interpreter.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return interpreter
    steps = [
        [python, "-m", "venv", "--clear", str(VENV)],
        [str(interpreter), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BuildFailed(f"building {VENV} failed: {' '.join(step)}\n{done.stderr[-3000:]}")
    STAMP.write_text(wanted)
    return interpreter
