"""Generated job files: whatever the text, reading it gives a job or a SpecError, nothing else.

Hypothesis writes YAML-ish text (brackets, anchors, aliases, merge keys, tags, quotes),
mutates the examples' text (cut, splice, hostile scalars in place of values), and puts
hostile values at random places of an example's data before dumping it back to YAML.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flotilla.api import FederatedJob, SpecError, read_job  # noqa: E402
from flotilla.api import loader as loader_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_YAMLISH = st.text(alphabet="{}[]:,-&*!|>'\"#?<%@` \n\tab01.e+_\\~", max_size=200)
_HOSTILE_SCALARS = [
    ".inf", "-.inf", ".nan", "inf", "nan", "1e29", "1.0e+309", "true", "false", "null", "~",
    "[a, b]", "{a: 1}", "*nowhere", "&a", "!!binary xyz", "!!python/object:os.system x",
    "2024-13-45", "0x1F", "0o17", "1_000", "'", '"', "<<", "? x", "1" * 5000, "-1", "4294967296",
]  # fmt: skip
_HOSTILE_VALUES: list[Any] = [
    float("inf"), float("nan"), True, 1e29, 2**64, -1, "", "x" * 300, [], {}, [1, [2]], {"a": 1},
    None, 3.5, "3",
]  # fmt: skip

_FILE = Path(tempfile.mkdtemp(prefix="flotilla-fuzz-")) / "job.yaml"


def _read(text: str) -> FederatedJob | None:
    """The job the text holds, or None for a SpecError; anything else fails the test."""
    _FILE.write_text(text, encoding="utf-8")
    try:
        return read_job(_FILE)
    except SpecError as error:
        assert error.problems
        return None


@pytest.mark.parametrize("loader", loader_module.LOADERS, ids=lambda loader: loader.__name__)
@settings(
    FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture]
)
@given(text=_YAMLISH | st.text(max_size=100))
@example(text="? [a]\n: 1\n")
@example(text="a: &a [*a]\n")
@example(text="a: &a {<<: *a}\n")
@example(text="<<: 1\n")
@example(text="{" * 300)
@example(text="\x1f")
def test_yamlish_text_is_read_or_refused(
    monkeypatch: pytest.MonkeyPatch, loader: type, text: str
) -> None:
    monkeypatch.setattr(loader_module, "LOADERS", [loader])
    _read(text)


@st.composite
def _mutated_example(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 40)))
        fragment = draw(st.sampled_from(_HOSTILE_SCALARS) | _YAMLISH)
        text = text[:start] + fragment + text[end:]
    return text


@FUZZ
@given(text=_mutated_example())
def test_mutated_examples_are_read_or_refused(text: str) -> None:
    _read(text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield from _paths(child, (*prefix, key))


@FUZZ
@given(data=st.data())
def test_hostile_values_anywhere_in_an_example_are_refused_or_read_back(
    data: st.DataObject,
) -> None:
    document = yaml.safe_load(data.draw(st.sampled_from(EXAMPLES)))
    path = data.draw(st.sampled_from(list(_paths(document))[1:]))
    value = data.draw(st.sampled_from(_HOSTILE_VALUES))
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

    job = _read(yaml.safe_dump(document))

    if job is not None:  # accepted: then it is what was written, and reads back the same
        assert FederatedJob.from_dict(job.to_dict()) == job
