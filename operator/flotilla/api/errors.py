"""SpecError, and the translation of pydantic's validation errors into one line per problem.

Every message names the field as the user wrote it (camelCase, ``spec.sites[1].name``) and the
value it had, so a user can find the line in their YAML without reading a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from flotilla.redaction import redact_urls

# The error type of cross-field checks; its context carries FieldProblems with their own paths,
# because a model validator can only fail at the model's location, not at the field's.
FIELD_PROBLEMS = "flotilla_field_problems"
_MAX_VALUE_CHARS = 80
_NO_VALUE = object()

Loc = tuple[str | int, ...]


class SpecError(Exception):
    """A FederatedJob that cannot be read or is not valid; ``problems`` holds one line each,
    with the credentials of any URL it quotes redacted (it reaches consoles and statuses)."""

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = tuple(redact_urls(problem) for problem in problems)
        self.source = source
        where = f" ({source})" if source else ""
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"invalid FederatedJob{where}:\n{lines}")


@dataclass(frozen=True)
class FieldProblem:
    """One cross-field problem, its path relative to the model that found it (camelCase)."""

    path: Loc
    message: str
    value: object = _NO_VALUE


def raise_problems(problems: Sequence[FieldProblem]) -> None:
    """Fail the current model validator with every problem found, if any."""
    if not problems:
        return
    summary = "; ".join(f"{format_loc(p.path)}: {p.message}" for p in problems)
    raise PydanticCustomError(
        FIELD_PROBLEMS, "{summary}", {"summary": summary, "problems": tuple(problems)}
    )


def format_loc(loc: Iterable[str | int]) -> str:
    """``("spec", "sites", 1, "name")`` -> ``spec.sites[1].name``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def format_value(value: object) -> str:
    text = redact_urls(repr(value))  # before the cut, which could leave half a password
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def problem_line(loc: Loc, message: str, value: object = _NO_VALUE) -> str:
    suffix = "" if value is _NO_VALUE else f" (got {format_value(value)})"
    return f"{format_loc(loc)}: {message}{suffix}"


def problems_from(error: ValidationError) -> list[str]:
    """One line per problem in ``error``, in the order pydantic found them."""
    lines: list[str] = []
    for detail in error.errors(include_url=False):
        lines.extend(_lines_for(detail))
    return lines


def _lines_for(detail: ErrorDetails) -> list[str]:
    loc: Loc = tuple(detail["loc"])
    kind = detail["type"]
    if kind == FIELD_PROBLEMS:
        ctx: dict[str, Any] = detail.get("ctx") or {}
        problems: tuple[FieldProblem, ...] = ctx["problems"]
        return [problem_line((*loc, *p.path), p.message, p.value) for p in problems]
    if kind == "missing":
        return [problem_line(loc, "required field is missing")]
    if kind == "extra_forbidden":
        return [problem_line(loc, "unknown field", detail["input"])]
    message = detail["msg"].removeprefix("Value error, ")
    return [problem_line(loc, message, detail["input"])]
