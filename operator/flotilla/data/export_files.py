"""The one gate through which every file of a CVAT export is read: confined and bounded.

An export (a folder, or the zip CVAT produces) comes from a site and is not trusted: its
annotations name the images to read, and a zip declares its own sizes. So every name is
confined to the export, every file's size is checked before it is read and again while it
is decompressed, XML is parsed with DTDs refused, XML and JSON nesting is bounded, and
images are bounded in pixels. A live CVAT's frames come through ``read_zip_member`` and
``bounded_image`` too (``cvat_live_frames``). Every failure is a ``DataSourceError`` that names the
export, the file or member, and the offending value; the client reports it to the
aggregator and the site counts as absent.
"""

from __future__ import annotations

import io
import json
import lzma
import re
import struct
import xml.etree.ElementTree as ElementTree
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from flotilla.data.errors import DataSourceError, shown
from flotilla.data.xml_without_dtd import parse_xml

# One file or member read into memory. An annotation file for tens of thousands of frames
# is a few MiB, a camera frame a few MiB; a zip bomb's member is gigabytes.
MAX_MEMBER_BYTES = 64 << 20
# A whole zip, uncompressed, from the sizes its directory declares. A bomb is small on disk
# and huge inside; an export larger than this belongs in a folder, where it costs only disk.
MAX_ZIP_TOTAL_BYTES = 1 << 30
# Decoded pixels of one image: an 8K frame is 33 M; 50 M is at most 200 MB as RGBA. A tiny
# PNG may claim 20000x20000 and would decompress to 400 M pixels.
MAX_IMAGE_PIXELS = 50_000_000
# Nesting of JSON arrays and objects and of XML elements. COCO needs 5 levels, CVAT XML 8;
# the bound keeps the recursive JSON decoder far from Python's recursion limit.
MAX_NESTING_DEPTH = 64

ANNOTATIONS = "annotations.xml"
COCO_DIR = "annotations"
# The formats cameras and CVAT produce (JPEG's opener also reads a phone's MPO); the other
# Pillow plugins (EPS runs Ghostscript, among them) are attack surface an export does not need.
_IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
# zipfile lets each codec's own error through: zlib.error (deflate), LZMAError, OSError
# (bzip2), EOFError (truncated), NotImplementedError (unknown method or zip version),
# RuntimeError (encrypted), BadZipFile (bad CRC or header).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
# Pillow's decoders raise all of these on a corrupt file.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError)
# A JSON string (ended, or not: then the rest is one string JSON will refuse) or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+"|"|[\[\]{}]', re.DOTALL)


class ExportFiles:
    """Files of an export, from a folder or a zip (at its root or under one folder)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        if not source.exists():
            raise DataSourceError(f"CVAT export {source} does not exist")
        self._zip: zipfile.ZipFile | None = None
        self._folder = source.resolve()  # symlinks resolved once: every file must lie under it
        self._root = PurePosixPath()
        if source.is_dir():
            return
        self._zip = _open_zip(source)
        self._names = set(self._zip.namelist())
        self._root = _zip_root(self._names)

    def read(self, name: str) -> bytes:
        """The file's bytes, when it lies inside the export and within MAX_MEMBER_BYTES."""
        relative = self.confine(name)
        if self._zip is None:
            return self._read_file(relative)
        return self._read_member(self._zip, str(self._root / relative))

    def exists(self, name: str) -> bool:
        relative = self.confine(name)
        if self._zip is None:
            path = self._folder_path(relative)
            try:
                return path.is_file()
            except OSError as error:
                raise DataSourceError(f"{self.source}: cannot stat {name!r}: {error}") from None
        return str(self._root / relative) in self._names

    def listdir(self, name: str) -> list[str]:
        """Names of the files directly in a folder of the export (empty when it is absent)."""
        relative = self.confine(name)
        if self._zip is None:
            folder = self._folder_path(relative)
            return (
                sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            )
        prefix = f"{self._root / relative}/"
        return sorted(
            n[len(prefix) :]
            for n in self._names
            if n.startswith(prefix) and "/" not in n[len(prefix) :] and n != prefix
        )

    def xml(self, name: str) -> ElementTree.Element:
        """The file's XML tree; DTDs refused and nesting bounded, in any encoding."""
        return parse_xml(self.read(name), where=f"{self.source}/{name}", depth=MAX_NESTING_DEPTH)

    def json(self, name: str) -> Any:
        """The file's JSON document, its nesting bounded before it is decoded."""
        raw = self.read(name)
        where = f"{self.source}/{name}"
        try:
            text = raw.decode(json.detect_encoding(raw))
            _check_json_depth(text, where=where)
            return json.loads(text)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, int()'s digit limit
            raise DataSourceError(f"{where} is not valid JSON: {error}") from None

    def image(self, name: str) -> Image.Image:
        """The decoded image, refused before decoding when it has over MAX_IMAGE_PIXELS."""
        return bounded_image(self.read(name), where=str(self.source), name=name)

    def confine(self, name: str) -> PurePosixPath:
        """The name as a path inside the export, refused when it could lead anywhere else."""
        path = PurePosixPath(name)
        if "\0" in name or path.is_absolute() or ".." in path.parts or not path.parts:
            raise DataSourceError(
                f"{self.source}: file name {shown(name)} leaves the export (absolute, with "
                "'..', or empty); every file must lie inside it"
            )
        return path

    def _folder_path(self, relative: PurePosixPath) -> Path:
        path = self._folder / relative
        try:
            inside = path.resolve().is_relative_to(self._folder)
        except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
            raise DataSourceError(
                f"{self.source}: cannot resolve {str(relative)!r}: {error}"
            ) from None
        if not inside:
            raise DataSourceError(
                f"{self.source}: {str(relative)!r} leads outside the export (through a symlink)"
            )
        return path

    def _read_file(self, relative: PurePosixPath) -> bytes:
        path = self._folder_path(relative)
        try:
            if not path.is_file():  # a FIFO or a device would block or never end
                raise DataSourceError(f"CVAT export {self.source} has no file {str(relative)!r}")
            _check_size(f"{self.source}: {str(relative)!r} holds", path.stat().st_size)
            with path.open("rb") as file:
                data = file.read(MAX_MEMBER_BYTES + 1)  # it may have grown since stat
        except OSError as error:
            raise DataSourceError(
                f"{self.source}: cannot read {str(relative)!r}: {error}"
            ) from None
        _check_size(f"{self.source}: {str(relative)!r} holds", len(data))
        return data

    def _read_member(self, archive: zipfile.ZipFile, name: str) -> bytes:
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise DataSourceError(f"CVAT export {self.source} has no member {name!r}") from None
        return read_zip_member(archive, info, where=f"{self.source}: member {name!r}")


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, where: str) -> bytes:
    """A zip member's bytes, within MAX_MEMBER_BYTES whatever size it declares; `where`
    names the zip and the member."""
    _check_size(f"{where} declares", info.file_size)
    try:
        with archive.open(info) as member:
            # zipfile stops at the declared size, then checks the CRC; reading at most one
            # byte past the limit bounds memory whatever the stream holds.
            data = member.read(MAX_MEMBER_BYTES + 1)
    except ZIP_ERRORS as error:
        raise DataSourceError(f"{where} is corrupt: {error}") from None
    _check_size(f"{where} expands to", len(data))
    return data


