"""Read a site's tasks from a live CVAT server through cvat-sdk, cached on the node.

Framework-free: ``cvat_sdk.datasets.TaskDataset`` (``cvat_sdk.pytorch`` needs torchvision).
Its on-disk cache lives under ``cacheDir`` and is refreshed only when the server says a
task changed (``updatePolicy: ifStale``); ``never`` reads the cache alone, without a
network. Sites run whatever CVAT they have: the SDK's server version check is off on
purpose (it refuses servers older than itself); the server's version is logged, a
missing endpoint fails with a message that says so, and ``cvat_signin`` signs in to
either server generation. Every SDK or network error becomes a ``DataSourceError``
naming the server, the task and what went wrong; credentials never appear in a message
or a log line. A frame's pixels and boxes get the checks an export's do (``cvat_live_frames``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.api.data import CvatServerSource
from flotilla.data.cvat_credentials import CvatCredentials, find_credentials
from flotilla.data.cvat_live_frames import CachedTask
from flotilla.data.cvat_signin import server_version, sign_in
from flotilla.data.errors import DataSourceError
from flotilla.data.frames import RawFrame
from flotilla.redaction import redact_urls

log = logging.getLogger(__name__)
_sdk_log = logging.getLogger(__name__ + ".sdk")
DEFAULT_CACHE_DIR = Path(".flotilla/cvat-cache")


@dataclass(frozen=True)
class CvatFrames:
    """A live source's frames, and its server as messages name it: the URL the reader
    used (from the spec or from the credentials), redacted."""

    server: str
    frames: list[RawFrame]


def read_cvat_frames(
    *,
    site: str,
    source: CvatServerSource,
    cache_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[RawFrame]:
    """Every frame of the source's tasks (or its project's tasks), with annotations."""
    return read_cvat_source(site=site, source=source, cache_dir=cache_dir, environ=environ).frames


def read_cvat_source(
    *,
    site: str,
    source: CvatServerSource,
    cache_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> CvatFrames:
    """``read_cvat_frames``, with the server the frames came from."""
    try:
        from cvat_sdk.datasets import UpdatePolicy
    except ImportError:
        raise DataSourceError("reading a live CVAT needs cvat-sdk: pip install cvat-sdk") from None
    offline = source.update_policy == "never"
    credentials = find_credentials(
        source.credentials, url=source.url, environ=environ, need_secret=not offline
    )
    policy = UpdatePolicy.NEVER if offline else UpdatePolicy.IF_MISSING_OR_STALE
    folder = Path(source.cache_dir) if source.cache_dir else cache_dir or DEFAULT_CACHE_DIR
    server = redact_urls(credentials.url)
    where = f"CVAT {server}"
    with _translated(where), cvat_client(credentials, cache_dir=folder, offline=offline) as client:
        task_ids = list(source.task_ids)
        if source.project_id is not None:
            with _translated(f"{where}, project {source.project_id}", cache_dir=folder):
                task_ids = _project_task_ids(client, source.project_id, policy)
        frames: list[RawFrame] = []
        for task_id in task_ids:
            with _translated(f"{where}, task {task_id}", cache_dir=folder):
                frames += _task_frames(client, task_id, policy, server=server)
        return CvatFrames(server, frames)


@contextlib.contextmanager
def cvat_client(
    credentials: CvatCredentials, *, cache_dir: Path | None = None, offline: bool = False
) -> Iterator[Any]:
    """A cvat-sdk client signed in with `credentials` (unless `offline`: the cache only),
    closed on exit; sign-in failures are a DataSourceError naming the server."""
    from cvat_sdk import Client, Config

    # check_server_version=False on purpose: the SDK refuses servers older than itself.
    client = Client(
        credentials.url,
        logger=_sdk_log,
        config=Config(cache_dir=cache_dir) if cache_dir is not None else Config(),
        check_server_version=False,
    )
    try:
        if not offline:
            shown = redact_urls(credentials.url)
            _log_server_version(client, shown)
            with _translated(f"CVAT {shown}, signing in as {credentials.kind}"):
                sign_in(client, credentials)
        yield client
    finally:
        client.close()


def _log_server_version(client: Any, url: str) -> None:
    """Log the server's version; an old or proxied server that hides it is not an error."""
    from cvat_sdk.version import VERSION

    try:
        version = server_version(client)
    except Exception as error:
        log.warning("CVAT %s does not report its version (%s); going on", url, brief_error(error))
        return
    log.info("CVAT %s runs server version %s (cvat-sdk %s)", url, version, VERSION)


