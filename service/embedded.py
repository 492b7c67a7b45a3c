"""The embedded Redis of the zero-configuration mode: a real redis-server child with AOF on disk.

Its data lives in ``<data_dir>/redis`` (``appendfsync always``), so acknowledged writes survive a
restart. A ``server.json`` records the running server; a later start reuses it when it still answers
(two servers must never share one AOF directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from index.redis_server import RedisServer

_PROBE_SECONDS = 1  # how long a previous server gets to answer before a new one is started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def embedded_redis(data_dir: Path) -> tuple[str, RedisServer | None]:
    """URL of the embedded server, starting one unless a previous one still answers (then None)."""
    directory = data_dir / "redis"
    record = directory / "server.json"
    if record.is_file():
        previous = json.loads(record.read_text())
        url = f"redis://127.0.0.1:{previous['port']}/0"
        if _alive(previous["pid"]):
            try:
                if redis.Redis.from_url(url, socket_connect_timeout=_PROBE_SECONDS).ping():
                    return url, None
            except redis.RedisError:
                pass
    server = RedisServer(directory).start()
    record.write_text(json.dumps({"pid": server.process.pid, "port": server.port}))
    return server.url, server
