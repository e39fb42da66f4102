"""The pydantic configuration and constrained string types shared by the FederatedJob models."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

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
    )

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
