"""The JSON and chunk shapes the CVAT double answers with, as CVAT 2.23.1 gives them.

Pure builders, no HTTP: a task, a project, a label, a user, frame metadata,
annotations and a chunk zip. Chunk zip entries restart at ``000000`` in every chunk;
compressed chunks hold JPEG images named ``.jpeg``, original chunks the uploaded files.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

DATE = "2024-05-01T10:00:00.000000Z"


@dataclass
class FakeTask:
    id: int
    labels: list[tuple[int, str]]  # (label id, name); a project's tasks share the project's
    frames: list[np.ndarray]  # uint8 (H, W, 3)
    tags: list[tuple[int, int]] = field(default_factory=list)  # (frame, label id)
    boxes: list[tuple[int, int, list[float]]] = field(default_factory=list)  # frame, label, xyxy
    subset: str = ""
    project_id: int | None = None
    chunk_size: int = 2  # real servers use tens (36 is common)
    updated: str = DATE
    owner: str = "alice"  # who may read it (besides nobody else: no roles in the double)
    original_format: str = "png"  # the uploaded images' format: "png" or "jpeg"


def user_json(base: str, user_id: int, username: str) -> dict[str, Any]:
    return {
        "url": f"{base}/users/{user_id}",
        "id": user_id,
        "username": username,
        "first_name": "",
        "last_name": "",
    }


def self_json(base: str, user_id: int, username: str) -> dict[str, Any]:
    return user_json(base, user_id, username) | {
        "email": f"{username}@example.org",
        "groups": ["user"],
        "is_staff": False,
        "is_superuser": False,
        "is_active": True,
        "last_login": DATE,
        "date_joined": DATE,
        "has_analytics_access": False,
    }


def task_json(base: str, task: FakeTask, owner_id: int) -> dict[str, Any]:
    return {
        "url": f"{base}/tasks/{task.id}",
        "id": task.id,
        "name": f"task-{task.id}",
        "project_id": task.project_id,
        "mode": "annotation",
        "owner": user_json(base, owner_id, task.owner),
        "assignee": None,
        "bug_tracker": "",
        "created_date": DATE,
        "updated_date": task.updated,
        "overlap": None,
        "segment_size": len(task.frames),
        "status": "annotation",
        "data_chunk_size": task.chunk_size,
        "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset",
        "guide_id": None,
        "size": len(task.frames),
        "image_quality": 70,
        "data": task.id,
        "dimension": "2d",
        "subset": task.subset,
        "organization": None,
        "target_storage": None,
        "source_storage": None,
        "jobs": {
            "count": 1,
            "completed": 0,
            "validation": 0,
            "url": f"{base}/jobs?task_id={task.id}",
        },
        "labels": {"url": f"{base}/labels?task_id={task.id}"},
    }


def project_json(base: str, project_id: int, task_count: int) -> dict[str, Any]:
    return {
        "url": f"{base}/projects/{project_id}",
        "id": project_id,
        "name": "p",
        "owner": None,
        "assignee": None,
        "guide_id": None,
        "bug_tracker": "",
        "task_subsets": [],
        "created_date": DATE,
        "updated_date": DATE,
        "status": "annotation",
        "dimension": "2d",
        "organization": None,
        "target_storage": None,
        "source_storage": None,
        "tasks": {"count": task_count, "url": f"{base}/tasks?project_id={project_id}"},
        "labels": {"url": f"{base}/labels?project_id={project_id}"},
    }


def label_json(label_id: int, name: str, *, owner: dict[str, int]) -> dict[str, Any]:
    """``owner`` is ``{"project_id": n}`` or ``{"task_id": n}``: the server drops the other key."""
    return {
        "id": label_id,
        "name": name,
        "color": "#ff0000",
        "attributes": [],
        "type": "any",
        "svg": "",
        "sublabels": [],
        "parent_id": None,
        "has_parent": False,
    } | owner


def meta_json(task: FakeTask) -> dict[str, Any]:
    frames = [
        {
            "width": f.shape[1],
            "height": f.shape[0],
            "name": f"frame_{i:06d}.{task.original_format}",
            "related_files": 0,
            "has_related_context": False,
        }
        for i, f in enumerate(task.frames)
    ]
    return {
        "chunk_size": task.chunk_size,
        "size": len(task.frames),
        "image_quality": 70,
        "start_frame": 0,
        "stop_frame": len(task.frames) - 1,
        "frame_filter": "",
        "frames": frames,
        "deleted_frames": [],
        "included_frames": None,
        "chunks_updated_date": DATE,
        "storage": "local",
        "cloud_storage_id": None,
    }


def annotations_json(task: FakeTask) -> dict[str, Any]:
    common = {"group": 0, "source": "manual", "attributes": []}
    tags = [
        {"id": n, "frame": f, "label_id": label} | common
        for n, (f, label) in enumerate(task.tags, 1)
    ]
    shapes = [
        {
            "type": "rectangle",
            "occluded": False,
            "outside": False,
            "z_order": 0,
            "rotation": 0.0,
            "points": points,
            "id": n,
            "frame": f,
            "label_id": label,
            "elements": [],
        }
        | common
        for n, (f, label, points) in enumerate(task.boxes, 1)
    ]
    return {"version": 0, "tags": tags, "shapes": shapes, "tracks": []}


def chunk_zip(task: FakeTask, number: int, *, original: bool) -> bytes | None:
    """Chunk ``number`` of the task, or None past its end; entries restart at 000000."""
    start = number * task.chunk_size
    frames = task.frames[start : start + task.chunk_size]
    if number < 0 or not frames:
        return None
    kind = task.original_format if original else "jpeg"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as chunk:
        for member, pixels in enumerate(frames):
            image = io.BytesIO()
            Image.fromarray(pixels).save(image, format=kind.upper(), quality=95)
            chunk.writestr(f"{member:06d}.{kind}", image.getvalue())
    return buffer.getvalue()
