#!/usr/bin/env bash
# The stand-in's entrypoint: writes the configuration that the official rabbitmq image's variables
# stand for, then runs the broker in the foreground as its own user (test infrastructure).
set -Eeuo pipefail

if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    # default_user and default_pass take effect when the node's database is new, as in the official
    # image. Like it, let `guest` sign in from other hosts (RabbitMQ allows it on loopback only).
    cat >/etc/rabbitmq/rabbitmq.conf <<EOF
loopback_users.guest = false
listeners.tcp.default = 5672
management.tcp.port = 15672
log.console = true
log.console.level = info
log.console.use_colors = off
log.file = false
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
EOF
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
    # The server script traps SIGTERM and stops the node cleanly: fit to be the container's process.
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
fi

exec "$@"
