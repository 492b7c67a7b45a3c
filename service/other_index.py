"""The index kept beside the live one during a model rollout (``index.rollout_state``), as a worker writes it.

While a bundle is prepared, and after a swap while the previous one is kept for rollback, every write the
service acknowledges goes to both indexes, so neither falls behind: the item is hashed by the other
bundle from the features the live bundle's featurizer made when both share the feature space, else
from its raw text; an image whose pixels only the live featurizer saw is left to the re-encoding pass,
which reports it as not re-encodable by the other bundle. Deletes go to both. An upgrade's source index
(a bundle no worker can load any more) gets the deletes only, so its pass never revives a deleted item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from index.bulk_import import center_index
from index.bundle import Bundle
from index.centers import CenterIndex
from index.errors import GenerationMovedError
from index.item_sources import Source, TextSource
from index.store import Group, RedisStore


@dataclass
class OtherIndex:
    """One worker's writer of the other index: its bundle (None for an upgrade's source), its store."""

    bundle_id: str
    bundle: Bundle | None
    store: RedisStore
    centers: CenterIndex | None

    @classmethod
    def open(cls, client: redis.Redis, index_name: str, bundle_id: str, bundle: Bundle | None) -> OtherIndex:
        store = RedisStore(client, index_name, bundle_id)
        if bundle is None:  # an upgrade's source: deletes only
            return cls(bundle_id, None, store.active(), None)
        store = store.open_active(bundle.centers, bundle.centers_version)
        return cls(bundle_id, bundle, store, center_index(store))

    def write(
        self,
        modality: str,
        ids: Sequence[str],
        features: tuple[str, np.ndarray],
        sources: Sequence[Source],
        metadata: Sequence[dict],
    ) -> int:
        """Hash and write the items the live bundle just stored (``features``: their feature space and
        vectors (n, d)); returns how many this bundle could hash."""
        if self.bundle is None or not ids:
            return 0
        space, x = features
        if space == self.bundle.feature_space(modality):
            rows = list(range(len(ids)))
            mine = x
        else:
            rows = [i for i, source in enumerate(sources) if isinstance(source, TextSource)]
            if not rows or self.bundle.text_featurizer is None or modality != "text":
                return 0
            mine = self.bundle.text_features([sources[i].text for i in rows])
        codes = self.bundle.packed_codes(modality, mine)
        meta = [json.dumps(metadata[i]) for i in rows]
        self._write(Group(modality, [ids[i] for i in rows], np.zeros(len(rows), np.int64), codes, meta))
        return len(rows)

    def _write(self, group: Group) -> None:
        """Route with this generation's centers and write; once more after a re-bucket of this index."""
        for _ in range(2):
            assert self.centers is not None
            routed = Group(group.modality, group.ids, self.centers.route(group.codes, 1)[:, 0], group.codes,
                           group.metadata)  # fmt: skip
            try:
                self.store.write([routed])
                return
            except GenerationMovedError:
                self.store = self.store.at(self.store.active_generation())
                self.centers = center_index(self.store)
        raise GenerationMovedError(f"{self.store.bundle_keys.base} keeps being re-bucketed")

    def delete(self, modality: str, item: str) -> None:
        self.store.delete(modality, item)
