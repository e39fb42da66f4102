"""``spec.model.init``: where a job's initial weights come from, as an MLflow URI. Pure.

``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` name a model version a job registered;
``runs:/RUN_ID`` names a job's MLflow run (the final weights it logged). Only the form is
checked here; the aggregator resolves the URI through MLflow when a job starts from
round 0 (``flotilla.fl.aggregator.warm_start``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from flotilla.api.errors import SpecError, problem_line

# MLflow's own limits (api/tracking.py): a registered model's name and an alias are path
# segments of its REST API; a version is a positive integer; a run id is hex, or a
# store's own word-like id.
_NAME = r"[^/:%]{1,250}"
_ALIAS = r"[A-Za-z_][A-Za-z0-9_-]{0,254}"
_VERSION = r"[1-9][0-9]{0,9}"
_RUN_ID = r"[A-Za-z0-9_-]{1,256}"
INIT_URI_PATTERN = (
    rf"^models:/{_NAME}(@{_ALIAS}|/{_VERSION})$|^runs:/{_RUN_ID}$"  # the CRD checks it too
)
INIT_URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID"


@dataclass(frozen=True)
class RegisteredModelRef:
    """A registered model's version: by alias (resolved when the job starts) or by number."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        pin = f"@{self.alias}" if self.alias is not None else f"/{self.version}"
        return f"models:/{self.name}{pin}"


@dataclass(frozen=True)
class RunRef:
    """A job's MLflow run: the final weights it logged when it registered its model."""

    run_id: str

    def __str__(self) -> str:
        return f"runs:/{self.run_id}"


ModelInit = RegisteredModelRef | RunRef


def parse_model_init(value: str) -> ModelInit:
    """The reference ``value`` names; ValueError saying the accepted forms if none."""
    if re.fullmatch(rf"models:/{_NAME}@{_ALIAS}", value):
        name, alias = value.removeprefix("models:/").rsplit("@", 1)
        return RegisteredModelRef(name=name, alias=alias)
    if re.fullmatch(rf"models:/{_NAME}/{_VERSION}", value):
        name, version = value.removeprefix("models:/").rsplit("/", 1)
        return RegisteredModelRef(name=name, version=int(version))
    if re.fullmatch(rf"runs:/{_RUN_ID}", value):
        return RunRef(run_id=value.removeprefix("runs:/"))
    hint = ""
    if value.startswith("runs:/") and value.count("/") > 1:
        hint = " (a run, not a path inside it: the job's final weights are found there)"
    raise ValueError(f"must be {INIT_URI_FORMS}{hint}")


def _checked(value: str) -> str:
    parse_model_init(value)
    return value


# A string in the spec (as MLflow users write it), checked in Python with a message that
# says the forms, and by the API server with the same pattern.
InitUri = Annotated[
    str, AfterValidator(_checked), Field(json_schema_extra={"pattern": INIT_URI_PATTERN})
]


def parse_init_flag(value: str, *, flag: str = "--init") -> ModelInit:
    """A command line's override of ``spec.model.init``; a SpecError naming the flag."""
    try:
        return parse_model_init(value)
    except ValueError as error:
        raise SpecError([problem_line((flag,), str(error), value)]) from None
