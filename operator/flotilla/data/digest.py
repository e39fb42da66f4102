"""A digest of a site's data's identity: what tells a schedule that the annotations changed.

Never the data: for a live CVAT, the ids of the site's tasks and each task's
`updated_date` (CVAT moves it when a job's annotations are saved); for an export on
disk, a SHA-256 over its files' relative paths, sizes and contents, streamed in chunks,
contents up to `MAX_HASHED_BYTES` in all (past that only paths and sizes count, which a
re-export still changes). The same data gives the same digest on any machine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flotilla.api import FederatedJob
from flotilla.api.data import CvatServerSource
from flotilla.data.errors import DataSourceError

CHUNK = 1 << 20
MAX_HASHED_BYTES = 8 << 30  # about a minute of reading from a slow disk
PREFIX = "sha256:"


def data_digest(
    job: FederatedJob,
    site: str,
    *,
    data: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The site's digest, `sha256:<hex>`. `data` is where the export is mounted when it is
    not at the spec's path (the client's --data). Raises DataSourceError, SpecError."""
    source = job.site_data(site)
    if source.cvat is not None:
        return cvat_digest(source.cvat, environ=environ)
    assert source.cvat_export is not None  # the model holds exactly one of the two
    return export_digest(data or Path(source.cvat_export.path))


def export_digest(path: Path) -> str:
    """A folder's or a zip's content hash."""
    if not path.exists():
        raise DataSourceError(f"export {path}: not found")
    digest = hashlib.sha256()
    budget = MAX_HASHED_BYTES
    for relative, file in _files(path):
        size = file.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        if size <= budget:
            budget -= size
            try:
                _stream(file, digest)
            except OSError as error:
                raise DataSourceError(f"export {path}: cannot read {relative}: {error}") from None
    return PREFIX + digest.hexdigest()


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """Regular files in name order; symbolic links are not followed."""
    if root.is_file():
        yield root.name, root
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            if file.is_file() and not file.is_symlink():
                yield file.relative_to(root).as_posix(), file


def _stream(file: Path, digest: Any) -> None:
    with file.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)


def cvat_digest(source: CvatServerSource, *, environ: Mapping[str, str] | None = None) -> str:
    """The site's tasks and when each last changed, as its CVAT reports them."""
    from flotilla.data.cvat_credentials import find_credentials
    from flotilla.data.cvat_live import cvat_client, translated
    from flotilla.redaction import redact_urls

    credentials = find_credentials(source.credentials, url=source.url, environ=environ)
    where = f"CVAT {redact_urls(credentials.url)}"
    with translated(where), cvat_client(credentials) as client:
        if source.project_id is not None:
            with translated(f"{where}, project {source.project_id}"):
                tasks = client.projects.retrieve(source.project_id).get_tasks()
            stamps = sorted((task.id, str(task.updated_date)) for task in tasks)
        else:
            stamps = []
            for task_id in sorted(source.task_ids):
                with translated(f"{where}, task {task_id}"):
                    stamps.append((task_id, str(client.tasks.retrieve(task_id).updated_date)))
    text = "\n".join(f"{task_id}\t{updated}" for task_id, updated in stamps)
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()
