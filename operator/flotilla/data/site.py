"""A site's data for the job: frames from an export or a live CVAT, mapped to the job's labels.

The one entry point for a client is ``load_site_data``: it reads the site's source, maps
label names through the site's aliases to the job's indices, keeps only annotated frames,
loads pixels at the model's input size (boxes scaled with them) and returns the samples
with a ``LabelReport``. Every failure is a ``DataSourceError`` that names the site and the
source: the readers name their file or server, and mapping errors name the source through
``describe_source``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from flotilla.api.data import DataSource
from flotilla.data.cvat_images import LabelledImages
from flotilla.data.detection import DetectionImages
from flotilla.data.errors import DataSourceError
from flotilla.data.exports import read_export
from flotilla.data.frames import RawFrame
from flotilla.data.labels import LabelMap, LabelReport
from flotilla.redaction import redact_urls

log = logging.getLogger(__name__)

Task = Literal["classification", "detection"]
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
Chosen = list[tuple[RawFrame, list[int], np.ndarray]]  # frame, job indices, box corners


@dataclass(frozen=True)
class ImageShape:
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class SiteData:
    """A site's samples (classification or detection) and what its labels looked like."""

    samples: LabelledImages | DetectionImages
    report: LabelReport


def load_site_data(
    *,
    site: str,
    source: DataSource,
    task: Task,
    labels: Sequence[str],
    shape: ImageShape,
    cache_dir: Path | None = None,
) -> SiteData:
    """Read, map and load a site's data; ``DataSourceError`` names the site on any failure."""
    try:
        frames, where = _frames(site=site, source=source, cache_dir=cache_dir)
        label_map = _label_map(labels=labels, aliases=source.label_aliases, where=where)
        data = _build(frames, task=task, label_map=label_map, shape=shape, where=where)
    except DataSourceError as error:
        raise DataSourceError(f"site {site}: {error}") from None
    if data.report.ignored:
        log.warning(
            "site %s: ignored labels the job does not know: %s", site, dict(data.report.ignored)
        )
    if data.report.missing:
        log.info("site %s: no annotations for the job's labels %s", site, data.report.missing)
    return data


def describe_source(source: DataSource, *, server: str | None = None) -> str:
    """How a message names a source: the export's path, or the CVAT server and its tasks.

    ``server`` is the URL the reader used, which may have come from the credentials;
    without it (nothing read yet) the spec's URL names the server, if it has one.
    """
    if source.cvat_export is not None:
        return f"CVAT export {source.cvat_export.path}"
    assert source.cvat is not None  # DataSource's validator: exactly one source
    cvat = source.cvat
    url = server or cvat.url
    server = redact_urls(url) if url else "(URL from the credentials)"
    if cvat.project_id is not None:
        return f"CVAT {server}, project {cvat.project_id}"
    ids = ", ".join(str(task_id) for task_id in cvat.task_ids)
    return f"CVAT {server}, task{'s' if len(cvat.task_ids) > 1 else ''} {ids}"


def _label_map(*, labels: Sequence[str], aliases: Mapping[str, str], where: str) -> LabelMap:
    try:
        return LabelMap(labels=labels, aliases=aliases)
    except DataSourceError as error:
        raise DataSourceError(f"{where}: {error}") from None


def _frames(*, site: str, source: DataSource, cache_dir: Path | None) -> tuple[list[RawFrame], str]:
    """The source's frames, and how messages name it (a live server by the URL it was read at)."""
    if source.cvat_export is not None:
        export = source.cvat_export
        return read_export(Path(export.path), format=export.format), describe_source(source)
    assert source.cvat is not None  # DataSource's validator: exactly one source
    from flotilla.data.cvat_live import read_cvat_source  # cvat-sdk only when it is used

    read = read_cvat_source(site=site, source=source.cvat, cache_dir=cache_dir)
    return read.frames, describe_source(source, server=read.server)


def build_samples(
    frames: Sequence[RawFrame],
    *,
    task: Task,
    label_map: LabelMap,
    shape: ImageShape,
    where: str = "the frames given",
) -> SiteData:
    """Map and load frames that were already read (used by tests and by other readers);
    ``where`` names their source in errors, as ``describe_source`` does."""
    return _build(frames, task=task, label_map=label_map, shape=shape, where=where)


