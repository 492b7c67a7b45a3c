"""A real redis-server child process on a free loopback port: embedded mode, tests and benchmarks."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

_START_SECONDS = 10  # redis-server replays its AOF before it answers: generous for a large one
_POLL_SECONDS = 0.02  # between pings while it starts
_STOP_SECONDS = 10  # for a clean shutdown (the AOF flushed) after SIGTERM


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when its parent dies, however the parent
    dies (uvicorn re-raises SIGTERM after shutdown, and SIGKILL runs no cleanup at all). Redis then
    shuts down cleanly, its AOF complete; a restart replays it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server with AOF (``appendfsync always``) in its own directory; restartable on the same data.
    ``config``: a configuration file read first (a deployment's, ``deploy/ha/redis.conf``), copied into the
    directory on the first start, since Sentinel has a node rewrite its own file (``CONFIG REWRITE``);
    ``options``: more command-line options after the defaults (``--replicaof HOST PORT``)."""

    def __init__(self, directory: Path, config: Path | None = None, options: Sequence[str] = ()) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not installed: run `make bootstrap` (Debian package redis-server)")
        self.directory = directory
        self.config, self.options = config, list(options)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "redis.conf"
        if self.config and not config.exists():
            shutil.copyfile(self.config, config)
        command = [
            "redis-server", *([str(config)] if self.config else []),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(_POLL_SECONDS)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(_STOP_SECONDS)
        self.process = None
