"""Read a "CVAT for images 1.1" export (a folder or CVAT's zip) as classification samples.

The export is `annotations.xml` plus the images under `images/`. Tags make
classification samples; the job's label list is the global index, so every site
maps names the same way. Labels the job does not know are skipped and reported;
an image with two usable tags is ambiguous for single-label training and skipped.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, Self, TypeVar

import torch

from flotilla.data.errors import DataSourceError

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.xml"
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    labels: torch.Tensor  # int64 [N]
    subsets: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: Sequence[int]) -> LabelledImages:
        rows = torch.as_tensor(list(index), dtype=torch.long)
        return LabelledImages(
            self.images[rows], self.labels[rows], tuple(self.subsets[i] for i in index)
        )


class ExportFiles:
    """Files of an export, from a folder or a zip (at its root or under one folder)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        if not source.exists():
            raise DataSourceError(f"CVAT export {source} does not exist")
        self._zip: zipfile.ZipFile | None = None
        self._root = PurePosixPath()
        if source.is_dir():
            return
        if not zipfile.is_zipfile(source):
            raise DataSourceError(f"CVAT export {source} is neither a folder nor a zip file")
        try:
            self._zip = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataSourceError(f"CVAT export {source} is not a readable zip: {error}") from None
        names = self._zip.namelist()
        tops = [PurePosixPath(n).parent for n in names if PurePosixPath(n).name == ANNOTATIONS]
        # A COCO export keeps its JSON files under annotations/.
        tops += [
            PurePosixPath(n).parent.parent
            for n in names
            if n.endswith(".json") and PurePosixPath(n).parent.name == "annotations"
        ]
        if tops:
            self._root = min(tops, key=lambda p: len(p.parts))

    def read(self, relative: str) -> bytes:
        try:
            if self._zip is None:
                return (self.source / relative).read_bytes()
            return self._zip.read(str(self._root / relative))
        except (KeyError, OSError) as error:
            raise FileNotFoundError(relative) from error

    def listdir(self, relative: str) -> list[str]:
        """Names of the files directly in a folder of the export (empty when it is absent)."""
        if self._zip is None:
            folder = self.source / relative
            return (
                sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            )
        prefix = str(self._root / relative) + "/"
        return sorted(
            n[len(prefix) :]
            for n in self._zip.namelist()
            if n.startswith(prefix) and "/" not in n[len(prefix) :] and n != prefix
        )

    def exists(self, relative: str) -> bool:
        if self._zip is None:
            return (self.source / relative).is_file()
        return str(self._root / relative) in set(self._zip.namelist())


def _annotations(export: ExportFiles) -> ElementTree.Element:
    try:
        raw = export.read(ANNOTATIONS)
    except FileNotFoundError:
        raise DataSourceError(f"CVAT export {export.source} has no {ANNOTATIONS}") from None
    # ElementTree expands internal entities; a DOCTYPE has no business in a CVAT export.
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise DataSourceError(f"{export.source}/{ANNOTATIONS}: DTDs and entities are refused")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as error:
        raise DataSourceError(f"{export.source}/{ANNOTATIONS} is not valid XML: {error}") from None
    version = (root.findtext("version") or "").strip()
    if root.tag != "annotations" or version != "1.1":
        raise DataSourceError(
            f"{export.source}/{ANNOTATIONS} is not a 'CVAT for images 1.1' export "
            f"(root <{root.tag}>, version {version or 'missing'!r})"
        )
    return root


def _image_path(export: ExportFiles, name: str) -> str:
    for candidate in (f"images/{name}", name):
        if export.exists(candidate):
            return candidate
    raise DataSourceError(f"{export.source}: image {name!r} is listed but its file is missing")


class Subsetted(Protocol):
    """Samples that know their CVAT subset and can be sliced: classification or detection."""

    @property
    def subsets(self) -> tuple[str | None, ...]: ...

    def __len__(self) -> int: ...

    def select(self, index: Sequence[int]) -> Self: ...


S = TypeVar("S", bound=Subsetted)


def split_train_holdout(data: S, *, validation_fraction: float, seed: int) -> tuple[S, S]:
    """CVAT's subsets when the export has a Validation subset; a seeded split otherwise."""
    marked = [(s or "").lower() == "validation" for s in data.subsets]
    if any(marked):
        holdout = [i for i, m in enumerate(marked) if m]
        train = [i for i, m in enumerate(marked) if not m]
    else:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = round(len(data) * validation_fraction)
        holdout, train = sorted(order[:cut]), sorted(order[cut:])
    return data.select(train), data.select(holdout)
