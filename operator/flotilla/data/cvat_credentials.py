"""Find a site's CVAT URL and credentials: a file or folder, a mounted Secret, or the environment.

A folder holds one file per key (``url``, ``username``, ``password``, ``accessToken``), as
Kubernetes mounts a Secret; a file holds ``KEY=VALUE`` lines with the same keys. The
environment uses ``{prefix}URL``, ``{prefix}USERNAME``, ``{prefix}PASSWORD``,
``{prefix}ACCESS_TOKEN``. Secrets stay out of ``repr`` and out of every message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.api.data import CVAT_SECRET_MOUNT, CvatCredentialsSpec
from flotilla.data.errors import DataSourceError

_KEYS = {
    "url": "URL",
    "username": "USERNAME",
    "password": "PASSWORD",
    "accessToken": "ACCESS_TOKEN",
}


@dataclass(frozen=True)
class CvatCredentials:
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    origin: str = ""  # where they were found, for messages

    @property
    def kind(self) -> str:
        return "access token" if self.access_token else f"user {self.username!r}"


def find_credentials(
    spec: CvatCredentialsSpec,
    *,
    url: str | None,
    environ: Mapping[str, str] | None = None,
    need_secret: bool = True,
) -> CvatCredentials:
    """The first source of credentials found; ``url`` from the spec overrides theirs.

    ``need_secret=False`` (reading the cache offline) needs only the URL, which names the
    server's folder in the cache.
    """
    values, origin = _read(spec, environ if environ is not None else os.environ)
    server = url or values.get("url")
    if not server:
        raise DataSourceError(f"no CVAT URL: set cvat.url or 'url' in {origin}")
    token = values.get("accessToken")
    username, password = values.get("username"), values.get("password")
    if need_secret and not token and not (username and password):
        raise DataSourceError(
            f"no CVAT credentials in {origin}: need 'accessToken', or 'username' and 'password'"
        )
    return CvatCredentials(server, username, password, token or None, origin)


def _read(spec: CvatCredentialsSpec, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    candidates = [Path(spec.path)] if spec.path else []
    if spec.secret_name:
        candidates.append(Path(CVAT_SECRET_MOUNT))
    for path in candidates:
        if path.is_dir():
            return _folder(path), f"the folder {path}"
        if path.is_file():
            return _key_values(path), f"the file {path}"
    if spec.path:
        raise DataSourceError(f"CVAT credentials path {spec.path} does not exist")
    names = {key: spec.env_prefix + suffix for key, suffix in _KEYS.items()}
    found = {key: environ[name].strip() for key, name in names.items() if environ.get(name)}
    return found, "the environment (" + ", ".join(names.values()) + ")"


def _folder(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in _KEYS:
        file = path / key
        if file.is_file():
            found[key] = file.read_text().strip()
    return found


def _key_values(path: Path) -> dict[str, str]:
    by_suffix = {suffix: key for key, suffix in _KEYS.items()} | {k: k for k in _KEYS}
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise DataSourceError(f"{path}:{number}: expected KEY=VALUE")  # no value echoed
        key = by_suffix.get(name.strip().removeprefix("CVAT_"))
        if key:
            found[key] = value.strip().strip("'\"")
    return found
