"""What ``docker build`` sends of the checkout: every file except those ``.dockerignore`` excludes.

Docker's matching (moby's patternmatcher): a pattern is a path relative to the context's root, where
``*`` and ``?`` stay inside one path component and ``**`` spans any number of them; a path is excluded
when a pattern matches it or one of its parent folders. So ``*.so`` excludes only the root's ``.so``
files, and ``**/*.so`` those of every folder. Exceptions (``!``) and character classes are not used
here and are refused rather than half-understood.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

IGNORE_FILE = ".dockerignore"


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as an anchored regular expression over '/'-separated relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def read_patterns(root: Path) -> list[re.Pattern[str]]:
    """The context's exclusion patterns (none without a .dockerignore)."""
    path = root / IGNORE_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    patterns = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        if line.startswith("!") or "[" in line:
            raise ValueError(f"{IGNORE_FILE}: {line!r}: exceptions and character classes are not understood")
        patterns.append(_regex(str(PurePosixPath(line.lstrip("/")))))
    return patterns


def excluded(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether Docker leaves ``relative`` (a path inside the context) out of the build context."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(p.match(prefix) for p in patterns for prefix in prefixes)


def files_under(root: Path, relative: str, patterns: list[re.Pattern[str]]) -> Iterator[str]:
    """The context's files at or under ``relative`` (a file or a folder), as relative paths."""
    start = root / relative
    if start.is_file() or start.is_symlink():
        if not excluded(relative, patterns):
            yield relative
        return
    for folder, subfolders, files in os.walk(start):
        here = Path(folder).relative_to(root).as_posix()
        subfolders[:] = sorted(d for d in subfolders if not excluded(f"{here}/{d}", patterns))
        yield from (f"{here}/{f}" for f in sorted(files) if not excluded(f"{here}/{f}", patterns))
