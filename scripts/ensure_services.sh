#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis used by the test suite are up; start whichever is down.
#
# Safe to run any number of times: a service that already answers is left alone. Each start is
# followed by a bounded wait, and the script fails with a readable message if a service never
# answers. Meant for this machine (Debian packages, run as root); override the addresses with
# PG_HOST/PG_PORT/PG_USER, REDIS_HOST/REDIS_PORT and the wait with SERVICES_WAIT_SECONDS.
set -euo pipefail

PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-60}"

say() { echo "ensure_services: $*"; }
die() {
    echo "ensure_services: ERROR: $*" >&2
    exit 1
}

# --- probes ---------------------------------------------------------------------------------------

postgres_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -t 2
    else
        # No client tools: settle for the port accepting connections.
        timeout 2 bash -c "exec 3<>/dev/tcp/$PG_HOST/$PG_PORT" 2>/dev/null
    fi
}

redis_answers() {
    local reply
    if command -v redis-cli >/dev/null 2>&1; then
        reply="$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null || true)"
    else
        reply="$(timeout 3 bash -c "exec 3<>/dev/tcp/$REDIS_HOST/$REDIS_PORT && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null || true)"
    fi
    [[ "$reply" == PONG* || "$reply" == "+PONG"* ]]
}

wait_until() { # wait_until <name> <probe function>
    local name="$1" probe="$2" deadline=$((SECONDS + WAIT_SECONDS))
    until "$probe"; do
        if ((SECONDS >= deadline)); then
            die "$name did not answer within ${WAIT_SECONDS}s"
        fi
        sleep 0.5
    done
}

# --- starters -------------------------------------------------------------------------------------

start_postgres() {
    command -v pg_ctlcluster >/dev/null 2>&1 || die "PostgreSQL is down and pg_ctlcluster is not installed"
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$version" ]] || die "PostgreSQL is down and no cluster is configured under /etc/postgresql"
    say "PostgreSQL is down: starting cluster $version/main"
    # A failed start (for example "already starting") is judged by the wait below, not here.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        say "pg_ctlcluster returned $?; waiting to see whether PostgreSQL comes up anyway"
}

start_redis() {
    command -v redis-server >/dev/null 2>&1 || die "Redis is down and redis-server is not installed"
    say "Redis is down: starting redis-server on port $REDIS_PORT"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log ||
        say "redis-server returned $?; waiting to see whether Redis comes up anyway"
}

# --- main -----------------------------------------------------------------------------------------

if postgres_answers; then
    say "PostgreSQL is up on $PG_HOST:$PG_PORT"
else
    start_postgres
    wait_until "PostgreSQL on $PG_HOST:$PG_PORT" postgres_answers
    say "PostgreSQL is up on $PG_HOST:$PG_PORT"
fi

# pg_isready succeeds even for an unknown role; the suite needs to log in as $PG_USER.
if command -v psql >/dev/null 2>&1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc "select 1" >/dev/null ||
        die "PostgreSQL answers but role '$PG_USER' cannot log in to database 'postgres' (the tests need trust auth for it)"
fi

if redis_answers; then
    say "Redis is up on $REDIS_HOST:$REDIS_PORT"
else
    start_redis
    wait_until "Redis on $REDIS_HOST:$REDIS_PORT" redis_answers
    say "Redis is up on $REDIS_HOST:$REDIS_PORT"
fi
