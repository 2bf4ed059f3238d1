#!/bin/sh
# Prints the exchange's Redis ACL users: one per service with only the
# commands, keys and Pub/Sub channels that service issues, `admin` for the
# operator tools (exchange admin dlq, scripts/restore-check.sh, the RUNBOOK's
# redis-cli commands), and the default user switched off.
#
#   deploy/prod/redis/users-acl.sh              ACL file lines (redis-server --aclfile)
#   deploy/prod/redis/users-acl.sh --setuser    the same as ACL SETUSER commands, for
#                                               `redis-cli ... < file` on a Redis you run
#
# Passwords come from the environment, REDIS_PASSWORD_GATEWAY, _ORDER,
# _MATCHING, _CLEARING, _MARKETDATA, _WALLET and _ADMIN (at least 32
# characters of [A-Za-z0-9._~-], so they go into a URL unescaped: generate
# each with `openssl rand -hex 32`). Only their SHA-256 is printed (`#<hash>`),
# never a password. Key names and channels are under REDIS_KEY_PREFIX
# (default exchange), as the services use them:
#   <prefix>:orders:{MARKET}      order streams: order XADDs, matching consumes
#   <prefix>:events               the event stream: matching XADDs and trims,
#                                 clearing and marketdata consume
#   <prefix>:<stream>:dlq         dead letters (XADD by the stream's consumer)
#   <prefix>:<stream>:consumer:<group>:<name>
#                                 a consumer loop's claim on its name (SET, DEL)
#   <prefix>:bn:*                 the gateway's Binance listenKeys
#   <prefix>:private:<user>       Pub/Sub: clearing, wallet and gateway publish,
#                                 every gateway PSUBSCRIBEs <prefix>:private:*
# Redis 7 or newer (selectors, the `(...)` groups, need 7.0).
# POSIX sh: the redis image runs it (deploy/prod/redis/entrypoint.sh).
set -eu

mode=aclfile
case "${1:-}" in
    '') ;;
    --setuser) mode=setuser ;;
    -h | --help)
        sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) echo "users-acl: unknown argument $1 (see --help)" >&2; exit 64 ;;
esac

p="${REDIS_KEY_PREFIX:-exchange}"
case "$p" in
    '' | *[!A-Za-z0-9._:-]*) echo "users-acl: REDIS_KEY_PREFIX must be letters, digits, '.', '_', ':' or '-'" >&2; exit 64 ;;
esac

hash_of() { # hash_of USER -> #<sha256 of REDIS_PASSWORD_<USER>>
    var="REDIS_PASSWORD_$(printf '%s' "$1" | tr '[:lower:]' '[:upper:]')"
    eval "pw=\${$var:-}"
    if [ -z "$pw" ]; then
        echo "users-acl: $var is not set (openssl rand -hex 32)" >&2
        return 1
    fi
    case "$pw" in
        *[!A-Za-z0-9._~-]*)
            echo "users-acl: $var may hold only A-Z a-z 0-9 . _ ~ - (openssl rand -hex 32)" >&2
            return 1
            ;;
    esac
    if [ "${#pw}" -lt 32 ]; then
        echo "users-acl: $var is too short (${#pw} characters, need at least 32)" >&2
        return 1
    fi
    printf '#%s' "$(printf '%s' "$pw" | sha256sum | cut -d ' ' -f 1)"
}

# Stream consumer commands (exchange-common/src/streams.rs): read as a group
# member, acknowledge, reclaim, count deliveries, export lag, create the group.
consume='+xreadgroup +xack +xautoclaim +xpending +xinfo|groups +xlen +xgroup|create'
# A consumer loop's claim on its name (exchange-common/src/consumer_name.rs:
# SET ... GET every 2 s, DEL at stop), a key beside the stream.
claim='+set +del'

rules() { # rules USER -> the ACL rules of USER (without the password)
    case "$1" in
        gateway)
            # Credential-change announcements and every user's private events;
            # Binance listenKeys (SET EX / GET / EXPIRE / DEL / GETDEL / EXISTS).
            echo "-@all +ping +get +set +setex +getdel +del +exists +expire +publish +psubscribe +punsubscribe ~$p:bn:* &$p:private:*"
            ;;
        order)
            # Journaled commands onto their market's stream; the republisher
            # reads the newest entry of each.
            echo "-@all +ping +xadd +xrevrange ~$p:orders:*"
            ;;
        matching)
            # Consumes the order streams (group matching) and trims them below
            # its snapshot; publishes event batches; trims the event stream
            # below every group (EXISTS, XINFO GROUPS, XPENDING, XTRIM, XLEN, XRANGE).
            echo "-@all +ping $consume +xtrim ~$p:orders:* (+exists +xinfo|groups +xpending +xtrim +xlen +xrange ~$p:events) (+xadd ~$p:events ~$p:orders:*:dlq) ($claim ~$p:orders:*:consumer:*)"
            ;;
        clearing)
            # Consumes the event stream (group clearing); private events after
            # each settlement.
            echo "-@all +ping $consume +publish ~$p:events ~$p:events:dlq &$p:private:* (+xadd ~$p:events:dlq) ($claim ~$p:events:consumer:*)"
            ;;
        marketdata)
            # Consumes the event stream (one group per replica); publishes nothing to Redis.
            echo "-@all +ping $consume ~$p:events ~$p:events:dlq (+xadd ~$p:events:dlq) ($claim ~$p:events:consumer:*)"
            ;;
        wallet)
            # Deposit and withdrawal events to the user's private channel.
            echo "-@all +ping +publish &$p:private:*"
            ;;
        admin)
            # exchange admin dlq list|show|replay|drop (SCAN TYPE stream, XLEN,
            # XRANGE, XADD, XDEL), scripts/restore-check.sh (XREVRANGE, and
            # UNLINK of every key with --reset-redis), the RUNBOOK's XINFO,
            # XPENDING, XGROUP DELCONSUMER|DESTROY. No Pub/Sub.
            echo "-@all +ping +scan +type +exists +xlen +xrange +xrevrange +xadd +xdel +xinfo +xpending +xgroup|destroy +xgroup|delconsumer +unlink +del ~$p:*"
            ;;
    esac
}

users="gateway order matching clearing marketdata wallet admin"
out=""
for u in $users; do
    h="$(hash_of "$u")" || exit 1
    if [ "$mode" = aclfile ]; then
        line="user $u reset on $h $(rules "$u")"
    else
        line="ACL SETUSER $u reset on $h $(rules "$u")"
    fi
    out="$out$line
"
done
if [ "$mode" = aclfile ]; then
    printf '%s' "$out"
    echo "user default off resetpass resetkeys resetchannels -@all"
else
    printf '%s' "$out"
    echo "ACL SETUSER default off resetpass resetkeys resetchannels -@all"
fi
