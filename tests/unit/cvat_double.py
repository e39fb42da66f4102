"""An HTTP double of the CVAT REST API, for the endpoints cvat-sdk calls to read a task.

It answers as a real server does (checked against CVAT 2.23.1), so tests run the real
SDK code: JSON as ``application/vnd.cvat+json``; lists (``/api/tasks``, ``/api/jobs``,
``/api/labels``) paged as ``{"count", "next", "previous", "results"}`` with ``next`` a
full URL with ``page=N`` (``page_size`` items a page, 10 by default, as on real servers);
errors as ``{"detail": "..."}``; one job per task, listed to the task's owner alone;
chunk zips whose entries restart at ``000000`` per chunk; a
task readable only by its owner (403 for anyone else, on the task and on its data);
project labels carrying ``project_id`` and no ``task_id``; a POST signed in by session
refused (403) without the ``X-CSRFToken`` header, as Django does. Exports run as
background requests: POST ``.../dataset/export`` answers 202 with a request id, GET
``/api/requests/{rq_id}`` reads ``queued`` and ``started`` (``export_polls`` answers in
all) before ``finished`` (or ``failed`` with ``export_failure``), and the ``result_url``
(on ``result_host`` when set: a server behind a proxy names an address of its own) hands
out the zip. Shapes are in ``cvat_double_shapes`` and ``cvat_double_exports``.

``version`` picks the server generation. A 2.2x server has no personal access tokens:
an API key is accepted only as ``Authorization: Token <key>``, ``Bearer`` is refused
(401) and ``/api/auth/access_tokens`` is 404; its ``About`` lacks ``logo_url`` and
``subtitle``. A current server takes its access tokens as ``Bearer`` only.
Runs aiohttp on 127.0.0.1 in its own thread (the SDK is blocking).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tests.unit.cvat_double_exports import (
    EXPORT_FORMATS,
    ExportRequest,
    export_zip,
    request_id,
    request_json,
)
from tests.unit.cvat_double_shapes import (
    DATE,
    FakeTask,
    annotations_json,
    chunk_zip,
    label_json,
    meta_json,
    project_json,
    self_json,
    task_json,
)

__all__ = ["CvatDouble", "FakeTask"]
JSON = "application/vnd.cvat+json"
CSRF = "csrf-456"
ACCESS_TOKENS_SINCE = (2, 30)  # the double's line; 2.2x servers (2.23.1 checked) have none
PUBLIC = ("/api/server/about", "/api/auth/login")
USER = web.RequestKey("user", str)


def _answer(data: Any, status: int = 200) -> web.Response:
    # bytes, not text: aiohttp would add "; charset=utf-8", which CVAT does not send
    return web.Response(body=json.dumps(data).encode(), status=status, content_type=JSON)


class _Refused(Exception):
    """An error answer, ``{"detail": ...}`` as Django REST framework writes it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class CvatDouble:
    version: str = "2.40.1"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret", "bob": "b0b"})
    # key -> user: API keys on a 2.2x server (Token), access tokens on a current one (Bearer)
    keys: dict[str, str] = field(default_factory=lambda: {"tok-789": "alice"})
    tasks: dict[int, FakeTask] = field(default_factory=dict)
    page_size: int = 10
    requests: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)  # scheme a request used, or ""
    url: str = ""
    exports: dict[str, ExportRequest] = field(default_factory=dict)
    export_polls: int = 3  # answers before the last: queued, started, started...
    export_failure: str = ""  # the message of a failed export; "" for one that finishes
    result_host: str = ""  # the base of result_url; "" for the address it was asked at

    @property
    def has_access_tokens(self) -> bool:
        major, minor = (int(part) for part in self.version.split(".")[:2])
        return (major, minor) >= ACCESS_TOKENS_SINCE

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
        app = web.Application(middlewares=[self._gate])
        routes = {
            "/api/server/about": self._about,
            "/api/auth/access_tokens": self._access_tokens,
            "/api/users/self": self._self,
            "/api/tasks": self._task_list,
            "/api/tasks/{id}": self._task,
            "/api/jobs": self._job_list,
            "/api/projects/{id}": self._project,
            "/api/labels": self._labels,
            "/api/tasks/{id}/data/meta": self._meta,
            "/api/tasks/{id}/data/": self._chunk,
            "/api/tasks/{id}/annotations/": self._annotations,
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        app.router.add_get("/api/requests/{rq_id}", self._request)
        for kind in ("tasks", "projects"):
            app.router.add_post(f"/api/{kind}/{{id}}/dataset/export", self._export)
            app.router.add_get(f"/api/{kind}/{{id}}/dataset/download", self._download)
        app.router.add_post("/api/auth/login", self._login)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        scheme = request.headers.get("Authorization", "").partition(" ")[0]
        self.authorizations.append(scheme)
        try:
            if request.path.startswith("/api/auth/access_tokens") and not self.has_access_tokens:
                raise _Refused(404, "Not found.")  # no such route: 404 before any sign-in
            if request.path not in PUBLIC:
                request[USER] = self._user(request)
            response: web.StreamResponse = await handler(request)
        except _Refused as refused:
            return _answer({"detail": refused.detail}, status=refused.status)
        except web.HTTPException as error:  # aiohttp's own 404 and 405
            return _answer({"detail": error.reason}, status=error.status)
        return response

    def _user(self, request: web.Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        # Django tries each authenticator; one that does not know the scheme passes.
        accepted = "Bearer" if self.has_access_tokens else "Token"
        if scheme == accepted:
            if key not in self.keys:
                raise _Refused(401, "Invalid token.")
            return self.keys[key]
        session = request.cookies.get("sessionid", "").removeprefix("session-")
        if session in self.users:
            if request.method == "POST" and request.headers.get("X-CSRFToken") != CSRF:
                raise _Refused(403, "CSRF Failed: CSRF token missing.")
            return session
        raise _Refused(401, "Authentication credentials were not provided.")

    def _user_id(self, username: str) -> int:
        return list(self.users).index(username) + 1

    async def _about(self, request: web.Request) -> web.Response:
        about = {
            "name": "Computer Vision Annotation Tool",
            "description": "CVAT",
            "version": self.version,
        }
        if self.has_access_tokens:
            about |= {"logo_url": "/static/logo.svg", "subtitle": "Open Data Annotation Platform"}
        return _answer(about)

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        username = body.get("username", "")
        if username not in self.users or self.users[username] != body.get("password"):
            errors = {"non_field_errors": ["Unable to log in with provided credentials."]}
            return _answer(errors, status=400)
        response = _answer({"key": f"login-key-{username}"})
        response.set_cookie("sessionid", f"session-{username}", path="/", httponly=True)
        response.set_cookie("csrftoken", CSRF, path="/")
        return response

    async def _access_tokens(self, request: web.Request) -> web.Response:
        mine = [key for key, user in self.keys.items() if user == request[USER]]
        tokens = [
            {"id": n, "name": f"token-{n}", "created_date": DATE, "read_only": True}
            for n, _ in enumerate(mine, 1)
        ]  # never the key itself
        return self._page(request, tokens)

    async def _self(self, request: web.Request) -> web.Response:
        user = request[USER]
        return _answer(self_json(f"{self.url}/api", self._user_id(user), user))

    def _readable(self, request: web.Request, task_id: int) -> FakeTask:
        task = self.tasks.get(task_id)
        if task is None:
            raise _Refused(404, "Not found.")
        if task.owner != request[USER]:
            raise _Refused(403, "You do not have permission to perform this action.")
        return task

    def _fake(self, request: web.Request) -> FakeTask:
        return self._readable(request, int(request.match_info["id"]))

    def _task_json(self, task: FakeTask) -> dict[str, Any]:
        return task_json(f"{self.url}/api", task, self._user_id(task.owner))

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        size = int(request.query.get("page_size", self.page_size))
        number = int(request.query.get("page", "1"))
        last = max(1, -(-len(items) // size))
        if not 1 <= number <= last:
            raise _Refused(404, "Invalid page.")

        def link(page: int) -> str:
            query = {k: v for k, v in request.query.items() if k != "page"}
            if page > 1:  # as Django REST framework: page 1's link has no page=
                query["page"] = str(page)
            return str(request.url.with_query(query))

        return _answer(
            {
                "count": len(items),
                "next": link(number + 1) if number < last else None,
                "previous": link(number - 1) if number > 1 else None,
                "results": items[(number - 1) * size : number * size],
            }
        )

    async def _task(self, request: web.Request) -> web.Response:
        return _answer(self._task_json(self._fake(request)))

    async def _task_list(self, request: web.Request) -> web.Response:
        project = request.query.get("project_id")
        found = [
            self._task_json(t)
            for t in sorted(self.tasks.values(), key=lambda t: -t.id)  # newest first
            if t.owner == request[USER] and (project is None or t.project_id == int(project))
        ]
        return self._page(request, found)

    def _job_json(self, task: FakeTask) -> dict[str, Any]:
        """The task's one job: its segment is the whole task (``segment_size`` is its size)."""
        base = f"{self.url}/api"
        last = max(len(task.frames) - 1, 0)
        return {
            "url": f"{base}/jobs/{task.id}",
            "id": task.id,  # one job a task: the double gives it the task's number
            "task_id": task.id,
            "project_id": task.project_id,
            "assignee": None,
            "guide_id": None,
            "dimension": "2d",
            "bug_tracker": "",
            "status": "annotation",
            "stage": "annotation",
            "state": "new",
            "mode": "annotation",
            "frame_count": len(task.frames),
            "start_frame": 0,
            "stop_frame": last,
            "data_chunk_size": task.chunk_size,
            "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset",
            "created_date": DATE,
            "updated_date": task.updated,
            "type": "annotation",
            "organization": None,
            "target_storage": None,
            "source_storage": None,
            "issues": {"count": 0, "url": f"{base}/issues?job_id={task.id}"},
            "labels": {"url": f"{base}/labels?job_id={task.id}"},
        }

    async def _job_list(self, request: web.Request) -> web.Response:
        task_id = request.query.get("task_id")
        found = [
            self._job_json(t)
            for t in sorted(self.tasks.values(), key=lambda t: -t.id)  # newest first
            if t.owner == request[USER] and (task_id is None or t.id == int(task_id))
        ]
        return self._page(request, found)

    def _project_tasks(self, request: web.Request, project: int) -> list[FakeTask]:
        tasks = [t for t in self.tasks.values() if t.project_id == project]
        if not tasks:
            raise _Refused(404, "Not found.")
        if all(t.owner != request[USER] for t in tasks):
            raise _Refused(403, "You do not have permission to perform this action.")
        return tasks

    async def _project(self, request: web.Request) -> web.Response:
        project = int(request.match_info["id"])
        count = len(self._project_tasks(request, project))
        return _answer(project_json(f"{self.url}/api", project, count))

    async def _labels(self, request: web.Request) -> web.Response:
        if "project_id" in request.query:
            project: int | None = int(request.query["project_id"])
        else:
            task = self._readable(request, int(request.query["task_id"]))
            project = task.project_id
        if project is None:
            tasks, owner = [task], {"task_id": task.id}
        else:  # a task in a project has the project's labels
            tasks, owner = self._project_tasks(request, project), {"project_id": project}
        named = {i: name for task in tasks for i, name in task.labels}
        results = [label_json(i, name, owner=owner) for i, name in sorted(named.items())]
        return self._page(request, results)

    async def _meta(self, request: web.Request) -> web.Response:
        return _answer(meta_json(self._fake(request)))

    async def _chunk(self, request: web.Request) -> web.Response:
        task = self._fake(request)
        assert request.query["type"] == "chunk", request.query
        original = request.query.get("quality", "compressed") == "original"
        body = chunk_zip(task, int(request.query["number"]), original=original)
        if body is None:
            raise _Refused(404, "Not found.")
        return web.Response(body=body, content_type="application/zip")

    async def _annotations(self, request: web.Request) -> web.Response:
        return _answer(annotations_json(self._fake(request)))

    def _targets(self, request: web.Request) -> tuple[str, int, list[FakeTask]]:
        kind = request.path.split("/")[2].removesuffix("s")  # "task" or "project"
        target_id = int(request.match_info["id"])
        if kind == "task":
            return kind, target_id, [self._readable(request, target_id)]
        tasks = sorted(self._project_tasks(request, target_id), key=lambda t: t.id)
        return kind, target_id, tasks

    async def _export(self, request: web.Request) -> web.Response:
        kind, target_id, _ = self._targets(request)
        format = request.query.get("format", "")
        if format not in EXPORT_FORMATS:
            return _answer(["Unknown format specified for the request"], status=400)
        user = request[USER]
        rq_id = request_id(
            target=kind, target_id=target_id, format=format, user_id=self._user_id(user)
        )
        running = self.exports.get(rq_id)
        if running is not None and running.polls < self.export_polls:
            if self.has_access_tokens:
                return _answer({"rq_id": rq_id}, status=409)
            return _answer("Export request is being processed", status=409)
        self.exports[rq_id] = ExportRequest(
            rq_id, kind, target_id, format, user, self._user_id(user)
        )
        return _answer({"rq_id": rq_id}, status=202)

    def _export_request(self, request: web.Request, rq_id: str) -> ExportRequest:
        export = self.exports.get(rq_id)
        if export is None or export.owner != request[USER]:
            raise _Refused(404, "Not found.")
        return export

    async def _request(self, request: web.Request) -> web.Response:
        export = self._export_request(request, request.match_info["rq_id"])
        export.polls += 1
        if export.polls < self.export_polls:
            status = "queued" if export.polls == 1 else "started"
            return _answer(request_json(export, status=status, message="", result_url=None))
        if self.export_failure:
            answer = request_json(
                export, status="failed", message=self.export_failure, result_url=None
            )
            return _answer(answer)
        base = self.result_host or f"{request.scheme}://{request.host}"
        url = f"{base}/api/{export.target}s/{export.target_id}/dataset/download"
        url += f"?rq_id={quote(export.id)}"
        return _answer(request_json(export, status="finished", message="", result_url=url))

    async def _download(self, request: web.Request) -> web.Response:
        kind, target_id, tasks = self._targets(request)
        export = self._export_request(request, request.query.get("rq_id", ""))
        if (export.target, export.target_id) != (kind, target_id):
            raise _Refused(400, "Unknown export request id")
        if export.polls < self.export_polls or self.export_failure:
            raise _Refused(400, "The export process is not finished")
        project = target_id if kind == "project" else None
        body = export_zip(tasks, project_id=project, format=export.format)
        name = f"{kind}_{target_id}_dataset_2024_05_01_10_00_00_{export.format}.zip"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return web.Response(body=body, content_type="application/zip", headers=headers)
