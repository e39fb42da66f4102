"""Just enough of a Dockerfile parser to check edge-images/ without a Docker engine.

Instructions with their continuation lines joined, stages with their parents, ARG defaults
substituted into FROM, and .dockerignore matching, following Docker's documented rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

KEYWORDS = frozenset(
    [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ]
)
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    text: str  # everything after the keyword, continuation lines joined
    line: int

    @property
    def flags(self) -> dict[str, str]:
        """Leading --name=value flags (COPY --from=..., RUN --mount=..., FROM --platform=...)."""
        return dict(
            token[2:].split("=", 1) for token in self.text.split() if token.startswith("--")
        )

    @property
    def operands(self) -> list[str]:
        return [token for token in self.text.split() if not token.startswith("--")]

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    name: str | None
    base: str  # ARG defaults substituted
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path}: no stage {name!r}")

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, the first ancestor first."""
        stages = [self.stage(name)]
        while any(s.name == stages[0].base for s in self.stages):
            stages.insert(0, self.stage(stages[0].base))
        return stages

    def instructions(self, target: str) -> list[Instruction]:
        """What an image built with --target gets: its stage's and its ancestors' lines."""
        return [i for stage in self.chain(target) for i in stage.instructions]

    def arg_defaults(self) -> dict[str, str]:
        defaults = dict(self.global_args)
        for stage in self.stages:
            for instruction in stage.instructions:
                if instruction.keyword == "ARG" and "=" in instruction.text:
                    name, value = instruction.text.split("=", 1)
                    defaults[name.strip()] = value.strip()
        return defaults


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, comments and parser directives left out."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, rest = " ".join(pending).partition(" ")
        found.append(Instruction(keyword.upper(), rest.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"line {start}: a continuation runs past the end of the file")
    return found


def parse(path: Path) -> Dockerfile:
    parsed = Dockerfile(path=path, global_args={}, stages=[])
    for instruction in instructions(path.read_text()):
        if instruction.keyword not in KEYWORDS:
            raise ValueError(f"{path}:{instruction.line}: unknown {instruction.keyword}")
        if instruction.keyword == "FROM":
            operands = instruction.operands
            name = operands[2] if len(operands) == 3 and operands[1].upper() == "AS" else None
            base = substitute(operands[0], parsed.global_args)
            parsed.stages.append(Stage(name=name, base=base))
        elif not parsed.stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{path}:{instruction.line}: {instruction.keyword} before FROM")
            name, _, value = instruction.text.partition("=")
            parsed.global_args[name.strip()] = value.strip()
        else:
            parsed.stages[-1].instructions.append(instruction)
    return parsed


def substitute(text: str, values: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (relative, /-separated) out of the build context.

    The last pattern that matches the path or one of its parent directories decides; a
    leading ! re-includes.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def dockerignore(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)
