"""Parse untrusted XML into an ElementTree with DTDs refused and nesting bounded.

ElementTree expands the internal entities a DTD declares (a "billion laughs" is a few
hundred bytes). Looking for ``<!DOCTYPE`` in the raw bytes misses any encoding but UTF-8,
so the refusal happens in expat itself, on the decoded document: expat reads the BOM or the
declaration (UTF-8, UTF-16, Latin-1, ASCII) and calls us when a DOCTYPE starts, before any
entity is declared. Without a DTD there are no entities to expand. (defusedxml does the
same; it is not a dependency of the client.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any
from xml.parsers import expat

from flotilla.data.errors import DataSourceError


class _TreeWithoutDtd:
    """expat's callbacks, building the tree and refusing what an export must not hold."""

    def __init__(self, *, where: str, depth: int) -> None:
        self.where = where
        self.max_depth = depth
        self.depth = 0
        self.builder = ElementTree.TreeBuilder()

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise DataSourceError(f"{self.where} nests deeper than {self.max_depth} levels")
        self.builder.start(tag, attributes)

    def end(self, tag: str) -> None:
        self.depth -= 1
        self.builder.end(tag)

    def refuse(self, *_: Any) -> None:
        raise DataSourceError(f"{self.where}: DTDs and entities are refused")


def parse_xml(raw: bytes, *, where: str, depth: int) -> ElementTree.Element:
    """The root element of the document; ``where`` names it in every error."""
    tree = _TreeWithoutDtd(where=where, depth=depth)
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = tree.start
    parser.EndElementHandler = tree.end
    parser.CharacterDataHandler = tree.builder.data
    parser.StartDoctypeDeclHandler = tree.refuse
    # Entities are only declared inside a DTD; refused here too, should expat ever differ.
    parser.EntityDeclHandler = tree.refuse
    try:
        parser.Parse(raw, True)
    # LookupError: an encoding Python does not know; ValueError: a multi-byte one expat lacks.
    except (expat.ExpatError, LookupError, ValueError) as error:
        raise DataSourceError(f"{where} is not valid XML: {error}") from None
    return tree.builder.close()
