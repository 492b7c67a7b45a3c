"""``python -m index``: inspect an index, re-bucket it with new centers (atomic swap), or bulk-import items.

python -m index stats    --redis-url redis://… --index default --bundle models/default
python -m index rebucket --redis-url redis://… --index default --bundle models/default --buckets 256
python -m index import   FILE [FILE …] --modality image --redis-url redis://… --index default --bundle models/default

Redis: ``--redis-url`` (``redis+cluster://host:port,…`` for a Redis Cluster, docs/cluster.md), or
``--sentinels host:port,…`` (``--master-name``) for the primary Redis Sentinel names; ``XMHASH_REDIS_PASSWORD``
in the environment when the nodes need one; writes wait for ``--wait-replicas`` replicas (default: 1 with
sentinels, 0 without; on a cluster, each shard's master's; ``index.redis_connection``).

import: FILE is a .npy, or a .npz with one array named features or codes (feature vectors, encoded with
the bundle, or packed uint8 codes); FILE's stem + .jsonl holds one {"id": …, "metadata": {…}} per row.
Written in atomic chunks; a re-run of the same command resumes (index/bulk_import.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import redis

from index.bulk_import import DEFAULT_CHUNK, import_files, open_store
from index.bundle import load_bundle
from index.engine import HashIndex
from index.errors import IndexInputError, StoreUnavailableError
from index.rebuild import rebucket
from index.redis_connection import DEFAULT_MASTER_NAME, RedisTarget, connect, parse_sentinels
from index.store import RedisStore


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["stats", "rebucket", "import"])
    parser.add_argument("files", nargs="*", type=Path, help="import: .npy/.npz files")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis-url")
    where.add_argument("--sentinels", type=parse_sentinels, help="host:port,host:port of Redis Sentinel")
    parser.add_argument("--master-name", default=DEFAULT_MASTER_NAME, help="the primary's name at the sentinels")
    parser.add_argument("--wait-replicas", type=int, default=None, help="replicas a write waits for (WAIT)")
    parser.add_argument("--index", default="default", help="index name (the service's XMHASH_INDEX_NAME)")
    parser.add_argument("--bundle", required=True, help="bundle directory whose code space the index holds")
    parser.add_argument("--buckets", type=int, default=256, help="rebucket: number of centers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", choices=["image", "text"], help="import: the items' modality")
    parser.add_argument("--sidecar", type=Path, help="import: ids and metadata of a single FILE (default FILE.jsonl)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="import: items per atomic write")
    parser.add_argument("--no-progress", action="store_true", help="import: no progress bar")
    parser.add_argument("--shards", type=int, help="import: shards of a new index (default: one per cluster master)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    password = os.environ.get("XMHASH_REDIS_PASSWORD")
    client = connect(RedisTarget(args.redis_url, args.sentinels or (), args.master_name, password, args.wait_replicas))
    if args.command == "import":
        sys.exit(_import(args, bundle, client))
    if args.command == "rebucket":
        summary = rebucket(RedisStore(client, args.index, bundle.bundle_id), bundle.bits, args.buckets, args.seed)
        print(json.dumps(summary, indent=2))
        return
    index = HashIndex.open(client, args.index, bundle.code_space)
    stats = index.stats()
    stats["bucket_sizes"] = {m: {"min": min(s), "max": max(s)} for m, s in stats["bucket_sizes"].items()}
    print(json.dumps(stats, indent=2))


def _import(args: argparse.Namespace, bundle, client: redis.Redis) -> int:
    """Run an import; a clear message and status 1 when it stops (bad input, Redis unavailable)."""
    if not args.files or args.modality is None:
        print("import needs FILE … and --modality", file=sys.stderr)
        return 2
    try:
        store = open_store(client, args.index, bundle, args.shards)
        summary = import_files(store, bundle, args.modality, args.files, sidecar=args.sidecar, chunk=args.chunk,
                               progress=not args.no_progress)  # fmt: skip
    except IndexInputError as exc:
        print(f"import refused: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailableError as exc:
        print(f"import stopped: {exc}. The chunks written so far are kept; run the same command again to "
              "resume with the rest.", file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(dataclasses.asdict(summary)))
    return 0


if __name__ == "__main__":
    main()
