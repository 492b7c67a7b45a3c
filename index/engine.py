"""The two-level cross-modal Hamming index the service calls.

Level 1 routes a code to buckets: the nearest binary centers by Hamming distance over the code's
head bits (UDDH's shared code, or the whole code for methods without one). Level 2 scans the packed
codes inside the probed buckets (``index.scan``). Redis (``index.store``) is the source of truth;
the FAISS structures are a cache rebuilt from it by :meth:`HashIndex.open`.

One *generation* (centers + items bucketed by them) is served at a time, held in an immutable
:class:`Generation` that a reader takes once per call; :meth:`HashIndex.refresh` loads a newer
generation made by a re-bucket (``index.rebuild``) completely before swapping the reference, so a
reader never sees a half-built index.

Every process serving an index holds it in memory and keeps it current by applying Redis's change
feed (``index.change_feed``) in order: its own writes as soon as Redis acknowledges them (so a write is
searchable in the process that made it when the call returns) and other processes' writes as
:meth:`HashIndex.follow` or :meth:`HashIndex.catch_up` read them (a service lets the index do that on
a thread it owns: :meth:`HashIndex.start_following`, stopped by :meth:`HashIndex.close`). Labels are
allocated in feed order, so every process holds the same items in the same order and answers a query
identically. Applying is
serialised by one lock; the in-memory structures have their own, held by an applier only while it
changes them and by a search only around its scan, so neither waits for the other's Redis round trip.

The public surface a service uses: ``open``/``close``, ``add``/``remove``/``get``, ``search`` (returning
:class:`Hit`, which the service's responses serialise as they are), ``stats``, ``health``, ``stored_modalities``,
``ping`` and ``start_following``. ``store`` is there for tools (the re-bucket, ``python -m index``) and tests.

Each process keeps in memory only what ranking needs: per item its packed code and a FAISS id (label
and bucket), about 16 B at 64 bits, plus one bit per label telling which labels it holds. Ids and
metadata stay in Redis: a search ranks in memory, then resolves the labels it ranked to ids and
metadata in one Redis round trip (``RedisStore.lookup``); a metadata filter over-fetches and repeats
that with more candidates until k match or the probed buckets run out (``docs/memory.md``). While Redis
is unreachable a search therefore fails with :class:`StoreUnavailableError` (a 503), like a write: it
cannot say which items it found.

After Redis failed the follower of a shard, the index answers no search (a 503) until that follower, or
the search itself, has looked at the shard's primary again (``index.redis_connection.primary``: on a
cluster, the master holding the shard's slot): the same one, or a promoted replica whose feed continues
the shard's changes applied here (``ChangeFeed.continues``), and it goes on; a primary that cannot prove
that (it lost changes applied here, or holds others under their numbers), and the generation is loaded
again first. So a failover never leaves a process serving items the new primary lacks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from index.centers import CenterIndex
from index.change_feed import Change, ChangeFeed
from index.code_space import CodeSpace
from index.errors import FeedGapError, IndexInputError, ItemNotFoundError, PartialWriteError, StoreUnavailableError
from index.hash_health import HashHealth, measure, tie_group_sizes
from index.layout_upgrade import upgrade_entries
from index.memory import release_freed_memory
from index.redis_connection import Primary, primary
from index.rerank import MAX_CANDIDATES, rerank
from index.scan import BucketScan
from index.shards import shard_count
from index.store import Group, RedisStore, StoredItem
from index.stored_values import MODALITIES

log = logging.getLogger("xmhash.index")
_LOAD_ATTEMPTS = 3  # loads a burst of writes may outrun before the error surfaces (each retry starts afresh)
FOLLOW_BLOCK_MS = 500  # longest wait on the change feed: bounds how long stopping the follower takes
_RETRY_SECONDS = 1.0  # the follower's pause after Redis failed, so an outage does not become a busy loop
# A metadata filter first ranks FILTER_OVERFETCH × k candidates. While fewer than k match and the probed
# buckets hold more, it ranks again: FILTER_MARGIN times as many as the share of matches seen so far says
# k needs (at least twice as many as before, since fewer than k matched), or FILTER_OVERFETCH times as many
# when none matched. A few rounds even for rare matches, without resolving k·(everything) up front.
FILTER_OVERFETCH = 4
FILTER_MARGIN = 2


def _matches(metadata: dict, wanted: dict) -> bool:
    return all(metadata.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class Item:
    """One item to index: its id, modality, packed code and user metadata."""

    id: str
    modality: str
    code: np.ndarray  # packed uint8, bits / 8 bytes
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, the Hamming distance between the query code and the item's code,
    the semantic bucket the item lives in, the item's metadata, and, when the bundle declares a re-ranker,
    the score it ranked by (``index.rerank``; None without one). The API's responses serialise it as is."""

    id: str
    distance: int
    bucket: int
    metadata: dict
    score: float | None = None


