"""An ``Inspection`` in words for a person, or as JSON for a program: the same facts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flotilla.data.inspection import Inspection, LabelCount

_SPLIT_BY = {
    "validationSubset": "the Validation subset",
    "seeded": "a seeded split",
}


def as_json(inspection: Inspection) -> dict[str, Any]:
    """camelCase and JSON-safe; the label report is the one the client sends."""
    target = inspection.target
    split = inspection.split
    return {
        "site": target.site,
        "source": inspection.source,
        "job": target.job,
        "task": inspection.task,
        "taskAssumed": inspection.task_assumed,
        "input": {
            "channels": target.shape.channels,
            "height": target.shape.height,
            "width": target.shape.width,
        },
        "ready": inspection.ready,
        "error": next((p.message for p in inspection.problems if p.severity == "error"), None),
        "labelReport": inspection.report.as_metrics() if inspection.report else None,
        "subsets": [{"subset": subset, "frames": frames} for subset, frames in inspection.subsets],
        "labels": {name: asdict(count) for name, count in (inspection.per_label or {}).items()},
        "split": None
        if split is None
        else {
            "by": split.by,
            "validationFraction": target.validation_fraction,
            "seed": target.seed,
            "train": split.train,
            "holdout": split.holdout,
        },
        "notes": list(target.notes),
        "problems": [{"severity": p.severity, "message": p.message} for p in inspection.problems],
    }


def as_text(inspection: Inspection) -> str:
    lines = [f"site {inspection.target.site}: {inspection.source}", _settings(inspection)]
    lines += [f"  note: {note}" for note in inspection.target.notes]
    if inspection.report is not None:
        report = inspection.report
        lines.append(
            f"frames: {report.frames} read, {report.used} used, {report.unannotated} without "
            f"a usable annotation, {report.ambiguous} ambiguous"
        )
        used = ", ".join(f"{subset or '(none)'} {n}" for subset, n in inspection.subsets)
        lines.append(f"subsets of the frames used: {used}")
        lines += _label_table(inspection)
        lines.append(_split_line(inspection))
        lines += _mapping(inspection)
    if inspection.problems:
        lines.append("problems:")
        lines += [f"  {p.severity}: {p.message}" for p in inspection.problems]
    lines.append(_verdict(inspection))
    return "\n".join(lines) + "\n"


def _settings(inspection: Inspection) -> str:
    target = inspection.target
    shape = target.shape
    size = f"{shape.channels}x{shape.height}x{shape.width}"
    labels = ", ".join(inspection.labels) or ("(none found)" if inspection.report else "(not read)")
    if target.job is not None:
        return f"  job {target.job}: task {inspection.task}, labels {labels}; input {size}"
    task = inspection.task or "unknown"
    assumed = f" (assumed: {inspection.task_assumed})" if inspection.task_assumed else ""
    return (
        f"  no job: task {task}{assumed}, the export's own labels {labels}; "
        f"images decoded at {size}"
    )


def _label_table(inspection: Inspection) -> list[str]:
    counts = inspection.per_label or {}
    width = max([len("label"), *(len(name) for name in counts)])
    boxes = inspection.task == "detection"
    head = f"  {'label':<{width}}  frames" + ("   boxes" if boxes else "") + "   train  hold-out"
    return [head, *(_label_row(name, count, width, boxes) for name, count in counts.items())]


def _label_row(name: str, count: LabelCount, width: int, boxes: bool) -> str:
    middle = f"  {count.annotations:>6}" if boxes else ""
    return f"  {name:<{width}}  {count.frames:>6}{middle}  {count.train:>6}  {count.holdout:>8}"


def _split_line(inspection: Inspection) -> str:
    split = inspection.split
    assert split is not None  # a report comes with its split
    target = inspection.target
    how = _SPLIT_BY[split.by]
    if split.by == "seeded":
        how += (
            f" (validationFraction {target.validation_fraction}, seed {target.seed}; "
            "no Validation subset)"
        )
    return f"hold-out: {how}: {split.train} train, {split.holdout} hold-out"


def _mapping(inspection: Inspection) -> list[str]:
    report = inspection.report
    if inspection.target.job is None or report is None:
        return []
    aliased = ", ".join(f"{site} -> {job}" for site, job in report.aliased.items())
    ignored = ", ".join(
        f"{name} ({n} annotation{'' if n == 1 else 's'})" for name, n in report.ignored.items()
    )
    return [
        "labels against the job's:",
        f"  aliased: {aliased or 'none'}",
        f"  ignored, the job lacks them: {ignored or 'none'}",
        f"  missing at this site: {', '.join(report.missing) or 'none'}",
    ]


def _verdict(inspection: Inspection) -> str:
    split = inspection.split
    if inspection.ready and split is not None:
        return f"the client can train on this: {split.train} train, {split.holdout} hold-out"
    return "the client cannot train on this (exit status 1)"
