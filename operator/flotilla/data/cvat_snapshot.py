"""Save a live CVAT task's or project's export on disk, so a site can train from it offline.

The server builds an export in the background, and CVAT 2.2x (2.23.1 checked) and current
servers answer alike: POST ``/api/{tasks|projects}/{id}/dataset/export`` with ``format``,
``save_images=true`` and ``location=local`` answers 202 with a request id (409 while the
same export still runs); GET ``/api/requests/{rq_id}`` says ``queued``, ``started``, then
``finished`` with a ``result_url`` or ``failed`` with a ``message``; GET ``result_url`` is
the zip.

cvat-sdk's ``Task.export_dataset`` speaks this flow, and is not used for three reasons:
``Client.wait_for_completion`` polls without end (a server whose export worker is down
keeps the request ``queued`` forever) and parses each answer into the SDK's own
``Request`` model, which an older server's answer need not fit; its download fetches
``result_url`` as the server wrote it, and CVAT writes it from the ``Host`` it was asked
by, which behind a proxy is an address this client may not reach, and the credentials
would go to whatever host it names; it never fsyncs and cannot replace a file. So the same
three calls go through the SDK's ``api_client`` (its endpoints and its authentication:
either key scheme, session and CSRF cookies), unparsed; this module owns the deadline,
the URL (``result_url``'s path from ``/api/`` on, on the server signed in to) and the
file. Signing in is ``cvat_signin``'s, so both server generations work.

The zip is written to a hidden file beside the target, fsynced, checked to be a zip and
renamed onto the target: the target is the whole export or is not there. Every failure
is a ``DataSourceError`` naming the server (credentials redacted), the task or project,
the request id once there is one, and the problem; no password or key reaches a message
or a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from flotilla.data.cvat_credentials import CvatCredentials
from flotilla.data.cvat_live import brief_error, cvat_client
from flotilla.data.errors import DataSourceError
from flotilla.redaction import redact_urls

log = logging.getLogger(__name__)
# Flotilla's names for the formats it reads (as cvatExport.format spells them) -> CVAT's.
FORMATS = {"cvat-images-1.1": "CVAT for images 1.1", "coco-1.0": "COCO 1.0"}
DEFAULT_TIMEOUT = 600.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.5, 5.0  # seconds between polls, growing
_CALL_TIMEOUT = 60.0
_DOWNLOAD_TIMEOUT = (30.0, 300.0)  # connect, then each read: a big zip may take long
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportTarget:
    kind: Literal["task", "project"]
    id: int

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass(frozen=True)
class SavedExport:
    path: Path
    size: int  # bytes
    request_id: str


def refusal(out: Path, *, force: bool) -> str | None:
    """Why ``out`` cannot be written, said before the server is asked; None when it can."""
    if out.is_dir():
        return f"{out} is a folder: give the file name of the zip to write"
    if out.exists() and not force:
        return f"{out} exists: give another name, or --force to replace it"
    if not out.parent.is_dir():
        return f"the folder {out.parent} does not exist"
    return None


def save_export(
    *,
    credentials: CvatCredentials,
    target: ExportTarget,
    format: str,
    out: Path,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> SavedExport:
    """Ask the server for ``target``'s export in ``format`` (a key of ``FORMATS``), save it."""
    where = f"CVAT {redact_urls(credentials.url)}, {target}"
    with _translated(where), cvat_client(credentials) as client:
        if format == "coco-1.0":
            _warn_of_tags(client, target)
        request_id = _start(client, target, FORMATS[format])
        with _translated(f"{where}, export request {request_id}"):
            result_url = _wait(client, request_id, timeout=timeout)
            size = _download(client, _on_our_server(client, result_url), out, force=force)
    return SavedExport(out, size, request_id)


def _warn_of_tags(client: Any, target: ExportTarget) -> None:
    """CVAT's COCO 1.0 writes no tags: say so before the export leaves them out."""
    if target.kind == "task":
        task_ids = [target.id]
    else:
        task_ids = sorted(task.id for task in client.projects.retrieve(target.id).get_tasks())
    tags = 0
    for task_id in task_ids:
        _, response = client.api_client.tasks_api.retrieve_annotations(
            id=task_id, _parse_response=False, _request_timeout=_CALL_TIMEOUT
        )
        tags += len(_json(response).get("tags") or [])
    if tags:
        log.warning(
            "%s has %d tag%s, and CVAT's COCO 1.0 carries no tags: the export will hold "
            "none of them (for classification, export --format cvat-images-1.1)",
            target,
            tags,
            "" if tags == 1 else "s",
        )


