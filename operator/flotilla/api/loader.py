"""Reading a FederatedJob from a YAML file, with errors that point at the file and line.

A job file is input from whoever wrote it, so reading it is bounded: the file's size, how
deep it nests, and how many nodes its aliases stand for (a kilobyte of nested aliases can
stand for billions, the "billion laughs"). Each bound answers as soon as it is passed, with
the line, before anything is built. Mapping keys must be scalars, and a key given twice is an
error, not the last one winning. The operator reads JSON from the API server and never
comes here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from flotilla.api.errors import SpecError
from flotilla.api.spec import FederatedJob

# etcd's default request limit (1.5 MiB): a larger FederatedJob could not be stored in a
# cluster. A job of 10,000 sites with a data source each is about 0.85 MB.
MAX_FILE_BYTES = 1_572_864
# Nodes that aliases may add to the document, each alias counted as the nodes it stands for:
# one data source shared by 10,000 sites adds 50,000.
MAX_ALIAS_NODES = 100_000
# A FederatedJob nests about 12 deep (an affinity's match expressions); Python's recursion
# limit would end a few hundred levels down, in a traceback.
MAX_DEPTH = 64
_PREVIEW_CHARS = 40
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedComposer(yaml.composer.Composer):
    """The node graph, refused once it nests past MAX_DEPTH or its aliases stand for more
    than MAX_ALIAS_NODES nodes. Sizes are counted per node once, so counting is linear."""

    peek_event: Callable[[], yaml.Event]  # the event source's, later in a subclass's bases

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()  # anchors of the collections being composed

    def compose_document(self) -> yaml.Node | None:
        self._sizes.clear()  # keyed by id(): the last document's nodes are gone
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
        if self._depth >= MAX_DEPTH:
            raise _composer_error(f"nested deeper than {MAX_DEPTH} levels", event)
        anchor = event.anchor if isinstance(event, yaml.CollectionStartEvent) else None
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        if event.anchor in self._open:
            problem = f"alias *{event.anchor} is inside the node it names (a cycle)"
            raise _composer_error(problem, event)
        node = self.anchors.get(event.anchor or "")
        if node is None:
            return  # PyYAML's composer says: an undefined alias
        self._alias_nodes += _size(node, self._sizes)
        if self._alias_nodes > MAX_ALIAS_NODES:
            problem = f"alias *{event.anchor} expands the document past {MAX_ALIAS_NODES} nodes"
            raise _composer_error(problem, event)


def _composer_error(problem: str, event: yaml.Event) -> ComposerError:
    mark: Any = event.start_mark  # libyaml's marks are its own class, with the same fields
    return ComposerError(None, None, problem, mark)


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """The nodes ``node`` stands for, aliases expanded; memoised by node, so each is visited
    once (an alias is the very node it names). Never deeper than MAX_DEPTH."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total


class _CheckedConstructor(yaml.constructor.SafeConstructor):
    """SafeLoader's types; a value Python cannot build is a YAML error at its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            # An impossible date (2024-13-45), an integer of more digits than Python reads.
            problem = f"cannot read {_preview(node)} ({error})"
            raise ConstructorError(None, None, problem, node.start_mark) from None


class _Loader(_BoundedComposer, _CheckedConstructor, yaml.resolver.Resolver):
    """A loader less its event source, which a subclass puts after it in its bases: the
    composer here must come before libyaml's own."""

    check_data: Callable[[], bool]
    dispose: Callable[[], None]

    def __init__(self, stream: str) -> None:
        _BoundedComposer.__init__(self)
        _CheckedConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


class PythonLoader(_Loader, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """Events from PyYAML's pure Python parser, where PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Loader.__init__(self, stream)


LOADERS: list[type[_Loader]] = [PythonLoader]
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class LibyamlLoader(_Loader, CParser):
        """Events from libyaml's parser, about 6 times faster; the bounds are the same."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Loader.__init__(self, stream)

    LOADERS.insert(0, LibyamlLoader)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Hashable, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a sequence" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            problem = f"mapping key is {kind} ({_preview(key_node)}); keys must be scalars"
            raise ConstructorError(None, None, problem, key_node.start_mark)
        if key_node.tag == _MERGE_TAG:  # '<<': merged keys may be overridden, not repeated
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


# The stubs type add_constructor for PyYAML's own loaders only.
_CheckedConstructor.add_constructor(  # type: ignore[type-var]
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _preview(node: yaml.Node) -> str:
    """A node as the user wrote it (a scalar quoted, a collection in flow style), cut short."""
    if isinstance(node, yaml.ScalarNode):
        text = repr(node.value[: _PREVIEW_CHARS + 1])
    else:
        text = _flow(node, budget=_PREVIEW_CHARS + 1)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def _flow(node: yaml.Node, *, budget: int) -> str:
    """Flow YAML of at most about ``budget`` characters; deep and wide nodes are cut."""
    if isinstance(node, yaml.ScalarNode):
        return str(node.value[:budget])
    if budget <= 0:
        return "..."
    pairs = (
        node.value if isinstance(node, yaml.MappingNode) else [(item, None) for item in node.value]
    )
    parts: list[str] = []
    for key, value in pairs:
        left = budget - sum(len(part) + 2 for part in parts)
        if left <= 0:
            break
        part = _flow(key, budget=left)
        if value is not None:
            part += ": " + _flow(value, budget=left - len(part) - 2)
        parts.append(part)
    inner = ", ".join(parts)
    return f"{{{inner}}}" if isinstance(node, yaml.MappingNode) else f"[{inner}]"


def load_job(path: str | Path) -> FederatedJob:
    """Read, validate, and resolve relative data paths against the file's directory."""
    path = Path(path)
    return read_job(path).resolve_paths(path.parent)


def read_job(path: str | Path) -> FederatedJob:
    """Read and validate, paths as written: the job as a cluster's API server would hold it."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            problem = f"the file is larger than {MAX_FILE_BYTES} bytes (a FederatedJob is smaller)"
            raise SpecError([problem], source=source)
        text = data.decode("utf-8")
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
        documents = _documents(text)
    except yaml.MarkedYAMLError as error:
        raise SpecError([_yaml_problem(error)], source=source) from None
    except yaml.YAMLError as error:  # the reader's: a character YAML does not allow
        raise SpecError([f"YAML error: {error}"], source=source) from None
    if not documents:
        raise SpecError(["the file holds no YAML document"], source=source)
    if len(documents) > 1:
        problem = f"expected one YAML document, found {len(documents)} (one FederatedJob a file)"
        raise SpecError([problem], source=source)
    return documents[0]


def _documents(text: str) -> list[object]:
    loader = LOADERS[0](text)
    try:
        documents = []
        while loader.check_data():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
        return documents
    finally:
        loader.dispose()


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = " ".join(part for part in (error.context, error.problem) if part)
    # The scanner and parser find syntax; the composer and constructor find meaning.
    kind = (
        "YAML error" if isinstance(error, ComposerError | ConstructorError) else "YAML syntax error"
    )
    return f"{kind}{where}: {what or error}"


def _kind(data: object) -> str:
    return "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"[:80]
