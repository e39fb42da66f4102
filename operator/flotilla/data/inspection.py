"""What a site's client would make of its data, before the site joins a job.

``flotilla data inspect`` comes here. The data is read by the client's own reader,
``load_site_data``, with what the client passes it (the job's task, labels and model input,
the site's source and label aliases) and split by the client's own ``split_train_holdout``;
this module only counts what they return and says what would keep the client from training.
Without a job, an export is read with the label names found in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Self

from flotilla.api import DataSource
from flotilla.data.cvat_images import LabelledImages, split_train_holdout
from flotilla.data.detection import DetectionImages
from flotilla.data.errors import DataSourceError
from flotilla.data.exports import read_export
from flotilla.data.inspection_target import Target
from flotilla.data.labels import LabelReport
from flotilla.data.site import Task, load_site_data
from flotilla.redaction import redact_urls


@dataclass(frozen=True)
class LabelCount:
    """One label at the site: frames holding it, its annotations, and frames by split side."""

    frames: int = 0
    annotations: int = 0
    train: int = 0
    holdout: int = 0


@dataclass(frozen=True)
class Split:
    by: Literal["validationSubset", "seeded"]
    train: int
    holdout: int


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    message: str


@dataclass(frozen=True)
class Inspection:
    """The facts ``flotilla data inspect`` prints, as text or JSON."""

    target: Target
    source: str  # the source in words, credentials never shown
    task: Task | None
    labels: tuple[str, ...]
    task_assumed: str | None = None  # why, when no job said it
    report: LabelReport | None = None
    subsets: tuple[tuple[str | None, int], ...] = ()  # frames used, per CVAT subset
    per_label: Mapping[str, LabelCount] | None = None
    split: Split | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def ready(self) -> bool:
        """Whether the client could train on it."""
        return not any(p.severity == "error" for p in self.problems)


def inspect_site(target: Target) -> Inspection:
    """Read the target as its client would; a DataSourceError becomes the inspection's error."""
    source = describe(target.source)
    try:
        task, labels, assumed = _task_and_labels(target)
        data = load_site_data(
            site=target.site, source=target.source, task=task, labels=labels, shape=target.shape
        )
    except DataSourceError as error:
        problem = Problem("error", redact_urls(str(error)))
        labels_known = target.labels or ()
        return Inspection(target, source, target.task, labels_known, problems=(problem,))
    samples = data.samples
    train, holdout = split_train_holdout(
        _Rows(samples.subsets, tuple(range(len(samples)))),
        validation_fraction=target.validation_fraction,
        seed=target.seed,
    )
    # As split_train_holdout decides: a Validation subset is the hold-out, else a seeded cut.
    marked = any((s or "").lower() == "validation" for s in samples.subsets)
    split = Split("validationSubset" if marked else "seeded", len(train), len(holdout))
    return Inspection(
        target,
        source,
        task,
        labels,
        task_assumed=assumed,
        report=data.report,
        subsets=tuple(Counter(samples.subsets).items()),
        per_label=_per_label(labels, _annotations(samples), held_out=set(holdout.rows)),
        split=split,
        problems=_problems(source, target=target, task=task, report=data.report, split=split),
    )


def describe(source: DataSource) -> str:
    if source.cvat_export is not None:
        export = source.cvat_export
        form = "" if export.format == "auto" else f" ({export.format})"
        return f"CVAT export {export.path}{form}"
    assert source.cvat is not None  # DataSource's validator: exactly one source
    cvat = source.cvat
    where = redact_urls(cvat.url) if cvat.url else "(URL from the credentials)"
    if cvat.project_id is not None:
        return f"CVAT {where}, project {cvat.project_id}"
    return f"CVAT {where}, tasks {', '.join(str(t) for t in cvat.task_ids)}"


def _task_and_labels(target: Target) -> tuple[Task, tuple[str, ...], str | None]:
    """The job's task and labels; for an export alone, the ones its frames show."""
    if target.labels is not None and target.task is not None:
        return target.task, target.labels, None
    export = target.source.cvat_export
    assert export is not None  # only an export is read without a job
    try:
        frames = read_export(Path(export.path), format=export.format)
    except DataSourceError as error:
        raise DataSourceError(f"site {target.site}: {error}") from None
    tagged = any(frame.tags for frame in frames)
    boxed = any(frame.boxes for frame in frames)
    task: Task = target.task or ("classification" if tagged else "detection")
    if task == "classification":
        names = {tag for frame in frames for tag in frame.tags}
    else:
        names = {box.label for frame in frames for box in frame.boxes}
    assumed = None
    if target.task is None:
        assumed = "tags found" if tagged else ("no tags, rectangles" if boxed else "no tags")
    return task, tuple(sorted(names)), assumed


@dataclass(frozen=True)
class _Rows:
    """Row numbers with the samples' subsets: ``split_train_holdout`` splits them as it
    would split the samples (it reads only subsets and length), without copying images."""

    subsets: tuple[str | None, ...]
    rows: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: Sequence[int]) -> Self:
        subsets = tuple(self.subsets[i] for i in index)
        return replace(self, subsets=subsets, rows=tuple(self.rows[i] for i in index))


def _annotations(samples: LabelledImages | DetectionImages) -> list[list[int]]:
    """Per sample, the job's label index of each of its annotations."""
    if isinstance(samples, LabelledImages):
        return [[index] for index in samples.labels.tolist()]
    return [labels.tolist() for labels in samples.labels]


def _per_label(
    labels: Sequence[str], annotations: Sequence[Sequence[int]], *, held_out: set[int]
) -> dict[str, LabelCount]:
    frames: Counter[int] = Counter()
    boxes: Counter[int] = Counter()
    held: Counter[int] = Counter()
    for row, indices in enumerate(annotations):
        boxes.update(indices)
        frames.update(set(indices))
        if row in held_out:
            held.update(set(indices))
    return {
        name: LabelCount(frames[i], boxes[i], frames[i] - held[i], held[i])
        for i, name in enumerate(labels)
    }


def _problems(
    source: str, *, target: Target, task: Task, report: LabelReport, split: Split
) -> tuple[Problem, ...]:
    problems: list[Problem] = []
    theirs = " with the job's labels" if target.job is not None else ""
    if report.unannotated:
        kind = "tag" if task == "classification" else "rectangle"
        problems.append(
            Problem(
                "warning",
                f"{source}: {report.unannotated} of {report.frames} frames have no {kind}"
                f"{theirs} and are not used",
            )
        )
    if report.ambiguous:
        problems.append(
            Problem(
                "warning",
                f"{source}: {report.ambiguous} frames have two or more tags{theirs} and "
                "are not used (a classification frame has one)",
            )
        )
    if split.train == 0:
        where = "in the Validation subset" if split.by == "validationSubset" else "held out"
        message = f"{source}: nothing to train on: all {report.used} usable frames are {where}"
        problems.append(Problem("error", message))
    elif split.holdout == 0:
        message = f"{source}: no hold-out frames: the site reports no hold-out metrics"
        problems.append(Problem("warning", message))
    return tuple(problems)
