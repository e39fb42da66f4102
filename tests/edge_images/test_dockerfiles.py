"""The edge images, checked without a Docker engine: bases, users, build context, contents.

Every image `make images` builds is a (Dockerfile, --target) pair read from the Makefile,
so a new image is checked as soon as it is added there.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from flotilla.k8s.objects import pod_security
from tests.edge_images.dockerfile import Dockerfile, Instruction, dockerignore, ignored, parse

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "edge-images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_BUILD = re.compile(r"\$\(call image,\$\((\w+)\),([\w-]+),([\w-]+),\$\((\w+)\)")
_WHEEL = re.compile(r"/wheels/flotilla-\*\.whl\)?(\[[\w,-]*\])?")
_TORCH_INSTALL = re.compile(r"pip install[^&]*torch==")
_MAKE_VAR = re.compile(r"^(\w+) *[?:]?= *(.*)$", re.M)


@dataclass(frozen=True)
class Image:
    name: str  # the repository under REGISTRY
    dockerfile: Dockerfile
    target: str
    platforms: str


def makefile_vars() -> dict[str, str]:
    return dict(_MAKE_VAR.findall((ROOT / "Makefile").read_text()))


def built_images() -> list[Image]:
    variables = makefile_vars()
    recipe = (ROOT / "Makefile").read_text().split("\nimages:", 1)[1].split("\n\n", 1)[0]
    return [
        Image(variables[name], parse(IMAGES / folder / "Dockerfile"), target, variables[plat])
        for name, folder, target, plat in _BUILD.findall(recipe)
    ]


IMAGE_LIST = built_images()
BY_NAME = {image.name: image for image in IMAGE_LIST}
DOCKERFILES = sorted({image.dockerfile.path for image in IMAGE_LIST})


def _ids(image: Image) -> str:
    return image.name


def test_every_dockerfile_is_built() -> None:
    assert sorted(IMAGES.glob("*/Dockerfile")) == DOCKERFILES
    assert set(BY_NAME) == {"flotilla", "flotilla-client", "flotilla-cuda", "flotilla-operator"}
    assert "linux/arm64" in BY_NAME["flotilla-client"].platforms
    assert "linux/arm64" in BY_NAME["flotilla"].platforms


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned(path: Path) -> None:
    dockerfile = parse(path)
    stage_names = {stage.name for stage in dockerfile.stages}
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        assert "$" not in stage.base, f"{path}: FROM {stage.base}: an ARG without a default"
        repository, _, tag = stage.base.rpartition(":")
        assert repository and tag and "/" not in tag, f"{path}: FROM {stage.base} has no tag"
        assert tag != "latest", f"{path}: FROM {stage.base}"


@pytest.mark.parametrize("image", IMAGE_LIST, ids=_ids)
def test_runs_as_the_pods_user_with_flotilla_as_entrypoint(image: Image) -> None:
    """The pods run as 65532 with a read-only root; their args start with the subcommand."""
    final = image.dockerfile.stage(image.target).instructions
    keywords = [i.keyword for i in final]
    users = [i.text for i in final if i.keyword == "USER"]
    uid = pod_security()["runAsUser"]
    assert users and users[-1] in {str(uid), f"{uid}:{pod_security()['runAsGroup']}"}
    last_user = max(n for n, k in enumerate(keywords) if k == "USER")
    assert last_user < keywords.index("ENTRYPOINT")
    entrypoint = [i for i in final if i.keyword == "ENTRYPOINT"][-1]
    assert entrypoint.exec_form() == ["flotilla"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copied_paths_exist_and_reach_the_build_context(path: Path) -> None:
    """The build context is the repository root; .dockerignore must let every source in."""
    patterns = dockerignore(ROOT / ".dockerignore")
    sources = []
    for instruction in (i for s in parse(path).stages for i in s.instructions):
        if instruction.keyword in {"COPY", "ADD"} and "from" not in instruction.flags:
            sources += instruction.operands[:-1]
    assert sources
    for source in sources:
        target = ROOT / source
        assert target.exists(), f"{path}: COPY {source}: no such path"
        files = [target] if target.is_file() else list(target.rglob("*.py"))
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative, patterns), f".dockerignore drops {relative}"


def test_dockerignore_keeps_the_rest_out() -> None:
    patterns = dockerignore(ROOT / ".dockerignore")
    for kept_out in [".venv/bin/python", "tests/conftest.py", "examples/data/x", ".git/HEAD"]:
        assert ignored(kept_out, patterns), kept_out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_torch_is_the_projects_version(path: Path) -> None:
    pin = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if "torch" in d)
    dockerfile = parse(path)
    installs = [i.text for i in _runs(dockerfile) if _TORCH_INSTALL.search(i.text)]
    for text in installs:
        assert '"torch==${TORCH_VERSION}"' in text, text
    if installs:
        assert f"=={dockerfile.arg_defaults()['TORCH_VERSION']}" == str(pin.specifier)


def test_extras_per_image() -> None:
    """Clients: no extras. The aggregator: tracking. The base dependencies hold neither
    kopf nor MLflow, so no extras means neither."""
    base = {Requirement(d).name for d in PYPROJECT["project"]["dependencies"]}
    assert not base & {"kopf", "mlflow", "mlflow-skinny"}
    expected = {"flotilla-client": "", "flotilla-cuda": "", "flotilla": "[tracking]"}
    for name, extras in expected.items():
        image = BY_NAME[name]
        runs = [i.text for i in image.dockerfile.instructions(image.target) if i.keyword == "RUN"]
        assert [m.group(1) or "" for r in runs for m in _WHEEL.finditer(r)] == [extras], name
        assert not [r for r in runs if re.search(r"kopf|mlflow", r, re.I)], name


def test_operator_image_installs_its_requirements_and_no_torch() -> None:
    image = BY_NAME["flotilla-operator"]
    runs = [i.text for i in image.dockerfile.instructions(image.target) if i.keyword == "RUN"]
    assert any("--no-deps /wheels/flotilla-*.whl" in r for r in runs)
    assert any("--requirement /opt/flotilla/requirements.txt" in r for r in runs)
    assert not [r for r in runs if _TORCH_INSTALL.search(r)]


def test_image_versions_default_to_the_package_version() -> None:
    version = PYPROJECT["project"]["version"]
    for path in DOCKERFILES:
        assert parse(path).arg_defaults()["VERSION"] == version, path


def _runs(dockerfile: Dockerfile) -> list[Instruction]:
    return [i for s in dockerfile.stages for i in s.instructions if i.keyword == "RUN"]
