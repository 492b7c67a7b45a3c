"""Upgrading a generation written before entries existed: ids and metadata were then two hashes
(``labels:`` label → id, ``meta:`` id → metadata), or there was no label map at all. Run before a
generation is read whole (a serving process loading it, a re-bucket copying it); a no-op once done.
"""

from __future__ import annotations

import redis

from index.redis_calls import LuaScript, call
from index.redis_keys import GenerationKeys
from index.stored_values import HEADER

_SCAN_COUNT = 10_000  # HSCAN's per-step hint: few round trips, no long block of Redis
_PAIRS = 4000  # (label, id) pairs per script call: each call is short, so other clients are not held up

# KEYS: items, entries, the former meta hash. ARGV: label, id, … Writes an entry only where the id still
# holds that label; returns how many were written.
_UPGRADE_ENTRIES = LuaScript("""
local written = 0
for i = 1, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i + 1])
  if value and string.format('%d', struct.unpack('>I8', value, 5)) == ARGV[i] then
    local meta = redis.call('HGET', KEYS[3], ARGV[i + 1]) or '{}'
    written = written + redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. '\\n' .. meta)
  end
end
return written
""")


def upgrade_entries(client: redis.Redis, keys: GenerationKeys, modality: str) -> int:
    """Give every stored item of ``modality`` its ``entries:`` entry where some lack one, then drop the
    former hashes; returns how many entries were written. An entry is written only if the item still
    holds that label, so a write racing this leaves no stale entry."""
    script_keys = [keys.items[modality], keys.entries[modality], keys.former_meta[modality]]
    former = [keys.former_meta[modality], keys.former_labels[modality]]
    pipe = client.pipeline(transaction=True)
    pipe.hlen(script_keys[0])
    pipe.hlen(script_keys[1])
    pipe.exists(*former)
    items, entries, old_layout = call(pipe.execute)
    if items == entries and not old_layout:
        return 0
    written, cursor = 0, 0
    while True:
        cursor, page = call(client.hscan, script_keys[0], cursor, count=_SCAN_COUNT)
        pairs = [part for item, value in page.items() for part in (HEADER.unpack(value[: HEADER.size])[1], item)]
        for start in range(0, len(pairs), 2 * _PAIRS):
            written += _UPGRADE_ENTRIES(client, script_keys, pairs[start : start + 2 * _PAIRS])
        if cursor == 0:
            break
    call(client.unlink, *former)
    return written
