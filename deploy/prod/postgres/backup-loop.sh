#!/bin/sh
# The `backup` service of the local-db profile: creates the stanza (once),
# checks archiving end to end, takes a full backup when the repository has
# none, then a full backup on Sundays and a differential one on other days,
# at BACKUP_HOUR (UTC, default 3). A failed backup exits non-zero: the
# container restarts and the failure shows in `dc ps` and its logs;
# archiving failures raise ExchangeWalArchivingFailing.
# Env: PGBACKREST_REPO1_CIPHER_PASS (required), PGBACKREST_STANZA (default
# exchange), PGHOST (default /var/run/postgresql), BACKUP_HOUR,
# BACKUP_LOOP_ONCE (set: stop after the first part, for tests); every
# pgBackRest option also as PGBACKREST_<OPTION> (scripts/restore-drill.sh
# runs this script against its own server that way).
set -eu
hour="${BACKUP_HOUR:-3}"
: "${PGBACKREST_REPO1_CIPHER_PASS:?set PGBACKREST_REPO1_CIPHER_PASS in prod.env (openssl rand -hex 32)}"
export PGBACKREST_STANZA="${PGBACKREST_STANZA:-exchange}"
export PGHOST="${PGHOST:-/var/run/postgresql}"
until pg_isready -q; do sleep 2; done
pgbackrest stanza-create
pgbackrest check
# A new deployment is covered at once.
pgbackrest info --output=json | grep -q '"label"' || pgbackrest backup --type=full
if [ -n "${BACKUP_LOOP_ONCE:-}" ]; then
    echo "backup-loop: ready (once)"
    exit 0
fi
echo "backup-loop: ready, next backup at ${hour}:00 UTC"
while true; do
    now=$(date -u +%s)
    next=$(date -u -d "$(date -u +%F) ${hour}:00" +%s)
    [ "$next" -gt "$now" ] || next=$((next + 86400))
    sleep $((next - now))
    if [ "$(date -u +%u)" = 7 ]; then kind="full"; else kind="diff"; fi
    pgbackrest backup --type="$kind"
    pgbackrest info
done
