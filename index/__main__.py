"""``python -m index``: inspect an index, or re-bucket it with new centers (atomic swap).

python -m index stats    --redis-url redis://… --index default --bundle models/default
python -m index rebucket --redis-url redis://… --index default --bundle models/default --buckets 256
"""

from __future__ import annotations

import argparse
import json

import redis

from index.bundle import load_bundle
from index.engine import HashIndex
from index.rebuild import rebucket
from index.store import RedisStore


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["stats", "rebucket"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--index", default="default", help="index name (the service's XMHASH_INDEX_NAME)")
    parser.add_argument("--bundle", required=True, help="bundle directory whose code space the index holds")
    parser.add_argument("--buckets", type=int, default=256, help="rebucket: number of centers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    client = redis.Redis.from_url(args.redis_url)
    if args.command == "rebucket":
        summary = rebucket(RedisStore(client, args.index, bundle.bundle_id), bundle.bits, args.buckets, args.seed)
        print(json.dumps(summary, indent=2))
        return
    index = HashIndex.open(client, args.index, bundle.bundle_id, bundle.bits, bundle.centers, bundle.centers_version)
    stats = index.stats()
    stats["bucket_sizes"] = {m: {"min": min(s), "max": max(s)} for m, s in stats["bucket_sizes"].items()}
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
