#!/bin/sh
# Entrypoint of the real node's Redis image (Debian's redis-server), as the official image's:
# arguments that start with `-` are options of redis-server, which runs as the redis user and
# accepts connections from other pods (protected mode off: there is no password).
set -eu
if [ "${1#-}" != "$1" ] || [ $# -eq 0 ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
  if [ "$(id -u)" = 0 ]; then
    mkdir -p /data && chown redis:redis /data
    cd /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
