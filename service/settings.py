"""Service configuration from the environment (``XMHASH_*``, plus ``REDIS_URL``) or a ``.env`` file."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XMHASH_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "XMHASH_REDIS_URL"),
        description="Redis to use; unset → an embedded redis-server child process with data under data_dir",
    )
    bundle_path: Path = Field(default=DEFAULT_BUNDLE, description="model bundle directory")
    models_dir: Path = Field(default=ROOT / "models", description="bundles POST /v1/models:swap loads, by name")
    index_name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    api_key: SecretStr | None = Field(default=None, description="required by write endpoints")
    demo: bool = Field(default=False, description="embedded demo: no API key, bound to 127.0.0.1")
    demo_corpus: bool = Field(
        default=True,
        description="ingest the OpenClipart demo corpus in the background on the first start; false → start empty",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(
        default=1, ge=1, description="worker processes, each holding the index in memory, kept alike by the change feed"
    )
    run_id: str = Field(
        default_factory=lambda: secrets.token_hex(8),
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="one run of the service; its workers share it (python -m service sets it for them)",
    )
    data_dir: Path = Field(default=ROOT / "var" / "service", description="embedded Redis data (AOF)")
    default_probe: int = Field(default=8, ge=1, description="buckets probed when a query gives none")
    refresh_seconds: float = Field(default=2.0, gt=0, description="how often to look for a re-bucketed index")
    max_k: int = Field(default=100, ge=1)
    max_batch_items: int = Field(default=256, ge=1)
    max_text_chars: int = Field(default=4000, ge=1)
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1, description="decompression-bomb guard")
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are listed")
    access_log: bool = Field(default=True, description="one log line per request (Prometheus counts them anyway)")