def bounded_image(raw: bytes, *, where: str, name: str) -> Image.Image:
    """The image decoded from `raw`, in one of the formats cameras produce, refused before
    decoding when it has over MAX_IMAGE_PIXELS. An export's images come through here, and so
    do a live CVAT's frames: both come from a site and neither is trusted. `where` names the
    export or the server and task, `name` the image."""
    try:
        image = Image.open(io.BytesIO(raw), formats=_IMAGE_FORMATS)
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataSourceError(
                f"{where}: image {name!r} has {width}x{height} = {width * height} "
                f"pixels, over the limit of {MAX_IMAGE_PIXELS} pixels"
            )
        image.load()
    except Image.DecompressionBombError as error:  # Pillow's own check, before ours
        raise DataSourceError(
            f"{where}: image {name!r} is over the limit of {MAX_IMAGE_PIXELS} pixels: {error}"
        ) from None
    except _IMAGE_ERRORS as error:
        raise DataSourceError(f"{where}: cannot read image {name!r}: {error}") from None
    return image


def _check_size(what: str, size: int) -> None:
    if size > MAX_MEMBER_BYTES:
        raise DataSourceError(f"{what} {size} bytes, over the limit of {MAX_MEMBER_BYTES} bytes")


def _open_zip(source: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(source):
        raise DataSourceError(f"CVAT export {source} is neither a folder nor a zip file")
    try:
        archive = zipfile.ZipFile(source)
    except ZIP_ERRORS as error:
        raise DataSourceError(f"CVAT export {source} is not a readable zip: {error}") from None
    declared = sum(info.file_size for info in archive.infolist())
    if declared > MAX_ZIP_TOTAL_BYTES:
        archive.close()
        raise DataSourceError(
            f"CVAT export {source} declares {declared} bytes uncompressed in all, over the "
            f"limit of {MAX_ZIP_TOTAL_BYTES} bytes"
        )
    return archive


def _zip_root(names: set[str]) -> PurePosixPath:
    """The folder holding the export inside the zip: CVAT nests it under one, or not."""
    tops = [PurePosixPath(n).parent for n in names if PurePosixPath(n).name == ANNOTATIONS]
    # A COCO export keeps its JSON files under annotations/.
    tops += [
        PurePosixPath(n).parent.parent
        for n in names
        if n.endswith(".json") and PurePosixPath(n).parent.name == COCO_DIR
    ]
    return min(tops, key=lambda p: len(p.parts)) if tops else PurePosixPath()


def _check_json_depth(text: str, *, where: str) -> None:
    """Refuse nesting past MAX_NESTING_DEPTH in one linear scan, before the recursive decoder."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                raise DataSourceError(f"{where} nests deeper than {MAX_NESTING_DEPTH} levels")
        elif bracket in ("]", "}"):
            depth -= 1
        elif bracket == '"':
            return  # an unterminated string: the decoder refuses it
