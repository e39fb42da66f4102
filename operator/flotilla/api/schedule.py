"""The FederatedSchedule resource: FederatedJobs made from a template, as a CronJob makes Jobs.

A schedule creates a job on a cron tick (``schedule``, ``timeZone``) and/or when a site's
data changed (``onDataChange``: the operator probes each site for a digest of its data's
identity). ``concurrencyPolicy``, ``suspend``, ``startingDeadlineSeconds`` and the history
limits mean what they mean for a CronJob. ``jobTemplate.spec`` is a whole FederatedJob
spec, checked by the same model when the schedule is read. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from flotilla.api.base import MAX_CLIENTS, MAX_SECONDS, ApiModel
from flotilla.api.cron import cron_fields, time_zone
from flotilla.api.errors import FieldProblem, SpecError, problems_from, raise_problems
from flotilla.api.spec import FederatedJobSpec, ObjectMeta
from flotilla.api.status import Condition, RegisteredModel

SCHEDULE_KIND = "FederatedSchedule"
# A job is named <schedule>-<8 digits>, and the job's own objects add up to 11 characters
# (<job>-aggregator) to a name that must stay a 63-character DNS label.
MAX_NAME = 40
MIN_CHECK_SECONDS = 30


def _cron(value: str) -> str:
    cron_fields(value)
    return value


def _zone(value: str) -> str:
    time_zone(value)
    return value


CronExpression = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_cron)]
TimeZoneName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_zone)]
Time = Annotated[str, Field(max_length=40)]  # RFC 3339, as the API server writes times
Digest = Annotated[str, Field(max_length=200)]


class OnDataChange(ApiModel):
    """Probe every site every ``checkIntervalSeconds``; a changed digest makes a job."""

    enabled: bool = True
    check_interval_seconds: int = Field(default=600, ge=MIN_CHECK_SECONDS, le=MAX_SECONDS)


class JobTemplateMeta(ApiModel):
    """What each job's metadata gets, besides its name and the schedule's label."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64)


class JobTemplate(ApiModel):
    metadata: JobTemplateMeta = Field(default_factory=JobTemplateMeta)
    spec: FederatedJobSpec


class FederatedScheduleSpec(ApiModel):
    schedule: CronExpression | None = None
    time_zone: TimeZoneName | None = None  # unset: UTC
    on_data_change: OnDataChange | None = None
    concurrency_policy: Literal["Forbid", "Replace"] = "Forbid"
    suspend: bool = False
    successful_jobs_history_limit: int = Field(default=3, ge=0, le=100)
    failed_jobs_history_limit: int = Field(default=1, ge=0, le=100)
    # A tick noticed later than this is skipped (the operator was down, or a job ran).
    starting_deadline_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)
    job_template: JobTemplate

    @property
    def probes(self) -> bool:
        return self.on_data_change is not None and self.on_data_change.enabled

    @model_validator(mode="after")
    def _something_triggers(self) -> FederatedScheduleSpec:
        if self.schedule is None and not self.probes:
            message = "set schedule or onDataChange.enabled: nothing would ever create a job"
            raise_problems([FieldProblem((), message)])
        if self.time_zone is not None and self.schedule is None:
            raise_problems([FieldProblem(("timeZone",), "needs a schedule", self.time_zone)])
        return self


class JobReference(ApiModel):
    name: str
    uid: str | None = None


class Trigger(ApiModel):
    """Why the last job was made: a cron tick, or the sites whose data changed."""

    type: Literal["cron", "dataChange"]
    time: Time
    job: str
    message: str = Field(default="", max_length=2000)


class ProbeCycle(ApiModel):
    """The data probes under way: one pod per site, started together."""

    started_at: Time
    sites: dict[str, str] = Field(default_factory=dict, max_length=MAX_CLIENTS)  # site -> node
    # site -> why, known before any pod ran (no data source, the pod refused)
    failed: dict[str, str] = Field(default_factory=dict, max_length=MAX_CLIENTS)


class FederatedScheduleStatus(ApiModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    active: list[JobReference] = Field(default_factory=list, max_length=100)
    last_schedule_time: Time | None = None  # the last cron tick acted upon
    last_successful_time: Time | None = None
    last_trigger: Trigger | None = None
    # The digest each site's data had at its last successful probe.
    last_digests: dict[str, Digest] = Field(default_factory=dict, max_length=MAX_CLIENTS)
    # Sites whose data changed since the last job was made (it waits: concurrencyPolicy Forbid).
    pending_data_change: list[str] = Field(default_factory=list, max_length=MAX_CLIENTS)
    last_probe_time: Time | None = None
    probe: ProbeCycle | None = None
    # The value of the check-data annotation last acted upon.
    data_check_request: str | None = None
    # The newest model a job of this schedule registered: what the next job starts from.
    last_model: RegisteredModel | None = None


class FederatedSchedule(ApiModel):
    """A FederatedSchedule custom resource (``flotilla.dev/v1alpha1``)."""

    api_version: Literal["flotilla.dev/v1alpha1"]
    kind: Literal["FederatedSchedule"]
    metadata: ObjectMeta
    spec: FederatedScheduleSpec
    status: FederatedScheduleStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _short_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        if len(metadata.name) > MAX_NAME:
            message = f"at most {MAX_NAME} characters: each job adds a suffix to it"
            raise_problems([FieldProblem(("name",), message, metadata.name)])
        return metadata

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedSchedule:
        """Validate a camelCase mapping; every problem (status aside) at once, in a SpecError.

        The status is the operator's to write and to read leniently: only the spec decides
        whether the schedule is valid."""
        try:
            return cls.model_validate({key: v for key, v in data.items() if key != "status"})
        except ValidationError as error:
            raise SpecError(problems_from(error), source=SCHEDULE_KIND) from None
