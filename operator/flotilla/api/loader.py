"""Reading a FederatedJob from a YAML file, with errors that point at the file and line."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import yaml

from flotilla.api.errors import SpecError
from flotilla.api.spec import FederatedJob


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice, which PyYAML would let the last one win."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Hashable, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_job(path: str | Path) -> FederatedJob:
    """Read, validate, and resolve relative data paths against the file's directory."""
    path = Path(path)
    return read_job(path).resolve_paths(path.parent)


def read_job(path: str | Path) -> FederatedJob:
    """Read and validate, paths as written: the job as a cluster's API server would hold it."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(["file not found"], source=source) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError([f"cannot read the file: {error}"], source=source) from None
    return parse_job(_one_document(text, source=source), source=source)


def parse_job(data: object, *, source: str) -> FederatedJob:
    """Validate already-parsed data (YAML or JSON); ``source`` names it in errors."""
    if not isinstance(data, Mapping):
        problem = f"expected a mapping with apiVersion, kind, metadata and spec (got {_kind(data)})"
        raise SpecError([problem], source=source)
    return FederatedJob.from_dict(data, source=source)


def _one_document(text: str, *, source: str) -> object:
    try:
        documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.MarkedYAMLError as error:
        raise SpecError([_yaml_problem(error)], source=source) from None
    except yaml.YAMLError as error:
        raise SpecError([f"YAML error: {error}"], source=source) from None
    if not documents:
        raise SpecError(["the file holds no YAML document"], source=source)
    if len(documents) > 1:
        problem = f"expected one YAML document, found {len(documents)} (one FederatedJob a file)"
        raise SpecError([problem], source=source)
    return documents[0]


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = " ".join(part for part in (error.context, error.problem) if part)
    return f"YAML syntax error{where}: {what or error}"


def _kind(data: object) -> str:
    return "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"[:80]
