"""An HTTP double of the CVAT 2.x REST API, for the endpoints cvat-sdk calls to read a task.

It answers with the JSON shapes a real server gives (``/api/server/about``,
``/api/auth/login`` with session and CSRF cookies, bearer access tokens, ``/api/users/self``,
``/api/tasks/{id}``, ``/api/tasks?project_id=``, ``/api/projects/{id}``, ``/api/labels``,
``/api/tasks/{id}/data/meta``, ``/api/tasks/{id}/data/?type=chunk``,
``/api/tasks/{id}/annotations/``, paths as the SDK writes them), so tests run the real SDK
code. ``version`` plays an older server; an old ``About`` lacks ``logo_url`` and
``subtitle``, as CVAT 2.2x's did.
Runs aiohttp on 127.0.0.1 in its own thread (the SDK is blocking).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image

DATE = "2024-05-01T10:00:00.000000Z"
SESSION, CSRF = "session-123", "csrf-456"


@dataclass
class FakeTask:
    id: int
    labels: list[tuple[int, str]]  # (label id, name)
    frames: list[np.ndarray]  # uint8 (H, W, 3)
    tags: list[tuple[int, int]] = field(default_factory=list)  # (frame, label id)
    boxes: list[tuple[int, int, list[float]]] = field(default_factory=list)  # frame, label, xyxy
    subset: str = ""
    project_id: int | None = None
    chunk_size: int = 2
    updated: str = DATE


@dataclass
class CvatDouble:
    version: str = "2.40.1"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret"})
    tokens: set[str] = field(default_factory=lambda: {"tok-789"})
    tasks: dict[int, FakeTask] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._app())
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/server/about", self._about)
        app.router.add_post("/api/auth/login", self._login)
        app.router.add_get("/api/users/self", self._self)
        app.router.add_get("/api/tasks", self._task_list)
        app.router.add_get("/api/tasks/{id}", self._task)
        app.router.add_get("/api/projects/{id}", self._project)
        app.router.add_get("/api/labels", self._labels)
        app.router.add_get("/api/tasks/{id}/data/meta", self._meta)
        app.router.add_get("/api/tasks/{id}/data/", self._chunk)
        app.router.add_get("/api/tasks/{id}/annotations/", self._annotations)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        public = request.path in ("/api/server/about", "/api/auth/login")
        if not public and not self._authorized(request):
            return web.json_response(
                {"detail": "Authentication credentials were not provided."}, status=401
            )
        response: web.StreamResponse = await handler(request)
        return response

    def _authorized(self, request: web.Request) -> bool:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return bearer in self.tokens or request.cookies.get("sessionid") == SESSION

    async def _about(self, request: web.Request) -> web.Response:
        about = {
            "name": "Computer Vision Annotation Tool",
            "description": "CVAT",
            "version": self.version,
        }
        if not self.version.startswith("2.2"):
            about |= {"logo_url": "/static/logo.svg", "subtitle": "Open Data Annotation Platform"}
        return web.json_response(about)

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.users.get(body.get("username", "")) != body.get("password"):
            errors = {"non_field_errors": ["Unable to log in with provided credentials."]}
            return web.json_response(errors, status=400)
        response = web.json_response({"key": "legacy-token"})
        response.set_cookie("sessionid", SESSION, path="/", httponly=True)
        response.set_cookie("csrftoken", CSRF, path="/")
        return response

    async def _self(self, request: web.Request) -> web.Response:
        user = {
            "url": f"{self.url}/api/users/1",
            "id": 1,
            "username": "alice",
            "first_name": "",
            "last_name": "",
            "email": "alice@example.org",
            "groups": ["user"],
            "is_staff": False,
            "is_superuser": False,
            "is_active": True,
            "last_login": DATE,
            "date_joined": DATE,
            "has_analytics_access": False,
        }
        return web.json_response(user)

    def _fake(self, request: web.Request) -> FakeTask:
        task = self.tasks.get(int(request.match_info["id"]))
        if task is None:
            raise web.HTTPNotFound(
                text=json.dumps({"detail": "Not found."}), content_type="application/json"
            )
        return task

    def _task_json(self, task: FakeTask) -> dict[str, Any]:
        base = f"{self.url}/api"
        return {
            "url": f"{base}/tasks/{task.id}",
            "id": task.id,
            "name": f"task-{task.id}",
            "project_id": task.project_id,
            "mode": "annotation",
            "owner": {
                "url": f"{base}/users/1",
                "id": 1,
                "username": "alice",
                "first_name": "",
                "last_name": "",
            },
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

    async def _task(self, request: web.Request) -> web.Response:
        return web.json_response(self._task_json(self._fake(request)))

    async def _task_list(self, request: web.Request) -> web.Response:
        project = int(request.query.get("project_id", "0"))
        found = [self._task_json(t) for t in self.tasks.values() if t.project_id == project]
        return web.json_response(
            {"count": len(found), "next": None, "previous": None, "results": found}
        )

    async def _project(self, request: web.Request) -> web.Response:
        project = int(request.match_info["id"])
        count = sum(t.project_id == project for t in self.tasks.values())
        if not count:
            raise web.HTTPNotFound(text='{"detail": "Not found."}', content_type="application/json")
        return web.json_response(
            {
                "url": f"{self.url}/api/projects/{project}",
                "id": project,
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
                "tasks": {"count": count, "url": f"{self.url}/api/tasks?project_id={project}"},
                "labels": {"url": f"{self.url}/api/labels?project_id={project}"},
            }
        )

    async def _labels(self, request: web.Request) -> web.Response:
        if "project_id" in request.query:
            project = int(request.query["project_id"])
            tasks = [t for t in self.tasks.values() if t.project_id == project]
            owner: dict[str, int | None] = {"project_id": project, "task_id": None}
        else:
            tasks = [self.tasks[int(request.query["task_id"])]]
            owner = {"project_id": None, "task_id": tasks[0].id}
        named = {i: name for task in tasks for i, name in task.labels}
        results = [
            {
                "id": i,
                "name": name,
                "color": "#ff0000",
                "attributes": [],
                "type": "any",
                "svg": "",
                "sublabels": [],
                "parent_id": None,
                "has_parent": False,
            }
            | owner
            for i, name in named.items()
        ]
        page = {"count": len(results), "next": None, "previous": None, "results": results}
        return web.json_response(page)

    async def _meta(self, request: web.Request) -> web.Response:
        task = self._fake(request)
        frames = [
            {
                "width": f.shape[1],
                "height": f.shape[0],
                "name": f"frame_{i:06d}.png",
                "related_files": 0,
                "has_related_context": False,
            }
            for i, f in enumerate(task.frames)
        ]
        return web.json_response(
            {
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
        )

    async def _chunk(self, request: web.Request) -> web.Response:
        task = self._fake(request)
        assert request.query["type"] == "chunk", request.query
        number = int(request.query["number"])
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as chunk:
            start = number * task.chunk_size
            for i, pixels in enumerate(task.frames[start : start + task.chunk_size], start):
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                chunk.writestr(f"{i:06d}.png", png.getvalue())
        return web.Response(body=buffer.getvalue(), content_type="application/zip")

    async def _annotations(self, request: web.Request) -> web.Response:
        task = self._fake(request)
        tags = [
            {
                "id": n,
                "frame": f,
                "label_id": label,
                "group": 0,
                "source": "manual",
                "attributes": [],
            }
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
                "group": 0,
                "source": "manual",
                "attributes": [],
                "elements": [],
            }
            for n, (f, label, points) in enumerate(task.boxes, 1)
        ]
        return web.json_response({"version": 0, "tags": tags, "shapes": shapes, "tracks": []})
