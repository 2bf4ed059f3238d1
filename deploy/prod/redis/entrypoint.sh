#!/bin/sh
# The local-db Redis container's entrypoint: writes the ACL file
# (/tmp/users.acl, readable by the redis user only) from the REDIS_PASSWORD_*
# environment with users-acl.sh, then hands over to the image's own entrypoint
# with the compose command (redis-server --aclfile /tmp/users.acl ...).
# A missing or weak password stops the container here, naming the variable.
set -eu
umask 077
sh /etc/exchange-redis/users-acl.sh >/tmp/users.acl.new
chown redis:redis /tmp/users.acl.new 2>/dev/null || true
mv /tmp/users.acl.new /tmp/users.acl
exec docker-entrypoint.sh "$@"
