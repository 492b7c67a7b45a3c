"""``python -m service [--demo]``: run the service with uvicorn.

With no ``REDIS_URL`` an embedded redis-server is started (data under ``var/service/redis``); with no
``XMHASH_BUNDLE_PATH`` the committed default model serves. ``--demo`` also ingests the OpenClipart
database and turns off write authorisation, binding to 127.0.0.1 only. Without ``--demo`` and without
``XMHASH_API_KEY``, a random key is generated and printed, so writes are never open by accident.
"""

from __future__ import annotations

import argparse
import logging
import secrets

import uvicorn
from pydantic import SecretStr

from service.app import create_app
from service.embedded import embedded_redis
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="ingest OpenClipart; no API key; 127.0.0.1 only")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    overrides: dict = {"demo": args.demo} if args.demo else {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings(**overrides)
    if settings.demo:
        settings.host = "127.0.0.1"
    elif settings.api_key is None:
        key = secrets.token_urlsafe(24)
        settings.api_key = SecretStr(key)
        print(f"XMHASH_API_KEY not set: writes need this generated key (X-API-Key): {key}", flush=True)
    server = None
    if settings.redis_url is None:
        settings.redis_url, server = embedded_redis(settings.data_dir)
        print(f"embedded Redis at {settings.redis_url} (AOF in {settings.data_dir / 'redis'})", flush=True)
    print(f"serving on http://{settings.host}:{settings.port}/docs", flush=True)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
        )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
