"""The export side of the CVAT double: background requests and the zips they hand out.

As CVAT 2.23.1 answers (current servers alike): a request id that needs quoting in a URL
(``action=export&target=task&...``); a request reads ``queued``, then ``started``, then
``finished`` with a ``result_url`` (built from the ``Host`` the server was asked by) or
``failed`` with a ``message``; the zip is laid out by ``cvat_exports_2x``'s writers from
the fake tasks' frames, tags, boxes and subsets. Pure builders, no HTTP.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.unit.cvat_double_shapes import DATE, FakeTask
from tests.unit.cvat_exports_2x import (
    Frame,
    Task,
    write_coco_export,
    write_project_export,
    write_task_export,
    zipped,
)

EXPORT_FORMATS = ("CVAT for images 1.1", "COCO 1.0")


@dataclass
class ExportRequest:
    id: str
    target: str  # "task" or "project"
    target_id: int
    format: str
    owner: str
    owner_id: int
    polls: int = 0  # how often it was asked about


def request_id(*, target: str, target_id: int, format: str, user_id: int) -> str:
    shown = format.replace(" ", "_").replace(".", "~")
    return (
        f"action=export&target={target}&target_id={target_id}&user_id={user_id}"
        f"&format={shown}&subresource=dataset"
    )


def request_json(
    request: ExportRequest, *, status: str, message: str, result_url: str | None
) -> dict[str, Any]:
    task_or_project = {"project_id": None, "task_id": None} | {
        f"{request.target}_id": request.target_id
    }
    return {
        "status": status,
        "message": message,
        "id": request.id,
        "operation": {
            "type": "export:dataset",
            "target": request.target,
            "job_id": None,
            "format": request.format,
            "function_id": None,
        }
        | task_or_project,
        "progress": 1.0 if status == "finished" else 0.0,
        "created_date": DATE,
        "started_date": None if status == "queued" else DATE,
        "finished_date": DATE if status in ("finished", "failed") else None,
        "expiry_date": DATE if status == "finished" else None,
        "owner": {"id": request.owner_id, "username": request.owner},
        "result_url": result_url,
        "result_id": None,
    }


def export_zip(tasks: Sequence[FakeTask], *, project_id: int | None, format: str) -> bytes:
    """The zip CVAT would hand out for these tasks (one task, or a project's)."""
    names = {label_id: name for task in tasks for label_id, name in task.labels}
    labels = [names[label_id] for label_id in sorted(names)]
    written = [_written(task, names) for task in tasks]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "export"
        if format == "COCO 1.0":
            write_coco_export(folder, tasks=written, labels=labels)
        elif project_id is None:
            write_task_export(folder, task=written[0], labels=labels)
        else:
            write_project_export(folder, project_id=project_id, tasks=written, labels=labels)
        return zipped(folder).read_bytes()


def _written(task: FakeTask, names: dict[int, str]) -> Task:
    frames = []
    for index, pixels in enumerate(task.frames):
        tags = tuple(names[label] for frame, label in task.tags if frame == index)
        boxes = tuple(
            (names[label], *map(float, points[:4]))
            for frame, label, points in task.boxes
            if frame == index
        )
        name = f"frame_{index:06d}.{task.original_format}"
        frames.append(Frame(name, pixels, tags, boxes))  # type: ignore[arg-type]
    return Task(task.id, f"task-{task.id}", task.subset, frames)
