"""The service as a real process for the fault and security tests: ``python -m service`` on a free
loopback port against the test's own redis-server, and a small JSON-over-HTTP client.

The child gets ``PR_SET_PDEATHSIG`` (SIGKILL), so a test process that dies never leaves a service behind.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "fault-test-key"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, or the text when the body is not JSON
    headers: dict[str, str]


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    timeout: float = 30,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a new connection; raises OSError (refused, reset, …) when no answer comes."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sent = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["content-type"] = "application/json"
        if key is not None:
            sent["X-API-Key"] = key
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


class Service:
    """``python -m service`` as a child process; its output goes to ``<log_dir>/service-<port>.log``."""

    def __init__(
        self,
        redis_url: str | None,
        log_dir: Path,
        *,
        index_name: str = "faults",
        api_key: str | None = KEY,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log = log_dir / f"service-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XMHASH_") and k != "REDIS_URL"}
        self.env |= {"REDIS_URL": redis_url} if redis_url else {}  # None: the env names the Redis (sentinels)
        self.env |= {
            "XMHASH_INDEX_NAME": index_name,
            "XMHASH_PORT": str(self.port),
            "XMHASH_HOST": "127.0.0.1",
            "XMHASH_DATA_DIR": str(log_dir / "service-data"),
            "XMHASH_DEMO_CORPUS": "false",  # empty unless a test asks for the demo corpus
            "PYTHONUNBUFFERED": "1",
        }
        if api_key is not None:
            self.env["XMHASH_API_KEY"] = api_key
        self.env |= env or {}
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 120) -> Service:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", *self.args],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        """Until /healthz answers (the app has started: bundle loaded, index opened from Redis)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.output()}")
            try:
                if call(self.port, "GET", "/healthz", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"service did not start within {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    def call(self, method: str, path: str, body: Any = None, key: str | None = None, **kwargs) -> Reply:
        return call(self.port, method, path, body, key, **kwargs)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, nothing runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
