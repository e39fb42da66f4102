"""A live CVAT frame's pixels and boxes, through the checks an export's images and boxes get.

cvat-sdk caches a task's chunks on the node (zips of the uploaded images, entries
restarting at 000000 in each chunk), and its own loader opens them with every Pillow
plugin and Pillow's looser pixel bound, raising whatever zipfile or Pillow raise. A site's
server and its cache are trusted no more than an export: so a frame is read here from its
cached chunk, the entry bounded in bytes (``read_zip_member``), the image in format and
pixels (``bounded_image``), and its boxes checked to be finite and inside it
(``box_numbers``). Every failure is a ``DataSourceError`` naming the server, the task and
the frame; a damaged chunk also says which folder to remove so that it is fetched again.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from flotilla.data.box_numbers import check_inside, points_box
from flotilla.data.errors import DataSourceError, shown
from flotilla.data.export_files import ZIP_ERRORS, bounded_image, read_zip_member
from flotilla.data.frames import RawBox


@dataclass(frozen=True)
class CachedTask:
    """A task's chunks in the SDK's cache: where they lie and how frames spread over them."""

    where: str  # "CVAT <server>, task <id>", for messages
    chunk_dir: Path
    chunk_size: int
    refetch: Path  # the folder whose removal makes the next read fetch the task again

    def boxes(
        self, shapes: Sequence[Any], *, names: Callable[[int], str], frame: str
    ) -> tuple[RawBox, ...]:
        """The frame's rectangles as boxes, each checked as an export's boxes are."""
        return tuple(
            points_box(
                list(shape.points),
                label=names(shape.label_id),
                where=f"{self.where}: a rectangle of frame {shown(frame)}",
            )
            for shape in shapes
            if str(shape.type) == "rectangle"
        )

    def loader(
        self, frame_index: int, frame: str, boxes: Sequence[RawBox]
    ) -> Callable[[], Image.Image]:
        """Decode the frame when its pixels are needed; only then is its size known to the boxes."""

        def load() -> Image.Image:
            image = bounded_image(self._entry(frame_index, frame), where=self.where, name=frame)
            inside = f"{self.where}: frame {shown(frame)}"
            check_inside(boxes, width=image.width, height=image.height, where=inside)
            return image

        return load

    def _entry(self, frame_index: int, frame: str) -> bytes:
        # Where cvat-sdk finds a frame: chunk frame // chunk_size, and in it the entry
        # frame % chunk_size in the zip's order (entries restart at 000000 in each chunk).
        chunk = self.chunk_dir / f"{frame_index // self.chunk_size}.zip"
        entry = frame_index % self.chunk_size
        where = f"{self.where}: frame {shown(frame)}: cached chunk {chunk.name}, entry {entry}"
        hint = f"the cache may be damaged: remove {self.refetch} to fetch the task again"
        try:
            return _read_entry(chunk, entry, where=where)
        except DataSourceError as error:
            raise DataSourceError(f"{error}; {hint}") from None
        except ZIP_ERRORS as error:
            raise DataSourceError(f"{where} cannot be read ({_brief(error)}); {hint}") from None


def _read_entry(chunk: Path, entry: int, *, where: str) -> bytes:
    with zipfile.ZipFile(chunk) as archive:
        entries = archive.infolist()
        if entry >= len(entries):
            raise DataSourceError(f"{where}: the chunk holds only {len(entries)} entries")
        return read_zip_member(archive, entries[entry], where=where)


def _brief(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]