def _project_task_ids(client: Any, project_id: int, policy: Any) -> list[int]:
    from cvat_sdk.datasets.caching import make_cache_manager

    project = make_cache_manager(client, policy).retrieve_project(project_id)
    ids = sorted(task.id for task in project.get_tasks())
    if not ids:
        raise DataSourceError(f"project {project_id} has no tasks")
    return ids


def _task_frames(client: Any, task_id: int, policy: Any, *, server: str) -> list[RawFrame]:
    from cvat_sdk.datasets import TaskDataset

    dataset = TaskDataset(client, task_id, update_policy=policy)
    names = {label.id: label.name for label in dataset.labels}
    # TaskDataset keeps the task's model (from the server or its cache) here; there is no
    # public accessor, and asking the server again would not work offline.
    task = dataset._task
    subset = getattr(task, "subset", None) or None
    cached = _cached_task(client, task, policy, server=server)
    frames = []
    for sample in dataset.samples:
        tags = tuple(names.get(tag.label_id, f"#{tag.label_id}") for tag in sample.annotations.tags)
        boxes = cached.boxes(
            sample.annotations.shapes,
            names=lambda label_id: names.get(label_id, f"#{label_id}"),
            frame=sample.frame_name,
        )
        # Not sample.media.load_image: it skips the bounds every image from a site gets.
        load = cached.loader(sample.frame_index, sample.frame_name, boxes)
        frames.append(RawFrame(f"task-{task_id}/{sample.frame_name}", subset, tags, boxes, load))
    return frames


def _cached_task(client: Any, task: Any, policy: Any, *, server: str) -> CachedTask:
    from cvat_sdk.datasets.caching import make_cache_manager

    cache = make_cache_manager(client, policy)
    # The cache names a server's folder after its URL in base64, which would carry any
    # user:password@ in it; then the message names the folder of every server instead.
    task_dir = cache.task_dir(task.id)
    refetch = task_dir if "@" not in client.api_map.host else task_dir.parents[2]
    return CachedTask(
        where=f"CVAT {server}, task {task.id}",
        chunk_dir=cache.chunk_dir(task.id),
        chunk_size=task.data_chunk_size,
        refetch=refetch,
    )


_STATUS = {
    401: "the credentials were refused (401)",
    403: "forbidden (403): this user may not read it",
    404: "not found (404)",
}


@contextlib.contextmanager
def _translated(where: str, *, cache_dir: Path | None = None) -> Iterator[None]:
    """The one place SDK and network errors become a ``DataSourceError``."""
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
        reason = _STATUS.get(status, f"the server answered {status} {error.reason or ''}".strip())
        if "signing in" in where and status in (400, 401, 403):
            reason = f"the credentials were refused ({status})"
        elif status == 404 and "task" not in where and "project" not in where:
            reason = "an endpoint this client needs is missing on the server (404)"
        raise DataSourceError(f"{where}: {reason}") from None
    except FileNotFoundError:
        raise DataSourceError(
            f"{where}: not in the cache at {cache_dir} (updatePolicy never reads only the "
            "cache: run once with updatePolicy ifStale)"
        ) from None
    except urllib3.exceptions.HTTPError as error:
        raise DataSourceError(f"{where}: unreachable ({brief_error(error)})") from None
    except (CvatSdkException, OpenApiException) as error:
        raise DataSourceError(f"{where}: {brief_error(error)}") from None


# The translation, for the readers beside this one (digest.py).
translated = _translated


def brief_error(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return redact_urls(text)[:200]  # the SDK's errors may quote the URL it was given
