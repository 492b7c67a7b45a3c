#!/bin/sh
# One Redis Sentinel watching the xmhash primary (docs/ha.md), the same on a host, in compose and in the tests:
#   sentinel.sh PORT PRIMARY_HOST PRIMARY_PORT DIR [DOWN_AFTER_MS] [BIND]
# Its configuration is written to DIR/sentinel.conf on the first start only: Sentinel rewrites that file
# with what it learns (the current primary, the other sentinels), which a restart must keep.
# XMHASH_REDIS_PASSWORD, when set, is the password of the data nodes and of this sentinel.
set -eu
port=$1 primary_host=$2 primary_port=$3 dir=$4 down_after=${5:-2000} bind=${6:-0.0.0.0}
mkdir -p "$dir"
conf="$dir/sentinel.conf"
if [ ! -f "$conf" ]; then
  cat > "$conf" <<CONF
port $port
bind $bind
dir $dir
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor xmhash $primary_host $primary_port 2
sentinel down-after-milliseconds xmhash $down_after
sentinel failover-timeout xmhash 10000
sentinel parallel-syncs xmhash 1
CONF
  if [ -n "${XMHASH_REDIS_PASSWORD:-}" ]; then
    printf 'sentinel auth-pass xmhash %s\nrequirepass %s\n' "$XMHASH_REDIS_PASSWORD" "$XMHASH_REDIS_PASSWORD" >> "$conf"
  fi
fi
exec redis-server "$conf" --sentinel
