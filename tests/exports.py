"""Read a CVAT export the way a client does, for tests that need its tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flotilla.api.data import CvatExportSource, DataSource
from flotilla.data import ImageShape, LabelledImages, SiteData, load_site_data


def read_export(
    source: Path,
    *,
    labels: Sequence[str],
    channels: int,
    height: int,
    width: int,
    aliases: dict[str, str] | None = None,
) -> SiteData:
    return load_site_data(
        site="test",
        source=DataSource(
            cvat_export=CvatExportSource(path=str(source)), label_aliases=aliases or {}
        ),
        task="classification",
        labels=labels,
        shape=ImageShape(channels=channels, height=height, width=width),
    )


def load_classification(
    source: Path, *, labels: Sequence[str], channels: int, height: int, width: int
) -> LabelledImages:
    samples = read_export(source, labels=labels, channels=channels, height=height, width=width)
    assert isinstance(samples.samples, LabelledImages)
    return samples.samples