def _start(client: Any, target: ExportTarget, format_name: str) -> str:
    api = client.api_client.tasks_api if target.kind == "task" else client.api_client.projects_api
    _, response = api.create_dataset_export(
        id=target.id,
        format=format_name,
        save_images=True,
        location="local",  # a file to download, whatever the task's default target storage
        _parse_response=False,
        _check_status=False,
        _request_timeout=_CALL_TIMEOUT,
    )
    answer = _json(response)
    request_id = answer.get("rq_id") if isinstance(answer, dict) else None
    if response.status in (202, 409) and request_id:
        if response.status == 409:
            log.info(
                "%s: the same export already runs as request %s; waiting for it", target, request_id
            )
        return str(request_id)
    if response.status == 409:  # CVAT 2.2x names no request here
        raise DataSourceError(
            "the server is already making this export (409): wait for it to finish, then run again"
        )
    raise DataSourceError(_refused(response.status, answer))


def _wait(client: Any, request_id: str, *, timeout: float) -> str:
    """Poll the request until it ends or ``timeout`` seconds pass; its ``result_url``."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        _, response = client.api_client.requests_api.retrieve(
            id=request_id, _parse_response=False, _request_timeout=_CALL_TIMEOUT
        )
        request = _json(response)
        status = str(request.get("status") or "unreported")
        if status == "finished":
            if not request.get("result_url"):
                raise DataSourceError("the export finished without a file to download")
            return str(request["result_url"])
        if status == "failed":
            raise DataSourceError(f"the export failed on the server: {_message(request)}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise DataSourceError(
                f"the export was still {status} after {timeout:g} s; the server may finish "
                "it later: run again with a longer --timeout"
            )
        log.info("export request %s: %s", request_id, status)
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, _LONGEST_PAUSE)


def _on_our_server(client: Any, result_url: str) -> str:
    """``result_url`` from its ``/api/`` on, on the server signed in to (see the docstring)."""
    parts = urlsplit(result_url)
    path = parts.path[parts.path.find("/api/") :] if "/api/" in parts.path else parts.path
    return str(client.api_map.host) + path + (f"?{parts.query}" if parts.query else "")


def _download(client: Any, url: str, out: Path, *, force: bool) -> int:
    import urllib3
    from cvat_sdk.core.helpers import make_request_headers

    response = client.api_client.rest_client.GET(
        url,
        headers=make_request_headers(client.api_client),
        _parse_response=False,
        _request_timeout=_DOWNLOAD_TIMEOUT,
    )
    try:
        return _write_atomically(out, response.stream(_CHUNK), force=force)
    except urllib3.exceptions.HTTPError as error:
        raise DataSourceError(f"the download broke off: {brief_error(error)}") from None
    finally:
        response.release_conn()


def _write_atomically(out: Path, chunks: Iterable[bytes], *, force: bool) -> int:
    """Write beside ``out``, fsync, check, rename: ``out`` is whole or untouched."""
    partial = out.parent / f".{out.name}.{secrets.token_hex(4)}.part"
    try:
        with partial.open("xb") as file:  # "x": never another's file; the umask applies
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        if not zipfile.is_zipfile(partial):
            raise DataSourceError("the server's answer is not a zip: nothing saved")
        if out.exists() and not force:
            raise DataSourceError(f"{out} appeared meanwhile and is kept (--force replaces it)")
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_folder(out.parent)
    return out.stat().st_size


def _sync_folder(folder: Path) -> None:
    """A rename is on disk once its folder is; some file systems cannot sync a folder."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _json(response: Any) -> Any:
    try:
        body = response.data
    finally:
        response.release_conn()
    try:
        return json.loads(body) if body else {}
    except ValueError:
        return {}


def _message(request: dict[str, Any]) -> str:
    """The server's reason: the last line of a traceback says most."""
    lines = [line.strip() for line in str(request.get("message") or "").splitlines()]
    last = next((line for line in reversed(lines) if line), "no reason given")
    return redact_urls(last)[:300]


_STATUS = {
    400: "the server refused the request (400)",
    401: "the credentials were refused (401)",
    403: "forbidden (403): this user may not export it",
    404: "not found (404)",
}


def _refused(status: int, answer: Any) -> str:
    reason = _STATUS.get(status, f"the server answered {status}")
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    if status == 400 and detail:
        reason += f": {redact_urls(str(detail))[:200]}"
    return reason


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """The one place SDK and network errors become a ``DataSourceError`` naming ``where``."""
    import urllib3
    from cvat_sdk.api_client.exceptions import ApiException, OpenApiException
    from cvat_sdk.core.exceptions import CvatSdkException

    try:
        yield
    except DataSourceError as error:
        if str(error).startswith("CVAT "):
            raise
        raise DataSourceError(f"{where}: {error}") from None
    except ApiException as error:
        status = int(error.status or 0)
        reason = _refused(status, None)
        if "signing in" in where and status in (400, 401, 403):
            reason = f"the credentials were refused ({status})"
        raise DataSourceError(f"{where}: {reason}") from None
    except urllib3.exceptions.HTTPError as error:
        raise DataSourceError(f"{where}: unreachable ({brief_error(error)})") from None
    except (CvatSdkException, OpenApiException) as error:
        raise DataSourceError(f"{where}: {brief_error(error)}") from None
    except OSError as error:  # the target's folder: full, read-only, gone
        raise DataSourceError(f"{where}: cannot write the zip: {error}") from None
