"""What ``flotilla data inspect`` reads, and with what: a site's source and the client's settings.

With a job, the settings are the job's (task, labels, model input, seed, validation
fraction) and the source is the site's, or an export given in its place as
``flotilla client --data`` gives one. Without a job, an export is read with its own labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from flotilla.api import (
    CvatExportSource,
    DataSource,
    FederatedJob,
    FederatedJobSpec,
    SpecError,
    TrainingSpec,
)
from flotilla.api.data import ExportFormat
from flotilla.data.site import ImageShape, Task

# Without a job every image is still decoded (a broken one shows), at a size that costs little.
EXPORT_ONLY_SHAPE = ImageShape(channels=3, height=32, width=32)
DEFAULT_VALIDATION_FRACTION = TrainingSpec().validation_fraction
DEFAULT_SEED: int = FederatedJobSpec.model_fields["seed"].default
_SITE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS label, as spec.sites


class TargetError(ValueError):
    """The arguments name nothing to inspect (a usage error, not a data problem)."""


@dataclass(frozen=True)
class Target:
    """What the client would read, and with what.

    ``labels`` None: an export read alone, with the label names found in it; ``task`` None
    then means classification if any frame has a tag, else detection.
    """

    site: str
    source: DataSource
    labels: tuple[str, ...] | None = None
    task: Task | None = None
    shape: ImageShape = EXPORT_ONLY_SHAPE
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = DEFAULT_SEED
    job: str | None = None
    notes: tuple[str, ...] = ()


def choose_target(
    given: str,
    *,
    job: FederatedJob | None,
    site: str | None = None,
    task: Task | None = None,
    format: ExportFormat | None = None,
) -> Target:
    """``given`` is an export (it exists on disk) or, with a job, a site's name."""
    path = Path(given)
    if job is None:
        if site is not None:
            raise TargetError(f"--site {site}: --site needs --job FILE (it names the job's site)")
        if not path.exists():
            raise TargetError(f"{given}: no such export folder or zip (a site name needs --job)")
        return export_alone(path, task=task, format=format)
    if task is not None:
        raise TargetError(f"--task {task}: with --job the task is the job's ({job.spec.task})")
    try:
        if path.exists():
            target = export_for_job(job, path, site=site, format=format)
            if site is None and given in {s.name for s in job.spec.sites}:
                note = (
                    f"{given} exists here and is read as an export PATH, not as the job's "
                    f"site {given}; add --site {given} for that site's labelAliases"
                )
                target = replace(target, notes=(note,))
            return target
        if not _SITE_NAME.match(given):
            raise TargetError(f"{given}: no such export folder or zip, nor a site name")
        if site is not None or format is not None:
            flag = f"--site {site}" if site is not None else f"--format {format}"
            raise TargetError(f"{flag}: only with an export PATH; {given!r} is a site's name")
        return site_of_job(job, given)
    except SpecError as error:
        raise TargetError("; ".join(error.problems)) from None


def export_alone(path: Path, *, task: Task | None, format: ExportFormat | None) -> Target:
    export = CvatExportSource(path=str(path), format=format or "auto")
    return Target(site=path.absolute().name, source=DataSource(cvat_export=export), task=task)


def site_of_job(job: FederatedJob, site: str) -> Target:
    """The site's own source, else ``spec.data``; a SpecError when it has neither."""
    source = job.site_data(site)
    notes: tuple[str, ...] = ()
    if site not in {s.name for s in job.spec.sites}:
        notes = (
            f"site {site} is not listed in spec.sites: it takes spec.data, as a cluster "
            "node matching spec.clients.nodeSelector would",
        )
    return _job_target(job, site=site, source=source, notes=notes)


def export_for_job(
    job: FederatedJob, path: Path, *, site: str | None, format: ExportFormat | None
) -> Target:
    """As ``flotilla client --data PATH`` reads it: the site's label aliases and export
    format (without a site, spec.data's, as an unlisted site has), from ``path``."""
    base = job.site_data(site) if site is not None else job.spec.data
    given = format or (base.cvat_export.format if base and base.cvat_export else "auto")
    export = CvatExportSource(path=str(path), format=given)
    if base is None:
        source = DataSource(cvat_export=export)
    else:
        source = base.model_copy(update={"cvat_export": export, "cvat": None})
    return _job_target(job, site=site or path.absolute().name, source=source)


def _job_target(
    job: FederatedJob, *, site: str, source: DataSource, notes: tuple[str, ...] = ()
) -> Target:
    spec = job.spec
    shape = spec.model.input
    return Target(
        site=site,
        source=source,
        labels=tuple(spec.labels),
        task=spec.task,
        shape=ImageShape(channels=shape.channels, height=shape.height, width=shape.width),
        validation_fraction=spec.training.validation_fraction,
        seed=spec.seed,
        job=job.metadata.name,
        notes=notes,
    )