def _build(
    frames: Sequence[RawFrame], *, task: Task, label_map: LabelMap, shape: ImageShape, where: str
) -> SiteData:
    if shape.channels not in _MODES:
        raise DataSourceError(
            f"{where}: images with {shape.channels} channels are not supported (1, 3, 4)"
        )
    chosen, ambiguous = _choose(frames, task=task, label_map=label_map)
    if not chosen:
        raise DataSourceError(_nothing_usable(frames, task=task, label_map=label_map, where=where))
    for _, indices, _ in chosen:
        for index in indices:
            label_map.seen(index)
    report = label_map.report(
        frames=len(frames),
        used=len(chosen),
        unannotated=len(frames) - len(chosen) - ambiguous,
        ambiguous=ambiguous,
    )
    return SiteData(_tensors(chosen, task=task, shape=shape), report)


def _choose(frames: Sequence[RawFrame], *, task: Task, label_map: LabelMap) -> tuple[Chosen, int]:
    """The frames with a usable annotation for the task, and how many were ambiguous."""
    chosen: Chosen = []
    ambiguous = 0
    for frame in frames:
        if task == "classification":
            found = sorted({i for t in frame.tags if (i := label_map.index(t)) is not None})
            if len(found) > 1:
                ambiguous += 1
            elif found:
                chosen.append((frame, found, np.zeros((0, 4), np.float32)))
        else:
            kept = [(b, i) for b in frame.boxes if (i := label_map.index(b.label)) is not None]
            if kept:
                corners = np.array([[b.xtl, b.ytl, b.xbr, b.ybr] for b, _ in kept], np.float32)
                chosen.append((frame, [i for _, i in kept], corners))
    return chosen, ambiguous


def _nothing_usable(
    frames: Sequence[RawFrame], *, task: Task, label_map: LabelMap, where: str
) -> str:
    kind, other = ("tags", "rectangles") if task == "classification" else ("rectangles", "tags")
    others = sorted(label_map.report(frames=0, used=0, unannotated=0, ambiguous=0).ignored)
    message = (
        f"no annotated frames ({kind}) with the job's labels among {len(frames)} frames of "
        f"{where}; expected some of {list(label_map.labels)}, found others: {others}"
    )
    # The other kind of annotation is not counted above: a detection export given to a
    # classification job (or the reverse) would otherwise read as an empty one.
    if any(f.boxes if task == "classification" else f.tags for f in frames):
        message += f" (the frames hold {other}, which a {task} job does not use)"
    return message


def _tensors(chosen: Chosen, *, task: Task, shape: ImageShape) -> LabelledImages | DetectionImages:
    images = np.empty((len(chosen), shape.channels, shape.height, shape.width), np.float32)
    boxes: list[torch.Tensor] = []
    for row, (frame, _, corners) in enumerate(chosen):
        images[row], scale = _pixels(frame, shape)
        scaled = np.clip(corners * scale, 0, [shape.width, shape.height] * 2)
        boxes.append(torch.from_numpy(scaled.astype(np.float32)))
    subsets = tuple(frame.subset for frame, _, _ in chosen)
    if task == "classification":
        labels = torch.tensor([indices[0] for _, indices, _ in chosen], dtype=torch.int64)
        return LabelledImages(torch.from_numpy(images), labels, subsets)
    return DetectionImages(
        images=torch.from_numpy(images),
        boxes=tuple(boxes),
        labels=tuple(torch.tensor(i, dtype=torch.int64) for _, i, _ in chosen),
        subsets=subsets,
    )


def _pixels(frame: RawFrame, shape: ImageShape) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    image = frame.load().convert(_MODES[shape.channels])
    width, height = image.size
    if (width, height) != (shape.width, shape.height):
        image = image.resize((shape.width, shape.height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    pixels = array[None] if shape.channels == 1 else array.transpose(2, 0, 1)
    scale = np.array([shape.width / width, shape.height / height] * 2, np.float32)
    return pixels, scale
