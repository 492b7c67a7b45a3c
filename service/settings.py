"""Service configuration from the environment (``XMHASH_*``, plus ``REDIS_URL``) or a ``.env`` file.

Every setting of the service is a field here, read when a :class:`Settings` is made (never at import).
The README's settings table is :func:`markdown_table`'s output, and a test keeps the two equal:
``python -m service.settings`` prints the table after a field changes.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.bundle.featurizers import PILLOW_MAX_PIXELS
from index.redis_connection import DEFAULT_MASTER_NAME, DEFAULT_WAIT_MS, RedisTarget, parse_sentinels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "default"
ENV_PREFIX = "XMHASH_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "XMHASH_REDIS_URL"),
        description="Redis to use; redis+cluster://host:port,host:port… → a Redis Cluster (docs/cluster.md); "
        "unset (and no sentinels) → an embedded redis-server child process with data under data_dir",
    )
    redis_sentinels: str | None = Field(
        default=None,
        description="Sentinel mode: the sentinels, host:port,host:port; the primary is the one they name "
        "(redis_url unused), followed across a failover (docs/ha.md)",
    )
    redis_master_name: str = Field(
        default=DEFAULT_MASTER_NAME, description="Sentinel mode: the name the sentinels monitor the primary by"
    )
    redis_password: SecretStr | None = Field(default=None, description="password of the Redis nodes and sentinels")
    redis_wait_replicas: int | None = Field(
        default=None,
        ge=0,
        description="replicas that must confirm a write (WAIT) before it is acknowledged (on a cluster, each "
        "shard's master's); unset → 1 in Sentinel mode, 0 otherwise (0: a single node's behaviour)",
    )
    redis_wait_ms: int = Field(
        default=DEFAULT_WAIT_MS, ge=1, description="how long a write waits for those replicas before it is a 503"
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        description="shards of a new index (fixed at creation, recorded in Redis); unset → one per master of a "
        "cluster, one on a plain Redis",
    )
    bundle_path: Path = Field(default=DEFAULT_BUNDLE, description="model bundle directory")
    models_dir: Path = Field(default=ROOT / "models", description="bundles POST /v1/models:swap loads, by name")
    index_name: str = Field(
        default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="names the index's keys in Redis"
    )
    api_key: SecretStr | None = Field(
        default=None, description="required by write endpoints; unset → python -m service generates one"
    )
    demo: bool = Field(default=False, description="embedded demo: no API key, bound to 127.0.0.1")
    demo_corpus: bool = Field(
        default=True,
        description="load the demo collection in the background on the first start; false → start empty",
    )
    demo_collection: Path = Field(
        default=ROOT / "var" / "demo" / "openclipart" / "manifest.jsonl",
        description="the demo collection's manifest: OpenClipart, exported by make serve "
        "(python -m training export-collection openclipart var/demo/openclipart)",
    )
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8000, description="port to bind")
    workers: int = Field(
        default=1, ge=1, description="worker processes, each holding the index in memory, kept alike by the change feed"
    )
    worker_healthcheck_seconds: int = Field(
        default=60,
        ge=1,
        description="a worker silent this long is restarted; covers loading the bundle's featurizers on a busy machine",
    )
    run_id: str = Field(
        default_factory=lambda: secrets.token_hex(8),
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="one run of the service; its workers share it (python -m service sets it for them)",
    )
    data_dir: Path = Field(default=ROOT / "var" / "service", description="embedded Redis data (AOF)")
    default_probe: int = Field(default=8, ge=1, description="buckets probed when a query gives none")
    refresh_seconds: float = Field(
        default=2.0, gt=0, description="how often to look for a re-bucketed index or a swap through another worker"
    )
    gate_max_drop: float = Field(
        default=0.05, ge=0, le=1, description="a swap is refused when a held-out metric falls by more than this"
    )
    rollout_chunk: int = Field(
        default=256, ge=1, description="items a rollout's re-encoding pass hashes and writes at once"
    )
    rollout_lease_seconds: int = Field(
        default=30, ge=1, description="a re-encoding pass not heard of for this long is taken over by another worker"
    )
    gate_items: int = Field(default=500, ge=10, description="held-out rows the swap's quality gate evaluates at most")
    max_k: int = Field(default=100, ge=1, description="most results a query may ask for")
    max_batch_items: int = Field(
        default=1000, ge=1, description="most items in one POST /v1/items:batch (JSON or msgpack body)"
    )
    max_text_chars: int = Field(default=4000, ge=1, description="longest raw text, query or item")
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="largest image file (8 MiB)")
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        le=PILLOW_MAX_PIXELS,
        description=f"decompression-bomb guard: an image of more pixels is refused before decoding (at most "
        f"{PILLOW_MAX_PIXELS}, Pillow's own limit)",
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="largest request body (64 MiB)")
    batch_window_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="raw queries and raw items arriving within this many ms of the first are featurized in one "
        "encoder call, per worker and modality; 0: only those that queue while a call runs",
    )
    batch_max_items: int = Field(
        default=16, ge=1, description="most raw inputs of one modality in one encoder call; 1: one at a time"
    )
    cors_origins: list[str] = Field(default=[], description="CORS is off unless origins are listed (a JSON list)")
    access_log: bool = Field(default=True, description="one log line per request (Prometheus counts them anyway)")

    def redis_target(self) -> RedisTarget:
        """The Redis these settings name, for ``index.redis_connection.connect``."""
        password = self.redis_password.get_secret_value() if self.redis_password else None
        return RedisTarget(self.redis_url, parse_sentinels(self.redis_sentinels), self.redis_master_name, password,
                           self.redis_wait_replicas, self.redis_wait_ms)  # fmt: skip


def env_names(name: str) -> list[str]:
    """The environment variables that set the field ``name``, the preferred one first."""
    alias = Settings.model_fields[name].validation_alias
    return list(alias.choices) if isinstance(alias, AliasChoices) else [f"{ENV_PREFIX}{name.upper()}"]


def _shown_default(name: str) -> str:
    """A field's default as one writes it in the environment (paths relative to the project root)."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "random"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return str(value)


def markdown_table() -> str:
    """The README's settings table: every field's variable(s), default and meaning."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        variables = " or ".join(f"`{variable}`" for variable in env_names(name))
        rows.append(f"| {variables} | `{_shown_default(name)}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
