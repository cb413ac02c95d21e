#!/usr/bin/env bash
# Gives each service its own database and its own login role, when they are missing (idempotent).
#
# The compose file mounts this into the Postgres image's /docker-entrypoint-initdb.d, which runs it
# once, as the superuser, when the data volume is new. `make dev` runs it against a local Postgres.
# Each role owns only its own database, and no other role may connect to it.
set -euo pipefail

create_service_database() {
    local database=$1 role=$2 password=$3
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
        --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
        -v database="$database" -v role="$role" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'database') \gexec
SQL
    echo "create-databases: database ${database} owned by role ${role} is ready"
}

create_service_database "${USERS_DB_NAME:-users}" "${USERS_DB_USER:-users_svc}" "${USERS_DB_PASSWORD:-users_svc}"
create_service_database "${ORDERS_DB_NAME:-orders}" "${ORDERS_DB_USER:-orders_svc}" "${ORDERS_DB_PASSWORD:-orders_svc}"
create_service_database "${GATEWAY_DB_NAME:-gateway}" "${GATEWAY_DB_USER:-gateway_svc}" "${GATEWAY_DB_PASSWORD:-gateway_svc}"
