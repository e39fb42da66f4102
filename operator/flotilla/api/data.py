"""Where a site's labelled images come from: a CVAT export on the node or a live CVAT server.

Pure models, no I/O. ``flotilla.data`` reads what they describe. Credentials never appear
in the spec itself, only where to find them (environment variables, a file or folder, or in
a cluster a Secret the operator mounts as files).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from flotilla.api.base import ApiModel
from flotilla.api.errors import FieldProblem, raise_problems

NonEmptyStr = Annotated[str, Field(min_length=1)]
# CVAT's project and task ids are PostgreSQL integer (int4) keys.
MAX_CVAT_ID = 2**31 - 1
SITE_PLACEHOLDER = "{site}"
# A PersistentVolumeClaim name (DNS-1123 subdomain), where "{site}" may stand for a site's name.
ClaimNameTemplate = Annotated[
    str,
    Field(
        max_length=200,
        pattern=r"^([a-z0-9]|\{site\})([-a-z0-9.]|\{site\})*$",
    ),
]
ExportFormat = Literal["auto", "cvat-images-1.1", "coco-1.0"]
# Where the operator mounts a site's ``credentials.secretName`` in the client pod.
CVAT_SECRET_MOUNT = "/var/run/secrets/flotilla/cvat"


class CvatExportSource(ApiModel):
    """A CVAT dataset export (a folder or CVAT's zip) on the site's machine.

    In a cluster the client pod mounts ``path`` from its node (a hostPath volume), unless
    ``claimName`` names a PersistentVolumeClaim that holds the export: ``path`` is then
    inside that volume, and ``{site}`` in the name is the site's name (one claim per site,
    e.g. a node-local PersistentVolume each). hostPath needs a namespace whose PodSecurity
    level is ``privileged``; a claim works under ``baseline`` and ``restricted`` too.
    ``flotilla run`` reads ``path`` on the local machine and ignores ``claimName``.
    """

    path: NonEmptyStr
    # "auto" recognises annotations.xml (CVAT for images 1.1) or annotations/*.json (COCO 1.0).
    format: ExportFormat = "auto"
    claim_name: ClaimNameTemplate | None = None

    @model_validator(mode="after")
    def _path_inside_the_claim(self) -> CvatExportSource:
        if self.claim_name is None:
            return self
        parts = PurePosixPath(self.path).parts
        if PurePosixPath(self.path).is_absolute() or ".." in parts:
            message = "with claimName, path is inside the volume: relative, without '..'"
            raise_problems([FieldProblem(("path",), message, self.path)])
        return self


class CvatCredentialsSpec(ApiModel):
    """Where a client finds its CVAT URL and credentials; never the secrets themselves.

    Read in this order, the first that exists wins: ``path`` (a folder of files ``url``,
    ``username``, ``password``, ``accessToken``, as a mounted Secret is, or a file of
    ``KEY=VALUE`` lines), the Secret named by ``secretName`` mounted at
    ``CVAT_SECRET_MOUNT``, then the environment variables ``{envPrefix}URL``,
    ``{envPrefix}USERNAME``, ``{envPrefix}PASSWORD``, ``{envPrefix}ACCESS_TOKEN``.
    """

    secret_name: NonEmptyStr | None = None
    path: NonEmptyStr | None = None
    env_prefix: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$")] = "CVAT_"


class CvatServerSource(ApiModel):
    """Tasks of a live CVAT server, read through cvat-sdk and cached on the node."""

    url: NonEmptyStr | None = None  # else taken from the credentials; never user:password@
    project_id: int | None = Field(default=None, ge=1, le=MAX_CVAT_ID)
    task_ids: list[Annotated[int, Field(ge=1, le=MAX_CVAT_ID)]] = Field(default_factory=list)
    credentials: CvatCredentialsSpec = Field(default_factory=CvatCredentialsSpec)
    cache_dir: NonEmptyStr | None = None
    # "ifStale": re-download a task only when the server says it changed; "never": offline,
    # from the cache alone (a restarted client on a node that lost its CVAT).
    update_policy: Literal["ifStale", "never"] = "ifStale"

    @model_validator(mode="after")
    def _project_or_tasks(self) -> CvatServerSource:
        if (self.project_id is None) == (not self.task_ids):
            got = "both" if self.project_id is not None else "neither"
            raise_problems([FieldProblem(("taskIds",), "set one of projectId or taskIds", got)])
        return self

    @model_validator(mode="after")
    def _no_credentials_in_url(self) -> CvatServerSource:
        # A spec is shown and stored everywhere (kubectl, MLflow, logs): the value is not echoed.
        # Any "@" counts: a CVAT address has none, and a password with an unencoded "/"
        # (https://bob:pa/ss@host) is still a password.
        if self.url is not None and "@" in self.url:
            message = (
                "holds credentials (user:password@ or token@); give the URL without them and "
                "put them in a credentials file or Secret: credentials.path, "
                "credentials.secretName or the CVAT_* environment variables"
            )
            raise_problems([FieldProblem(("url",), message)])
        return self


class DataSource(ApiModel):
    """Where a site's labelled images come from: exactly one of ``cvatExport`` or ``cvat``.

    ``labelAliases`` maps this site's label names to the job's (``{siteName: jobName}``).
    """

    cvat_export: CvatExportSource | None = None
    cvat: CvatServerSource | None = None
    label_aliases: dict[NonEmptyStr, NonEmptyStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.cvat_export is None) == (self.cvat is None):
            got = "both" if self.cvat is not None else "neither"
            raise_problems([FieldProblem((), "set one of cvatExport or cvat", got)])
        return self

    def resolved(self, base_dir: Path) -> Self:
        """A copy for this machine: a relative export path made absolute against
        ``base_dir``, and no ``claimName`` (a volume claim means nothing outside a cluster)."""
        export = self.cvat_export
        if export is None or (Path(export.path).is_absolute() and export.claim_name is None):
            return self
        path = str(base_dir.absolute() / export.path)
        local = export.model_copy(update={"path": path, "claim_name": None})
        return self.model_copy(update={"cvat_export": local})


class ExportDataSource(DataSource):
    """A data source that must be an export: the aggregator's central test data."""

    cvat_export: CvatExportSource
