"""The site's data as its client trains on it, and what the aggregator hears about it.

Read from the site's source in the job (or the export a node names instead), split into
training and hold-out examples. A site whose data cannot be read (CVAT refuses or is
down, a malformed export) reads it again after a doubling wait. `report` is what the
aggregator is told: ready, with the labels found and the split's sizes, or not, with why.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flotilla.api import CvatExportSource, FederatedJob
from flotilla.data import (
    DataSourceError,
    ImageShape,
    LabelReport,
    load_site_data,
    split_train_holdout,
)
from flotilla.fl.learning import Samples
from flotilla.redaction import redact_urls

log = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 300.0


class SiteData:
    def __init__(
        self, job: FederatedJob, site: str, *, data_path: Path | None, retry_seconds: float
    ) -> None:
        self.job = job
        self.site = site
        self.data_path = data_path
        self.retry_seconds = retry_seconds
        self.train: Samples | None = None
        self.holdout: Samples | None = None
        self.report: dict[str, Any] = {"ready": False, "error": "its data was not read yet"}
        self.next_try = 0.0  # time.monotonic() when to read it again, while it is not ready

    def load(self) -> None:
        """Read the data (files, or a CVAT server), or keep why not and when to try again."""
        try:
            samples, report = self._read()
        except DataSourceError as error:
            log.error(
                "site %s: cannot read its data, retrying in %.0fs: %s",
                self.site,
                self.retry_seconds,
                error,
            )
            # A CVAT URL's credentials stay on the site: the report goes to the aggregator.
            self.report = {"ready": False, "error": redact_urls(str(error))}
            self.next_try = time.monotonic() + self.retry_seconds
            self.retry_seconds = min(self.retry_seconds * 2, MAX_RETRY_SECONDS)
            return
        spec = self.job.spec
        self.train, self.holdout = split_train_holdout(
            samples, validation_fraction=spec.training.validation_fraction, seed=spec.seed
        )
        self.report = {
            "ready": True,
            "data": report.as_metrics() | {"train": len(self.train), "holdout": len(self.holdout)},
        }

    def _read(self) -> tuple[Samples, LabelReport]:
        spec = self.job.spec
        source = self.job.site_data(self.site)
        if self.data_path is not None:
            given = source.cvat_export.format if source.cvat_export else "auto"
            export = CvatExportSource(path=str(self.data_path), format=given)
            source = source.model_copy(update={"cvat_export": export, "cvat": None})
        data = load_site_data(
            site=self.site,
            source=source,
            task=spec.task,
            labels=spec.labels,
            shape=ImageShape(
                channels=spec.model.input.channels,
                height=spec.model.input.height,
                width=spec.model.input.width,
            ),
        )
        return data.samples, data.report
