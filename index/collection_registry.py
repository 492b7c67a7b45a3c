"""The collections loaded into an index, by name: the folder their items' image paths are relative to.

Registered when a collection is loaded (``service.collection``), in the hash ``xmh:{index}:collections``
(name → JSON ``{"folder", "roots", "manifest"}``). Two readers: the search page's thumbnails (an item's
metadata names its ``collection`` and ``image``) and re-encoding under a new bundle (the image file, and
the text from the manifest). A path resolves only when it is relative, without ``..``, and lands inside
the folder or a folder that a symlink at the folder's top level links in (how the OpenClipart export
reaches the installed corpus without copying it), so an item's metadata, which any writer sets, reaches
no other file. Records written before ``manifest`` was kept name none: the folder's ``manifest.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import redis

from index.collection import MANIFEST_NAME, inside_path
from index.redis_calls import call
from index.redis_keys import IndexKeys


class CollectionNameTaken(ValueError):
    """A collection name is registered for another folder."""


@dataclass(frozen=True)
class RegisteredCollection:
    folder: Path
    roots: tuple[Path, ...]
    manifest: Path

    def file(self, image: object) -> Path | None:
        """The file ``image`` names inside the collection, or None when it names none (outside, absent)."""
        path = inside_path(image)
        if path is None:
            return None
        try:
            candidate = (self.folder / path).resolve()
            inside = any(candidate.is_relative_to(root) for root in self.roots) and candidate.is_file()
        except OSError:  # a name too long for the file system, …
            return None
        return candidate if inside else None


def register(client: redis.Redis, index_name: str, name: str, manifest: Path) -> None:
    """Record collection ``name`` (its manifest, its folder and the folders its top-level symlinks link in);
    a name already registered for another folder is refused, so loading never re-points another
    collection's items."""
    folder = manifest.parent.resolve()
    roots = [str(folder), *sorted(str(c.resolve()) for c in folder.iterdir() if c.is_symlink() and c.is_dir())]
    record = json.dumps({"folder": str(folder), "roots": roots, "manifest": str(manifest.resolve())})
    key = IndexKeys(index_name).collections
    if not call(client.hsetnx, key, name, record):
        registered = json.loads(call(client.hget, key, name))["folder"]
        if registered != str(folder):
            raise CollectionNameTaken(f"collection name {name!r} is registered for {registered}; choose another name")
        call(client.hset, key, name, record)  # the same folder: its links or manifest may have changed


def registered(client: redis.Redis, index_name: str, name: object) -> RegisteredCollection | None:
    """The collection registered as ``name``; None for a name never registered (or not a string)."""
    record = call(client.hget, IndexKeys(index_name).collections, name) if isinstance(name, str) else None
    if record is None:
        return None
    value = json.loads(record)
    folder = Path(value["folder"])
    manifest = Path(value.get("manifest") or folder / MANIFEST_NAME)
    return RegisteredCollection(folder, tuple(Path(root) for root in value["roots"]), manifest)
