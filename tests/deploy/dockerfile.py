"""Just enough of a Dockerfile reader to check the file and to replay its build stage without an engine."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD, or None for shell form."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None

    def pairs(self) -> dict[str, str]:
        """KEY=value pairs of ENV, LABEL or ARG (quotes removed)."""
        found = {}
        for token in shlex.split(self.arguments):
            name, _, value = token.partition("=")
            found[name] = value
        return found


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("ENV"):
            merged.update(instruction.pairs())
        return merged

    def labels(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            merged.update(instruction.pairs())
        return merged


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        lines: list[str] = []
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):
                continue  # a comment inside a continued instruction
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            lines.append(pending + stripped)
            pending = ""
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        for line in lines:
            keyword, _, arguments = line.partition(" ")
            instruction = Instruction(keyword.upper(), arguments.strip())
            if instruction.keyword == "FROM":
                match = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", instruction.arguments, re.IGNORECASE)
                assert match, line
                base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), match.group(1))
                stages.append(Stage(base, match.group(2)))
            elif not stages and instruction.keyword == "ARG":
                global_args.update(instruction.pairs())
            else:
                stages[-1].instructions.append(instruction)
        return cls(global_args, stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (found,) = [stage for stage in self.stages if stage.name == name]
        return found
