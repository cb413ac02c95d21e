#!/usr/bin/env bash
# `make databases`: create-databases.sh against the local Postgres, as its superuser, after checking
# that the login works, so that a refused one ends in the command that works rather than in a prompt.
#
# The connection is libpq's, from PGHOST, PGPORT, PGUSER and PGPASSWORD (or ~/.pgpass). An empty PGHOST,
# or a directory, means the Unix socket. PGSUDO, when set (e.g. "sudo -u postgres"), runs psql as
# another OS user: on a stock Debian or Ubuntu, the postgres OS user is the one that Postgres lets in
# through the socket without a password (peer authentication), while TCP asks for a password
# (scram-sha-256) that Debian never gives the postgres role.
set -euo pipefail
cd "$(dirname "$0")"

PGSUDO=${PGSUDO:-}
PGUSER=${PGUSER:-postgres}
goal=${MAKE_GOAL:-databases}

# Says what is wrong and what to do, a line each, and stops make.
fail() { printf '%s\n' "$@" >&2; exit 1; }

command -v psql >/dev/null \
    || fail "make databases: psql, PostgreSQL's client, is not installed: sudo apt-get install postgresql-client"

# What psql gets: the connection settings, and the names a user may have chosen for the services'
# databases and roles. PGSUDO may start from a clean environment (sudo does), so they are passed on
# the command line; PGPASSWORD is not, as it would show in `ps`, and peer authentication needs none.
settings=(PGHOST="${PGHOST:-}" PGUSER="$PGUSER" POSTGRES_USER="$PGUSER")
for name in PGPORT {USERS,ORDERS,GATEWAY}_DB_{NAME,USER,PASSWORD}; do
    if [ -n "${!name:-}" ]; then settings+=("$name=${!name}"); fi
done

case "${PGHOST:-}" in
    "" | /*) where="the Unix socket in ${PGHOST:-/var/run/postgresql}" ;;
    *) where="${PGHOST}:${PGPORT:-5432} over TCP" ;;
esac
# The command that works on a stock Debian or Ubuntu: the same settings, through the socket (the one
# asked for, or the default one), as the postgres OS user.
if [ "$(id -u)" -eq 0 ]; then as_postgres="runuser -u postgres --"; else as_postgres="sudo -u postgres"; fi
case "${PGHOST:-}" in /*) socket=$PGHOST ;; *) socket="" ;; esac
through_socket="make $goal PGHOST=$socket${PGPORT:+ PGPORT=$PGPORT} PGSUDO=\"$as_postgres\""

# -w: never prompt for a password; a refusal is explained below instead.
if ! error=$($PGSUDO env "${settings[@]}" psql -w --no-psqlrc -d postgres -Atqc 'SELECT 1' 2>&1 >/dev/null); then
    printf 'make databases: psql cannot log in to Postgres as %s through %s%s:\n%s\n' \
        "$PGUSER" "$where" "${PGSUDO:+ (as: $PGSUDO)}" "$error" >&2
    case "$error" in
        *"password authentication failed"*)
            [ -z "${PGPASSWORD:-}" ] || fail "Postgres refused the password in PGPASSWORD for $PGUSER (or has no such" \
                "role). Give the right one, or go through the Unix socket as the postgres OS user:" \
                "    $through_socket"
            fail "Postgres refused $PGUSER's password (~/.pgpass?) or has no such role. Go through the Unix" \
                "socket as the postgres OS user, who needs no password there:" \
                "    $through_socket" ;;
        *"no password supplied"*)
            fail "Postgres asks for a password here, as Debian and Ubuntu do over TCP (and their postgres role" \
                "has none). Either go through the Unix socket as the postgres OS user, who needs none there:" \
                "    $through_socket" \
                "or give the role's password, if it has one:" \
                "    PGPASSWORD=... make $goal" ;;
        *"Peer authentication failed"*)
            fail "Through the socket, Postgres lets in only the OS user of the role's name. Run psql as it:" \
                "    $through_socket" ;;
        *"Connection refused"* | *"No such file or directory"*)
            fail "No Postgres answers there. Install one (Debian and Ubuntu start it at once):" \
                "    sudo apt-get install postgresql" \
                "or point PGHOST and PGPORT at yours." ;;
        *"does not exist"*)
            fail "Name a role that may create roles and databases: make $goal PGUSER=..." ;;
        *)
            fail "PGHOST, PGPORT, PGUSER and PGPASSWORD choose the connection (see the Makefile's comment" \
                "on PGHOST). On a stock Debian or Ubuntu, this works:" \
                "    $through_socket" ;;
    esac
fi

# The script comes in on stdin, so that an OS user who may not read this checkout can still run it.
(cd / && $PGSUDO env "${settings[@]}" bash -s) <create-databases.sh
