"""A Dockerfile read into its stages and instructions, so that tests take the image's steps from the file
itself (tests/deploy/test_image_steps.py) and cannot drift from it.

Only what the project's Dockerfile uses is understood: comments, line continuations, ``FROM … AS name``,
and instructions as keyword and arguments (``ENV``'s ``key=value`` pairs, ``COPY``'s ``--from``, the JSON
form of ``CMD``). Anything else is an error, not a guess.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


class DockerfileError(ValueError):
    """A line this reader does not understand."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, …
    arguments: str  # the rest of the logical line, continuations joined


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str
    stage: str | None  # COPY --from=stage; None: the build context


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def workdir(self) -> str:
        """The last WORKDIR (each is absolute in this project): where the stage's files and commands are."""
        workdirs = self.all("WORKDIR")
        if not workdirs or not workdirs[-1].arguments.startswith("/"):
            raise DockerfileError(f"stage {self.name or self.base}: no absolute WORKDIR")
        return workdirs[-1].arguments

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, later ones winning."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values |= parse_env(instruction)
        return values

    def user(self) -> str:
        users = self.all("USER")
        return users[-1].arguments if users else "root"

    def command(self) -> list[str]:
        commands = self.all("CMD")
        if not commands:
            raise DockerfileError("no CMD")
        argv = json.loads(commands[-1].arguments)
        if not (isinstance(argv, list) and all(isinstance(word, str) for word in argv)):
            raise DockerfileError("CMD must be the JSON (exec) form")
        return argv


def parse_env(instruction: Instruction) -> dict[str, str]:
    pairs = shlex.split(instruction.arguments)
    if not pairs or not all("=" in pair for pair in pairs):
        raise DockerfileError(f"ENV {instruction.arguments!r}: only the key=value form is understood")
    return dict(pair.split("=", 1) for pair in pairs)


def parse_copy(instruction: Instruction) -> Copy:
    words = shlex.split(instruction.arguments)
    stage = None
    while words and words[0].startswith("--"):
        option = words.pop(0)
        if not option.startswith("--from="):
            raise DockerfileError(f"COPY option {option!r} is not understood")
        stage = option.removeprefix("--from=")
    if len(words) < 2:
        raise DockerfileError(f"COPY {instruction.arguments!r}: sources and a destination expected")
    return Copy(words[:-1], words[-1], stage)


def _logical_lines(text: str) -> list[str]:
    """Lines with comments and blank lines dropped and backslash continuations joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        raise DockerfileError("the file ends inside a continued line")
    return lines


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, in order; the last one is the image."""
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise DockerfileError(f"FROM {arguments!r} is not understood")
            stages.append(Stage(words[0], name))
        elif not stages:
            raise DockerfileError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    if not stages:
        raise DockerfileError(f"{path}: no FROM")
    return stages


def stage_named(stages: list[Stage], name: str) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise DockerfileError(f"no stage named {name!r}")