@dataclass
class _Side:
    """In-memory state of one modality: its bucket scan, which also knows which labels it holds. No
    per-item Python object: ids and metadata are resolved from Redis per search."""

    scan: BucketScan


def _digest_of(feed: ChangeFeed, seq: int) -> bytes | None:
    """The digest of change ``seq`` of ``feed``; None when there is none (0) or the feed no longer holds it."""
    found = feed.entry(seq) if seq else None
    return None if found is None else found.digest()


@dataclass
class Generation:
    """Centers, the Redis store of their generation, the in-memory scan of each modality, and the
    number of the last change of each shard's feed applied to them, with that change's digest (None when
    unknown), by which the shard's promoted primary's feed is checked to continue this one."""

    store: RedisStore
    centers: CenterIndex
    version: str
    sides: dict[str, _Side]
    applied: list[int]  # per shard: each shard numbers its own feed
    last: list[bytes | None]  # per shard

    @classmethod
    def load(cls, store: RedisStore, bits: int) -> Generation:
        """Read a generation's centers and every item from Redis into fresh FAISS structures, then
        apply the changes made while reading. Retried when the feed moved on too far meanwhile."""
        attempt = 1
        while True:
            try:
                generation = cls._load(store, bits)
                release_freed_memory()
                return generation
            except FeedGapError:
                if attempt == _LOAD_ATTEMPTS:
                    raise
                attempt += 1
                log.warning("index: writes outran loading %s; loading again", store.keys.prefix)

    @classmethod
    def _load(cls, store: RedisStore, bits: int) -> Generation:
        stored = store.load_centers()
        if stored is None:
            raise IndexInputError(f"generation {store.generation} of {store.bundle_keys.base} has no centers")
        centers, version = stored
        applied = [part.feed.position() for part in store.parts]  # first: every change up to them is read next
        last = [_digest_of(part.feed, seq) for part, seq in zip(store.parts, applied, strict=True)]
        sides = {m: _Side(BucketScan(bits, len(centers))) for m in MODALITIES}
        for modality, side in sides.items():
            for part in store.parts:
                upgrade_entries(store.client, part.keys, modality)
            stored = store.codes_in_order(modality)
            if len(stored.labels):
                side.scan.add(stored.labels, stored.codes, stored.buckets)
        generation = cls(store, CenterIndex(centers), version, sides, applied, last)
        for part, seq in zip(store.parts, applied, strict=True):
            for change in part.feed.after(seq):
                generation.apply(change)
        return generation

    def apply(self, change: Change) -> None:
        """Apply one change of the feed. Idempotent for what a snapshot already holds: a replaced or
        deleted label is removed only if present, a new label added only if absent."""
        for modality, side in self.sides.items():
            items = [item for item in change.items if item.modality == modality]
            stale = np.array([item.previous for item in items if item.previous is not None], np.int64).reshape(-1, 2)
            stale = stale[side.scan.holds(stale[:, 1])]
            if len(stale):
                side.scan.remove(stale[:, 1], stale[:, 0])
            new = [item for item in items if item.now is not None]
            new = [item for item, held in zip(new, side.scan.holds([i.now[1] for i in new]), strict=True) if not held]
            if new:
                codes = np.frombuffer(b"".join(item.now[2] for item in new), dtype=np.uint8).reshape(len(new), -1)
                side.scan.add(np.array([item.now[1] for item in new]), codes, np.array([item.now[0] for item in new]))
        self.applied[change.shard], self.last[change.shard] = change.seq, change.digest()


