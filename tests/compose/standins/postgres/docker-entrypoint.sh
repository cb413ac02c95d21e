#!/usr/bin/env bash
# The stand-in's entrypoint: the part of the official postgres image's docker-entrypoint.sh that the
# project uses, written anew for Debian's packages (test infrastructure, not part of the product).
set -Eeuo pipefail

if [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    # Started as root: make the data and socket folders the server's, then run as its user.
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    install -d -o postgres -g postgres -m 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    export POSTGRES_USER POSTGRES_DB POSTGRES_PASSWORD

    # As the official image does: trust on the socket and on loopback inside the container (initdb's
    # own lines), passwords from anywhere else.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth=trust -D "$PGDATA"
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    # A temporary server on the Unix socket only: nothing outside (nor a TCP health check) can
    # reach it before the init scripts are done.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    export PGUSER="$POSTGRES_USER" PGPASSWORD="$POSTGRES_PASSWORD" PGHOST=/var/run/postgresql
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        [ -e "$file" ] || continue
        case "$file" in
            *.sh)
                if [ -x "$file" ]; then
                    echo "docker-entrypoint: running $file"
                    "$file"
                else
                    echo "docker-entrypoint: sourcing $file"
                    # shellcheck disable=SC1090
                    . "$file"
                fi
                ;;
            *.sql)
                echo "docker-entrypoint: running $file"
                psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -f "$file"
                ;;
            *) echo "docker-entrypoint: ignoring $file" ;;
        esac
    done
    unset PGUSER PGPASSWORD PGHOST
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "docker-entrypoint: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
