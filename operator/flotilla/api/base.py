"""The pydantic configuration, number rule and constrained types shared by the FederatedJob
models.

Numbers are JSON numbers, as the CRD's schema has them: an integer field takes an integer
(not true, "3" or 3.0), a float field an integer or a float (not true or "inf"), and no
float is NaN or infinite. pydantic's lax mode would take each of those and pass it on to
the run, where it fails late (an overflow in the aggregator) or quietly (true as 1).
"""

from __future__ import annotations

import functools
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from flotilla.api.errors import FieldProblem, Loc, raise_problems

# Bounds of numbers with a meaning, shared by the sections that hold them.
MAX_SECONDS = 7 * 24 * 3600  # deadlines, waits and budgets: a week
# Seeds fit numpy's legacy 32-bit seeding, and a client's per-round seed (seed * 100003 +
# round) stays below torch.manual_seed's 2**64.
MAX_SEED = 2**32 - 1
MAX_CLIENTS = 10_000  # as many as spec.sites may list

# Kubernetes object names that end up in pod names and labels: RFC 1123 labels.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_MAX = 63
_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", re.ASCII)
_CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


class ApiModel(BaseModel):
    """Base of every resource model: immutable, camelCase on the wire, unknown keys rejected."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        # NaN passes no bound check's intent (every comparison is False) and infinity
        # passes any lower bound; JSON, and so the API server, has neither.
        allow_inf_nan=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: object, info: ValidationInfo) -> object:
        """One rule for every int and float field, in lists and maps too (see the module)."""
        shape = _number_shape(cls, info.field_name or "")
        if shape is not None:
            raise_problems(_number_problems(shape, value, ()))
        return value

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe camelCase form, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_dns_label(value: str) -> str:
    if len(value) > _DNS_LABEL_MAX or not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, at most {_DNS_LABEL_MAX} characters"
        )
    return value


def _check_entrypoint(value: str) -> str:
    if not _ENTRYPOINT.match(value):
        raise ValueError("must look like 'package.module:function'")
    return value


def _check_camel_case(value: str) -> str:
    if not _CAMEL_CASE.match(value):
        raise ValueError("must be CamelCase, e.g. 'RoundTimedOut'")
    return value


DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]
Entrypoint = Annotated[str, AfterValidator(_check_entrypoint)]
CamelCaseReason = Annotated[str, AfterValidator(_check_camel_case)]


@functools.cache
def _number_shape(model: type[BaseModel], field_name: str) -> object | None:
    """The field's type with Annotated and Optional taken off, or None if it holds no number."""
    field = model.model_fields.get(field_name)
    if field is None:
        return None
    shape = _unwrapped(field.annotation)
    return shape if _holds_a_number(shape) else None


def _unwrapped(annotation: object) -> object:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation  # int | str and the like: the types decide, not this rule
            annotation = members[0]
        else:
            return annotation


def _holds_a_number(shape: object) -> bool:
    if shape in (int, float):
        return True
    if get_origin(shape) in (list, dict):
        return _holds_a_number(_unwrapped(get_args(shape)[-1]))
    return False


def _number_problems(shape: object, value: object, path: Loc) -> list[FieldProblem]:
    if get_origin(shape) is list and isinstance(value, list):
        item = _unwrapped(get_args(shape)[0])
        return [p for i, v in enumerate(value) for p in _number_problems(item, v, (*path, i))]
    if get_origin(shape) is dict and isinstance(value, dict):
        item = _unwrapped(get_args(shape)[1])
        return [p for k, v in value.items() for p in _number_problems(item, v, (*path, str(k)))]
    if shape is int and isinstance(value, bool | str | float):
        return [FieldProblem(path, f"must be an integer, not {_a(value)}", value)]
    if shape is float and isinstance(value, bool | str):
        return [FieldProblem(path, f"must be a number, not {_a(value)}", value)]
    return []


def _a(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str) else "a decimal number"
