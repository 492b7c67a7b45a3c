"""Where one service worker's time goes during a load round: py-spy's sampled stacks, summarised.

py-spy (a sampling profiler, ``pip install py-spy``) reads the worker's stacks from outside, so the
worker runs unchanged; the summary says which threads were busy (the event loop, the micro-batchers,
the followers) and which functions held the samples, inclusive and as the leaf.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Recording(NamedTuple):
    process: subprocess.Popen
    out: Path
    seconds: int
    rate: int


def start(pid: int, seconds: int, rate: int = 200) -> Recording:
    """py-spy recording ``pid``'s threads for ``seconds`` (raw collapsed stacks), started in the background."""
    out = Path(tempfile.mkstemp(prefix="py-spy-", suffix=".txt")[1])
    command = ["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate), "-f", "raw", "-o", str(out)]
    process = subprocess.Popen([*command, "--threads", "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    return Recording(process, out, seconds, rate)


def finish(recording: Recording, top: int = 25) -> dict | None:
    """Waits for the recording and summarises it; None where py-spy could not read the process."""
    recording.process.wait(recording.seconds + 30)
    text = recording.out.read_text() if recording.out.exists() else ""
    recording.out.unlink(missing_ok=True)
    return summarise(text, recording.seconds * recording.rate, top) if text.strip() else None


def summarise(collapsed: str, possible: int, top: int) -> dict:
    """Shares of the ``possible`` samples (seconds × rate): per thread busy, per function inclusive and leaf."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        threads[re.sub(r"^thread \(\d+\): ", "", frames[0])] += samples
        names = [_name(frame) for frame in frames[1:]] or ["(no Python frame)"]
        leaf[names[-1]] += samples
        inclusive.update(dict.fromkeys(set(names), samples))

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(n / possible, 3) for name, n in counter.most_common(top)}

    return {"possible_samples": possible, "threads_busy": shares(threads), "inclusive": shares(inclusive),
            "leaf": shares(leaf)}  # fmt: skip


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['name']} ({Path(match['file']).name})" if match else frame
