"""What can go wrong in the index, as exceptions the service maps to HTTP statuses."""

from collections.abc import Sequence
from typing import Self


class IndexInputError(ValueError):
    """Bad input from the caller (wrong code length, unknown modality, …): a 4xx, nothing written."""


class ModalityConflictError(IndexInputError):
    """An id already stored under the other modality was written again with a new modality: a 409."""

    @classmethod
    def of(cls, item: str) -> Self:
        return cls(f"id {item!r} is already stored as another modality")


class ItemNotFoundError(KeyError):
    """No item with this id: a 404."""


class StoreUnavailableError(RuntimeError):
    """Redis cannot be reached or refused the write: a 503; the write was not acknowledged."""


class GenerationMovedError(StoreUnavailableError):
    """A write aimed at a generation that a re-bucket replaced: nothing was written; retry on the new one."""


class FeedGapError(RuntimeError):
    """Changes a process has not applied were trimmed from the change feed: it must reload from Redis."""


class PartialWriteError(StoreUnavailableError):
    """Some shards of a sharded index took their part of a batch, others failed: ``stored`` names the ids
    written (acknowledged), ``changes`` the shards' changes that wrote them; the others were not. Writing
    the batch again is safe (ids are keys)."""

    def __init__(self, message: str, stored: list[str], changes: Sequence[object]) -> None:
        super().__init__(message)
        self.stored, self.changes = stored, list(changes)


class NotReplicatedError(StoreUnavailableError):
    """The primary applied a write but too few replicas confirmed it in time (``WAIT``): not acknowledged, a
    503. Retrying the same write is safe: writes are idempotent by id."""
