"""Every Redis key name of the project, in one place: a module that reads or writes Redis asks here.

All keys of an index live under ``xmh:{index}:``; those of an index sharded over S > 1 shards (or on a
Redis Cluster, which needs it for any S) under ``xmh:{{index}:s{k}:{n}}:`` for shard k, whose hash tag puts
every key one write touches in one slot (:func:`shard_tag`, ``docs/cluster.md``); ``shards`` records S.
Under it:

- ``{bundle_id}:`` one bundle's code space (two bundles' codes never mix, :class:`BundleKeys`): ``active``
  names the generation readers use, ``rebuilding`` is set while a re-bucket copies items into the next one,
  ``import:{job}`` records a bulk import's done chunks, ``demo-corpus`` the demo corpus's progress;
- ``{bundle_id}:g{n}:`` one *generation* of it (one set of centers and the items bucketed by them,
  :class:`GenerationKeys`), whose layout ``index.store`` describes;
- ``src:{modality}`` what re-encodes an API item under another bundle (``index.item_sources``), and
  ``rollout`` the model rollout in progress (``index.rollout_state``): per index, as the thumbnails;
- ``run:{run_id}:{name}`` what the worker processes of one service run share; ``thumb:{item_id}`` an
  image's thumbnail and ``collections`` the registry of loaded collections (per index, not per bundle: a
  thumbnail shows the image whatever model hashes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import count

from redis.crc import key_slot

from index.stored_values import MODALITIES

_SLOTS = 16384  # a Redis Cluster's hash slots


@cache
def shard_tag(index_name: str, shard: int, shards: int) -> str:
    """The hash tag of a shard: ``<index>:s<shard>:<n>`` with the first n whose slot lies in the shard's
    own 1/S of the 16384 slots, so S shards spread over the masters of a cluster made with evenly split
    slots (``redis-cli --cluster create``) instead of wherever CRC16 happens to put them."""
    low, high = _SLOTS * shard // shards, _SLOTS * (shard + 1) // shards
    for n in count():
        tag = f"{index_name}:s{shard}:{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class IndexKeys:
    """The keys of one index, whatever bundle serves it."""

    index_name: str

    @property
    def prefix(self) -> str:
        return f"xmh:{self.index_name}:"

    def shard_prefix(self, shard: int, shards: int, tagged: bool) -> str:
        """Where shard ``shard`` of ``shards``' keys live: the hash tag names the index and the shard, never
        the bundle or the generation, so a write, its feed, a re-bucket's copy and a rollout's fill stay in
        one slot (:func:`shard_tag`)."""
        return f"xmh:{{{shard_tag(self.index_name, shard, shards)}}}:" if tagged else self.prefix

    def bundle(self, bundle_id: str, shard: int = 0, shards: int = 1, tagged: bool = False) -> BundleKeys:
        return BundleKeys.under(f"{self.shard_prefix(shard, shards, tagged)}{bundle_id}:")

    @property
    def shards(self) -> str:
        """The index's shard count S, fixed when it is created; absent: an index of before shards, S = 1."""
        return f"{self.prefix}shards"

    def run(self, run_id: str, name: str) -> str:
        """A key shared by the worker processes of one run of the service."""
        return f"{self.prefix}run:{run_id}:{name}"

    def sources(self, modality: str) -> str:
        """What re-encodes the API's items of a modality under another bundle (``index.item_sources``)."""
        return f"{self.prefix}src:{modality}"

    @property
    def live_bundle(self) -> str:
        """The bundle id last put in service on this index: a service started with another one upgrades."""
        return f"{self.prefix}live"

    @property
    def rollout(self) -> str:
        """The model rollout in progress or kept for rollback (``index.rollout_state``)."""
        return f"{self.prefix}rollout"

    def thumbnail(self, item_id: str) -> str:
        return f"{self.prefix}thumb:{item_id}"

    @property
    def collections(self) -> str:
        return f"{self.prefix}collections"


@dataclass(frozen=True)
class BundleKeys:
    """The keys of one index under one bundle; ``base`` ends with a colon. ``import_progress(job)``: an
    import's done chunks (chunk → the feed entry that wrote it), under the bundle, not the generation, since
    a re-bucket copies a done chunk's items, so it stays done."""

    base: str
    active: str
    rebuilding: str
    demo_corpus: str

    @classmethod
    def under(cls, base: str) -> BundleKeys:
        return cls(base, *(base + name for name in ("active", "rebuilding", "demo-corpus")))

    def import_progress(self, job: str) -> str:
        return f"{self.base}import:{job}"

    def generation(self, number: int) -> GenerationKeys:
        return GenerationKeys.under(f"{self.base}g{number}:")


@dataclass(frozen=True)
class GenerationKeys:
    """The keys of one generation; ``prefix`` ends with a colon (every key of it starts with it). The hashes
    of each modality are by modality name; ``former_meta``/``former_labels`` are the former layout's
    (``index.layout_upgrade``)."""

    prefix: str
    items: dict[str, str]
    entries: dict[str, str]
    counts: dict[str, str]
    former_meta: dict[str, str]
    former_labels: dict[str, str]
    centers: str
    info: str
    next_label: str
    seq: str
    feed: str

    @classmethod
    def under(cls, prefix: str) -> GenerationKeys:
        hashes = [
            {m: f"{prefix}{kind}:{m}" for m in MODALITIES} for kind in ("items", "entries", "counts", "meta", "labels")
        ]
        return cls(prefix, *hashes, *(prefix + name for name in ("centers", "info", "next_label", "seq", "feed")))
