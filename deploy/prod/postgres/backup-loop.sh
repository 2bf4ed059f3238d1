#!/bin/sh
# The `backup` service of the local-db profile: creates the stanza (once),
# checks archiving end to end, then takes a full backup on Sundays and a
# differential one on other days, at BACKUP_HOUR (UTC, default 3). A failed
# backup exits non-zero: the container restarts and the failure shows in
# `dc ps` and its logs; archiving failures raise ExchangeWalArchivingFailing.
set -eu
hour="${BACKUP_HOUR:-3}"
: "${PGBACKREST_REPO1_CIPHER_PASS:?set PGBACKREST_REPO1_CIPHER_PASS in prod.env (openssl rand -hex 32)}"
until pg_isready -q -h /var/run/postgresql; do sleep 2; done
pgbackrest --stanza=exchange stanza-create
pgbackrest --stanza=exchange check
# The first run always takes a full backup, so a new deployment is covered at once.
pgbackrest --stanza=exchange info --output=json | grep -q '"label"' \
    || pgbackrest --stanza=exchange backup --type=full
while true; do
    now=$(date -u +%s)
    next=$(date -u -d "$(date -u +%F) ${hour}:00" +%s)
    [ "$next" -gt "$now" ] || next=$((next + 86400))
    sleep $((next - now))
    if [ "$(date -u +%u)" = 7 ]; then kind="full"; else kind="diff"; fi
    pgbackrest --stanza=exchange backup --type="$kind"
    pgbackrest --stanza=exchange info
done