class HashIndex:
    """Items of both modalities under one bundle's code space, searchable across modalities."""

    def __init__(self, space: CodeSpace, generation: Generation, serving: Sequence[Primary]) -> None:
        self.space = space
        self.head_bytes = space.head_bits // 8
        self.generation = generation
        # Each shard's primary; None: its Redis failed, no search until it is checked again.
        self.primaries: list[Primary | None] = list(serving)
        self._apply_lock = threading.Lock()  # one applier of the feed at a time
        self._memory_lock = threading.Lock()  # an applier changing the scans vs. a search reading them
        self._closing = threading.Event()
        self._health: tuple[tuple, dict[str, HashHealth]] | None = None  # (generation, applied), health

    @property
    def bits(self) -> int:
        return self.space.bits

    @property
    def rerank_candidates(self) -> int | None:
        """Hamming candidates the bundle's re-ranker takes; None: Hamming order only (no re-ranker)."""
        return self.space.rerank_candidates

    @classmethod
    def open(cls, client: redis.Redis, index_name: str, space: CodeSpace, shards: int | None = None) -> HashIndex:
        """Attach to Redis and load the active generation of ``space``'s index; a new index starts
        generation 0 with its centers (a re-bucketed one keeps the centers it was re-bucketed with) and
        ``shards`` shards (``index.shards``). Each shard's primary is looked at before anything is read."""
        store = RedisStore(client, index_name, space.bundle_id, shards=shard_count(client, index_name, shards))
        serving = [primary(client, part.bundle_keys.active) for part in store.parts]
        store = store.open_active(space.centers, space.centers_version)
        return cls(space, Generation.load(store, space.bits), serving)

    def start_following(self, refresh_seconds: float) -> None:
        """Keep this index current on threads of its own until :meth:`close`, one per shard's feed (a
        cluster has no read of streams in several slots): apply other processes' writes as they arrive and,
        on shard 0's thread, every ``refresh_seconds`` pick up a re-bucketed generation."""
        for shard in range(self.generation.store.shards):
            threading.Thread(target=self._follow_loop, args=(refresh_seconds, shard), name=f"index-follower-{shard}",
                             daemon=True).start()  # fmt: skip

    def close(self) -> None:
        """Stop following the feed, within one feed wait (not waited for: a swap must not stall on it).
        The in-memory index still answers searches, for requests in flight that hold it."""
        self._closing.set()

    def _follow_loop(self, refresh_seconds: float, shard: int) -> None:
        next_refresh = 0.0
        while not self._closing.is_set():
            try:
                self.check_primary(shard)
                self.follow(FOLLOW_BLOCK_MS, shard)
                if shard == 0 and time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh_seconds
                    if self.refresh():
                        log.info("index: now serving generation %s", self.generation.store.generation)
            except (StoreUnavailableError, FeedGapError) as exc:
                self.primaries[shard] = None
                log.warning("index: cannot follow Redis: %s", exc)
                self._closing.wait(_RETRY_SECONDS)

    def check_primary(self, shard: int = 0) -> None:
        """Look at the Redis primary of ``shard`` (on a cluster, the master holding its slot; raises
        :class:`StoreUnavailableError` while there is none); when it is another one (a failover, a restart),
        go on from the changes of that shard applied here only if its feed continues them, else load the
        generation again. Searches resume once this has run for every shard whose Redis failed."""
        part = self.generation.store.parts[shard]
        now = primary(part.client, part.bundle_keys.active)
        if now == self.primaries[shard]:
            return
        with self._apply_lock:
            generation = self.generation
            if not generation.store.parts[shard].feed.continues(generation.applied[shard], generation.last[shard]):
                log.warning("index: %s does not continue shard %d's feed applied here (change %d); reloading",
                            now.address, shard, generation.applied[shard])  # fmt: skip
                self.generation = Generation.load(generation.store, self.bits)
            self.primaries[shard] = now
        log.info("index: following shard %d's Redis primary at %s", shard, now.address)

    def ping(self) -> bool:
        """Whether Redis answers and the followers have checked every shard's primary since Redis last
        failed (searches and writes need both; ranking alone does not)."""
        return None not in self.primaries and self.generation.store.ping()

    # The current generation's parts, for tools (re-bucket, ``python -m index``) and tests.
    @property
    def store(self) -> RedisStore:
        return self.generation.store

    @property
    def centers(self) -> np.ndarray:
        return self.generation.centers.centers

    @property
    def sides(self) -> dict[str, _Side]:
        return self.generation.sides

    @property
    def n_buckets(self) -> int:
        return len(self.generation.centers)

    def refresh(self) -> bool:
        """Switch to the active generation if a re-bucket made a new one; True when it switched."""
        active = self.generation.store.active_generation()
        if active is None or active == self.generation.store.generation:
            return False
        fresh = Generation.load(self.generation.store.at(active), self.bits)
        with self._apply_lock:
            self.generation = fresh
            for shard in range(fresh.store.shards):
                self._catch_up(shard)
        return True

    def catch_up(self) -> int:
        """Apply every change in every shard's feed not yet applied here (other processes' writes);
        returns how many were applied."""
        with self._apply_lock:
            return sum(self._catch_up(shard) for shard in range(self.generation.store.shards))

    def follow(self, block_ms: int, shard: int = 0) -> int:
        """Wait up to ``block_ms`` for changes of ``shard``'s feed not yet applied here and apply them;
        returns how many. A service calls this in a loop on a thread of its own, one per shard."""
        generation = self.generation
        changes = generation.store.parts[shard].feed.wait(generation.applied[shard], block_ms)
        with self._apply_lock:
            if not changes or self.generation.store.generation != generation.store.generation:
                return 0
            return self._catch_up(shard, changes)

    def _catch_up(self, shard: int, at_hand: Sequence[Change] = ()) -> int:
        """Apply, in feed order, every change of ``shard``'s feed up to the last of ``at_hand`` (changes
        already read: this process's own write, or what the follower read), reading from the feed those
        not at hand; with nothing at hand, every change in the feed. The caller holds the apply lock. When
        changes not yet applied were trimmed from the feed, the generation is loaded again from Redis."""
        generation = self.generation
        applied, feed = generation.applied[shard], generation.store.parts[shard].feed
        pending = [change for change in at_hand if change.seq > applied]
        if at_hand and not pending:
            return 0
        try:
            if not pending:
                pending = feed.after(applied)
            elif pending[0].seq != applied + 1:
                pending = feed.after(applied, until=pending[-1].seq)
        except FeedGapError:
            log.warning("index: changes after %d left the feed before they were applied; reloading", applied)
            self.generation = Generation.load(generation.store, self.bits)
            return 0
        for change in pending:
            with self._memory_lock:
                generation.apply(change)
        return len(pending)

    def _check_modality(self, modality: str) -> None:
        if modality not in MODALITIES:
            raise IndexInputError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.bits // 8:
            raise IndexInputError(
                f"codes must be packed uint8 of shape (n, {self.bits // 8}) for {self.bits}-bit codes, "
                f"got {codes.dtype} {codes.shape}"
            )
        return np.ascontiguousarray(codes)

    def route(self, codes: np.ndarray, probe: int) -> np.ndarray:
        """(n, probe) nearest buckets of packed codes, by Hamming distance over the head bits."""
        return self.generation.centers.route(codes, probe)

    def add(self, items: Sequence[Item]) -> None:
        """Insert or replace items (by id); all or nothing, acknowledged once Redis has the batch."""
        if not items:
            return
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise IndexInputError("a batch may not name the same id twice")
        by_modality: dict[str, list[Item]] = {}
        for item in items:
            self._check_modality(item.modality)
            by_modality.setdefault(item.modality, []).append(item)
        codes = {m: self._check_codes(np.stack([np.asarray(i.code) for i in g])) for m, g in by_modality.items()}
        if len(by_modality) == 2:
            clash = {i.id for i in by_modality["image"]} & {i.id for i in by_modality["text"]}
            if clash:
                raise IndexInputError(f"id {sorted(clash)[0]!r} appears with both modalities in one batch")
        generation = self.generation
        groups = [
            Group(
                modality,
                [i.id for i in group],
                generation.centers.route(codes[modality], 1)[:, 0],
                codes[modality],
                [json.dumps(i.metadata) for i in group],
            )
            for modality, group in by_modality.items()
        ]
        try:
            changes = generation.store.write(groups)  # the acknowledgement: every shard's part, or none
        except PartialWriteError as exc:  # some shards have theirs: searchable here too, then reported
            self._apply_own(generation, *exc.changes)
            raise
        self._apply_own(generation, *changes)

    def _apply_own(self, generation: Generation, *changes: Change) -> None:
        """Apply this process's own acknowledged writes (and any change before them) so that they are
        searchable here when the call returns. A generation loaded again meanwhile already holds them
        or reads them from the feed; a re-bucket copied them (it refuses writes while it runs). While a
        shard's primary is unchecked (Redis failed), its follower applies its change after the check: applied
        now, a write to a promoted primary could hide that this process holds changes that primary lost."""
        with self._apply_lock:
            if self.generation.store.generation == generation.store.generation:
                for change in changes:
                    if self.primaries[change.shard] is not None:
                        self._catch_up(change.shard, [change])

    def remove(self, item_id: str) -> str:
        """Remove an item; returns its modality. Raises :class:`ItemNotFoundError` if absent."""
        generation = self.generation
        modality = generation.store.modality_of(item_id)
        change = generation.store.delete(modality, item_id) if modality is not None else None
        if change is None:
            raise ItemNotFoundError(item_id)
        self._apply_own(generation, change)
        return modality

    def stored_modalities(self, item_ids: Sequence[str]) -> dict[str, str | None]:
        """The modality each id is stored under now (None when absent), in one Redis round trip."""
        return self.generation.store.modalities_of(item_ids)

    def get(self, item_id: str) -> StoredItem:
        """An item as Redis stores it; raises :class:`ItemNotFoundError` if absent."""
        store = self.generation.store
        modality = store.modality_of(item_id)
        stored = store.get(modality, item_id) if modality else None
        if stored is None:
            raise ItemNotFoundError(item_id)
        return stored

    def search(
        self,
        target: str,
        codes: np.ndarray,
        k: int,
        probe: int | None = None,
        where: Mapping | None = None,
        query_real: np.ndarray | None = None,
        on_ties: Callable[[np.ndarray], None] | None = None,
    ) -> list[list[Hit]]:
        """Top k items of modality ``target`` for each packed query code; ``probe=None`` scans all
        buckets (exact). Ranked by Hamming distance; ties by the bucket's rank in the query's route (the
        semantically nearer bucket first), then insertion order. With ``query_real`` (the queries' real
        codes, before the sign) and a re-ranker, the Hamming candidates are re-ranked by the asymmetric
        score (``index.rerank``), which breaks ties by a real score. ``where``: keep only items whose
        metadata has these exact key/value pairs. ``on_ties`` (for metrics) is given each query's number of
        candidates at its best distance among those the first scan ranked (``hash_health.tie_group_sizes``).

        Ranks in memory, then resolves the ranked labels to ids and metadata from Redis, one round trip
        per round (one round without a filter). A label replaced or deleted since it was ranked is left
        out, and more candidates are ranked when that or the filter leaves fewer than k."""
        self._check_modality(target)
        codes = self._check_codes(codes)
        for shard in [shard for shard, serving in enumerate(self.primaries) if serving is None]:
            self.check_primary(shard)  # Redis failed: check its primary here rather than wait for the follower
        if k < 1:
            raise IndexInputError("k must be at least 1")
        generation = self.generation
        n_buckets = len(generation.centers)
        probe = n_buckets if probe is None else probe
        if not 1 <= probe <= n_buckets:
            raise IndexInputError(f"probe must be between 1 and {n_buckets}")
        probes = generation.centers.route(codes, probe)
        side = generation.sides[target]
        wanted = dict(where or {})
        known: dict[int, tuple[str, dict] | None] = {}  # label → (id, metadata), None once gone
        results: list[list[Hit]] = [[] for _ in codes]
        pending, fetch = list(range(len(codes))), k * FILTER_OVERFETCH if wanted else k
        real = None if query_real is None or self.rerank_candidates is None else np.asarray(query_real, np.float32)
        while pending:
            distances, labels, buckets, scores = self._rank(side, codes[pending], probes[pending], fetch,
                                                            None if real is None else real[pending],
                                                            on_ties)  # fmt: skip
            on_ties = None  # a filter's further rounds rank the same queries again
            unknown = [label for label in dict.fromkeys(labels[labels >= 0].tolist()) if label not in known]
            for label, found in zip(unknown, self._lookup(generation, target, unknown), strict=True):
                known[label] = None if found is None else (found[0], json.loads(found[1]))
            still, needed = [], []
            rows = zip(pending, distances.tolist(), labels.tolist(), buckets.tolist(), scores.tolist(), strict=True)
            for query, dr, lr, br, sr in rows:
                ranked = [(known[label], d, b, s) for d, label, b, s in zip(dr, lr, br, sr, strict=True) if label >= 0]
                hits = [Hit(f[0], d, b, f[1], s) for f, d, b, s in ranked if f is not None and _matches(f[1], wanted)]
                if len(hits) >= k or len(ranked) < fetch:
                    results[query] = hits[:k]
                else:
                    still.append(query)
                    needed.append(-(-FILTER_MARGIN * k * fetch // len(hits)) if hits else fetch * FILTER_OVERFETCH)
            pending, fetch = still, max(needed, default=fetch)
        return results

    def _rank(
        self,
        side: _Side,
        codes: np.ndarray,
        probes: np.ndarray,
        fetch: int,
        real: np.ndarray | None,
        on_ties: Callable[[np.ndarray], None] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each query's candidates in ranked order: (distances, labels, buckets, scores), −1 (scores None)
        past the end. Without a real code: the scan's top ``fetch`` in Hamming order. With one: the top
        max(fetch, candidates) and the rest of their last tie group, found by a scan of four times as
        many, doubled until the last tie group ends inside it (up to ``MAX_CANDIDATES``), re-ranked by the
        asymmetric score, of which the best ``fetch`` are returned. ``on_ties`` gets the tie-group sizes of
        the scan's distances (in Hamming order, before a re-ranking)."""
        if real is None:
            with self._memory_lock:
                distances, labels, buckets = side.scan.search(codes, probes, fetch)
            if on_ties is not None:
                on_ties(tie_group_sizes(distances))
            return distances, labels, buckets, np.full(labels.shape, None, dtype=object)
        cut = max(fetch, self.rerank_candidates)
        width = 4 * cut  # one scan of 4x the candidates usually holds their last tie group (a rescan costs more)
        while True:
            with self._memory_lock:
                distances, labels, buckets, found = side.scan.search(codes, probes, width, with_codes=True)
            bound, last = distances[:, cut - 1], distances[:, -1]
            if ((bound < 0) | (last < 0) | (last > bound)).all() or width >= max(MAX_CANDIDATES, 4 * cut):
                break
            width *= 2
        if on_ties is not None:
            on_ties(tie_group_sizes(distances))
        ranked = rerank(distances, labels, buckets, found, real, cut)
        top = slice(0, fetch)  # only these are resolved in Redis: the candidates' ids are never all read
        scores = np.where(ranked.labels[:, top] >= 0, ranked.scores[:, top].astype(np.float64).astype(object), None)
        return ranked.distances[:, top], ranked.labels[:, top], ranked.buckets[:, top], scores

    @staticmethod
    def _lookup(generation: Generation, target: str, labels: list[int]) -> list[tuple[str, str] | None]:
        """Ids and metadata of ranked labels. A re-bucket drops the generation this process still serves
        until its next refresh; its labels are kept by the re-bucket, so those the old generation no longer
        has are looked up in the active one (one more round trip, only then)."""
        found = generation.store.lookup(target, labels)
        gone = [label for label, entry in zip(labels, found, strict=True) if entry is None]
        active = generation.store.active_generation() if gone else None
        if active is None or active == generation.store.generation:
            return found
        again = iter(generation.store.at(active).lookup(target, gone))
        return [next(again) if entry is None else entry for entry in found]

    def health(self) -> dict[str, HashHealth]:
        """Each modality's hash health (``index.hash_health``), computed again only once the index changed
        (another generation, or a change applied): a scrape must not cost a pass over a million codes."""
        generation = self.generation
        with self._memory_lock:  # the codes and the number of changes applied to them, read together
            key = (generation.store.generation, tuple(generation.applied))
            if self._health is not None and self._health[0] == key:
                return self._health[1]
            held = {m: (s.scan.codes(), s.scan.bucket_sizes()) for m, s in generation.sides.items()}
        health = {m: measure(codes, sizes, self.bits) for m, (codes, sizes) in held.items()}
        self._health = (key, health)
        return health

    def stats(self) -> dict:
        """Code length, buckets, generation and item counts, from memory (answers without Redis)."""
        generation = self.generation
        return {
            "bits": self.bits,
            "head_bits": self.head_bytes * 8,
            "buckets": len(generation.centers),
            "generation": generation.store.generation,
            "centers_version": generation.version,
            "items": {m: len(s.scan) for m, s in generation.sides.items()},
            "bucket_sizes": {m: s.scan.bucket_sizes().tolist() for m, s in generation.sides.items()},
        }
