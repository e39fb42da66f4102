"""The operator image holds flotilla (--no-deps) and edge-images/operator/requirements.txt:
those must be the project's own pins and cover everything the operator's code imports."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "edge-images" / "operator" / "requirements.txt"
# Import what `flotilla operator` imports, then list the third-party distributions that the
# loaded flotilla modules import themselves (the rest come in as their dependencies).
_PROBE = """
import ast, json, sys, importlib.metadata as md
import flotilla.cli, flotilla.k8s.handlers, kopf
owners = md.packages_distributions()
direct = set()
for name, module in list(sys.modules.items()):
    if not name.startswith("flotilla") or not getattr(module, "__file__", None):
        continue
    for node in ast.walk(ast.parse(open(module.__file__).read())):
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops = [node.module.split(".")[0]]
        else:
            continue
        direct |= {d for top in tops for d in owners.get(top, []) if top != "flotilla"}
heavy = sorted(m for m in ("torch", "numpy", "mlflow", "safetensors", "cvat_sdk", "PIL")
               if m in sys.modules)
print(json.dumps({"direct": sorted(direct), "heavy": heavy}))
"""


def _requirements() -> dict[str, Requirement]:
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return {str(canonicalize_name(r.name)): r for r in map(Requirement, filter(None, lines))}


def test_requirements_are_the_projects_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["operator"]
    pins = {str(canonicalize_name(r.name)): r for r in map(Requirement, declared)}
    for name, requirement in _requirements().items():
        assert name in pins, f"{name}: not a dependency of flotilla"
        assert requirement.specifier == pins[name].specifier, name
    assert "kopf" in _requirements()
    assert not {"torch", "mlflow"} & set(_requirements())


def test_the_operator_imports_nothing_else() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    assert found["heavy"] == []
    direct = {canonicalize_name(name) for name in found["direct"]}
    assert direct - _with_their_dependencies(set(_requirements())) == set()


def _with_their_dependencies(names: set[str]) -> set[str]:
    """The names and what they require (pydantic brings pydantic-core, which flotilla uses)."""
    required = {
        canonicalize_name(Requirement(line).name)
        for name in names
        for line in metadata.requires(name) or []
        if "extra ==" not in line
    }
    return names | required
