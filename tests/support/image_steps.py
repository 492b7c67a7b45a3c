"""The image's final stage performed on this machine without a container runtime, step by step as
deploy/Dockerfile writes them (read by ``tests.support.dockerfile``), in a folder that stands for the
image's ``/``.

- ``FROM python:X.Y…``: a fresh virtual environment of a Python X.Y that the image's user can run (a
  base interpreter nobody can read would hide what the image's user meets); it is the image's ``python``
  and ``pip``, and holds nothing but what the steps install.
- ``RUN apt-get … install PKG…``: the operating system's packages, which this machine must already have
  (deploy/bootstrap.sh installs them); checked with dpkg, not installed.
- Any other ``RUN``: its ``&&``-joined commands, run in the (rebased) working directory, ``pip`` and
  ``python`` being the environment's, pip resolving from the local wheels of the base set
  (``tests.support.wheelhouse``) rather than downloading them. An absolute path in one is refused: it
  would reach this machine's ``/``, not the image's.
- ``COPY``: from the build context (the checkout less what ``.dockerignore`` excludes), or, with
  ``--from=STAGE``, from what that builder stage leaves in its working directory, which is the checkout's
  same path: deploy/bootstrap.sh runs the builder's command (``python -m training featurizers
  models/default``) there.
- ``ENV``, ``WORKDIR``, ``USER``, ``CMD``: kept, their absolute paths rebased under the folder, for
  :meth:`Image.start`, which runs the start command as the image's user when this test runs as root.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import build_context, wheelhouse
from tests.support.dockerfile import Copy, Instruction, Stage, parse, parse_copy, parse_env, stage_named

_BASE_PYTHON = re.compile(r"^python:(\d+\.\d+)")
_INSTALL_SECONDS = 600


class UnsupportedStep(AssertionError):
    """A Dockerfile step these emulated steps do not know how to perform: teach them, or change the step."""


@dataclass
class Image:
    """The image as its steps left it: a folder standing for ``/`` and what the final stage declared."""

    root: Path
    venv: Path
    stage: Stage
    user: str
    workdir: Path = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    pip_env: dict[str, str] = field(default_factory=dict)  # how the RUN steps' pip finds packages
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.root

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def path(self, image_path: str) -> Path:
        """Where the image's path ``image_path`` is here (absolute, or relative to the working directory)."""
        return self.root / image_path.lstrip("/") if image_path.startswith("/") else self.workdir / image_path

    def process_env(self, overrides: dict[str, str]) -> dict[str, str]:
        """The environment a process of the image starts with: its ENV, then ``overrides``."""
        home = pwd.getpwnam(self.user).pw_dir if self.switches_user() else os.environ.get("HOME", "/")
        base = {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
        return base | self.env | overrides

    def switches_user(self) -> bool:
        """Processes run as the image's USER only when this test runs as root (it cannot change user otherwise)."""
        return os.geteuid() == 0 and self.user != "root"

    def as_user(self) -> dict:
        """``subprocess`` arguments that run a process as the image's USER (nothing when not root)."""
        if not self.switches_user():
            return {}
        account = pwd.getpwnam(self.user)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def argv(self, words: list[str]) -> list[str]:
        """A command of the image, its ``python`` and ``pip`` being the environment's."""
        if words[0] == "python":
            return [str(self.python), *words[1:]]
        if words[0] == "pip":  # this machine's pip, installing into the environment (which has none)
            return [sys.executable, "-m", "pip", "--python", str(self.python), *words[1:]]
        return words

    def run(self, words: list[str], overrides: dict[str, str]) -> subprocess.CompletedProcess:
        """A short command in the image (working directory, ENV, user): its output, whatever its status."""
        return subprocess.run(
            self.argv(words), cwd=self.workdir, env=self.process_env(overrides),
            capture_output=True, text=True, timeout=60, **self.as_user(),
        )  # fmt: skip

    def start(self, overrides: dict[str, str], log: Path) -> subprocess.Popen:
        """The image's CMD, as ``docker run`` starts it, in a session of its own (so it can be stopped
        whole); its output goes to ``log``."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv(self.stage.command()), cwd=self.workdir, env=self.process_env(overrides),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **self.as_user(),
            )  # fmt: skip


def build(dockerfile: Path, context: Path, root: Path) -> Image:
    """Perform the final stage of ``dockerfile`` with ``context`` as build context into ``root``."""
    stages = parse(dockerfile)
    final = stages[-1]
    image = Image(root, root / "venv", final, final.user())
    started = time.perf_counter()
    subprocess.run([str(_interpreter(final.base, image)), "-m", "venv", "--without-pip", str(image.venv)], check=True)
    image.timings["venv_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    image.pip_env = wheelhouse.offline(wheelhouse.wheelhouse(context, image.python))
    image.timings["wheelhouse_s"] = round(time.perf_counter() - started, 2)
    patterns = build_context.read_patterns(context)
    keywords = [instruction.keyword for instruction in final.instructions]
    if "USER" in keywords and "RUN" in keywords[keywords.index("USER") :]:
        raise UnsupportedStep("RUN after USER: the steps here run as the caller, the image's as that user")
    for instruction in final.instructions:
        _perform(instruction, image, stages, context, patterns)
    return image


def _perform(instruction: Instruction, image: Image, stages: list[Stage], context: Path, patterns: list) -> None:
    keyword, arguments = instruction.keyword, instruction.arguments
    if keyword == "WORKDIR":
        image.workdir = image.path(arguments)
        image.workdir.mkdir(parents=True, exist_ok=True)
    elif keyword == "COPY":
        _copy(parse_copy(instruction), image, stages, context, patterns)
    elif keyword == "RUN":
        started = time.perf_counter()
        _run(arguments, image)
        image.timings[f"RUN {arguments}"] = round(time.perf_counter() - started, 2)
    elif keyword == "ENV":
        values = parse_env(instruction)
        image.env.update({k: str(image.path(v)) if v.startswith("/") else v for k, v in values.items()})
    elif keyword not in ("USER", "CMD", "EXPOSE"):  # USER and CMD are read by Image; EXPOSE changes nothing here
        raise UnsupportedStep(f"{keyword} {arguments}")


def _copy(copy: Copy, image: Image, stages: list[Stage], context: Path, patterns: list) -> None:
    sources = copy.sources
    if copy.stage is not None:  # the builder stage's working directory is the checkout, where bootstrap ran its step
        workdir = stage_named(stages, copy.stage).workdir().rstrip("/") + "/"
        if not all(source.startswith(workdir) for source in sources):
            raise UnsupportedStep(f"COPY --from={copy.stage}: only paths inside the stage's WORKDIR {workdir}")
        sources, patterns = [source.removeprefix(workdir) for source in sources], []
    destination = image.path(copy.destination)
    into_folder = copy.destination.endswith("/") or len(sources) > 1
    for source in (source.rstrip("/") or "." for source in sources):
        if any(c in source for c in "*?["):
            raise UnsupportedStep(f"COPY source {source!r}: wildcards are not performed here")
        if not (context / source).exists():
            raise AssertionError(f"COPY {source}: not in the build context")
        for relative in build_context.files_under(context, source, patterns):
            if (context / source).is_dir():
                target = destination / Path(relative).relative_to(source)
            else:
                target = destination / Path(relative).name if into_folder else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / relative, target)


def _run(arguments: str, image: Image) -> None:
    words = shlex.split(arguments)
    if words[0] == "apt-get":
        _check_os_packages(words)
        return
    commands = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        elif word in (";", "||", "|") or word.startswith(("/", "~")):
            raise UnsupportedStep(f"RUN {arguments}: {word!r} (plain commands joined by && on relative paths)")
        else:
            commands[-1].append(word)
    for command in commands:
        done = subprocess.run(image.argv(command), cwd=image.workdir, env=os.environ | image.pip_env,
                              capture_output=True, text=True, timeout=_INSTALL_SECONDS)  # fmt: skip
        assert done.returncode == 0, f"RUN {shlex.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _check_os_packages(words: list[str]) -> None:
    """An apt-get RUN: the packages it installs must be on this machine already (dpkg says so)."""
    segment = [*words[words.index("install") + 1 :], "&&"]
    packages = [word for word in segment[: segment.index("&&")] if not word.startswith("-")]
    if shutil.which("dpkg-query") is None:
        return  # not a Debian machine: the installs below fail loudly if a package is missing
    for package in packages:
        state = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        assert "install ok installed" in state.stdout, f"{package} is not installed: run `make bootstrap`"


def _interpreter(base: str, image: Image) -> Path:
    """A Python of the base image's version (``python:3.11-slim`` → 3.11) that the image's user can run."""
    match = _BASE_PYTHON.match(base)
    if match is None:
        raise UnsupportedStep(f"FROM {base}: only python:X.Y images are performed here")
    name = f"python{match[1]}"
    candidates = [Path(sys.base_prefix) / "bin" / name, shutil.which(name)]
    candidates += [Path("/usr/bin") / name, Path("/usr/local/bin") / name]
    for candidate in filter(None, candidates):
        try:
            subprocess.run([str(candidate), "-c", "import venv"], capture_output=True, check=True, **image.as_user())
        except (OSError, subprocess.CalledProcessError):
            continue  # missing, or not the user's to run (a Python under /root)
        return Path(candidate)
    raise AssertionError(f"no {name} that user {image.user!r} can run (the image's Python)")
