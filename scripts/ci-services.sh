#!/usr/bin/env bash
# Make sure what the tests need is there: PostgreSQL and Redis running, Chromium for the browser tests.
# On the development machines PostgreSQL already runs; on a clean one, start or install it.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null || ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: installing it from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  # Trust local TCP connections for the throwaway CI cluster.
  hba=/etc/postgresql/$version/main/pg_hba.conf
  grep -q "kashforce-ci" "$hba" || sed -i '1i host all all 127.0.0.1/32 trust # kashforce-ci' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up && echo "PostgreSQL is up on 127.0.0.1:5432"

# Redis, for the scale-out tests on the Redis broker: a throwaway server on loopback only.
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    echo "Redis is not installed: installing it from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
redis_up && echo "Redis is up on 127.0.0.1:6379"

# The browser tests drive Debian's Chromium (a test tool's own browser download cannot work
# here: only the package registries are reachable).
if ! command -v chromium >/dev/null; then
  echo "Chromium is not installed: installing it from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version
