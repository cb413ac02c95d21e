#!/usr/bin/env bash
# Test infrastructure, not part of the product: builds local stand-ins for the official images that
# docker-compose.yml and deploy/Dockerfile name, for machines that cannot reach a container registry.
#
#     bash tests/compose/build-standins.sh [python] [postgres] [rabbitmq]    (default: all three)
#
# It prints VARIABLE=image for each stand-in, e.g. POSTGRES_IMAGE=eda-standin/postgres:17-trixie.
#
# Each stand-in is built from the Debian release that packages the major version the project ships:
#   python    Python 3.11       Debian 12 (bookworm): deploy/Dockerfile's base must be bookworm's 3.11
#   postgres  PostgreSQL 17     Debian 13 (trixie)
#   rabbitmq  RabbitMQ 4.0      Debian 13 (trixie)
# For each release needed, one root file system, made by debootstrap from Debian's own packages and
# given this machine's CA bundle, is imported as eda-standin/debian:<release>; each stand-in is then
# built on its release's from tests/compose/standins/<name>/. The stand-ins keep names of their own
# (eda-standin/...) and never take an official image's tag: tests/compose/run.py passes them to
# compose through PYTHON_IMAGE, POSTGRES_IMAGE and RABBITMQ_IMAGE, and only when the official image
# cannot be had.
#
# Each image carries a label with the hash of everything it was made from (for a base: the recipe
# below, its release and the CA bundle; for the others: their folder and the base image's id), and is
# rebuilt only when that hash changes: a warm run takes a second, the first a few minutes.
#
# Another run (a second checkout's `make test-compose`) may build at the same time on this engine, so
# nothing is pruned wholesale: only the images this run replaced are removed, and `docker image rm`
# (never forced) leaves any that a container or another image still uses.
set -euo pipefail
cd "$(dirname "$0")"

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Containers do not trust this machine's certificate authorities by themselves; a machine whose
# outbound HTTPS goes through an intercepting proxy needs its own CA bundle inside the image for pip
# to reach PyPI during the application's build. Given to the base, so every stand-in has it.
CA_BUNDLE=${STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
LABEL=org.eda-reference.standin.inputs
declare -A SUITES=([python]=bookworm [postgres]=trixie [rabbitmq]=trixie)
declare -A TAGS=(
    [python]=eda-standin/python:3.11-bookworm
    [postgres]=eda-standin/postgres:17-trixie
    [rabbitmq]=eda-standin/rabbitmq:4.0-management-trixie
)
# The variable of docker-compose.yml (and deploy/Dockerfile) that each stand-in is given through.
declare -A VARIABLES=([python]=PYTHON_IMAGE [postgres]=POSTGRES_IMAGE [rabbitmq]=RABBITMQ_IMAGE)
# The images this run rebuilt under a tag another image had: removed at the end, newest first.
replaced=()

say() { printf '[standins] %s\n' "$*" >&2; }
hash_of() { sha256sum | cut -c1-16; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
id_of() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
base_of() { echo "eda-standin/debian:$1"; }

# Builds the base image $BASE of the Debian release $SUITE (both set by the caller, below).
build_base() {
    local inputs rootfs started
    # The recipe is this function itself with the mirrors it uses, and the CA bundle.
    inputs=$({ declare -f build_base; echo "$SUITE $MIRROR $SECURITY_MIRROR"; cat "$CA_BUNDLE" 2>/dev/null; } \
        | hash_of)
    if [ "$(label_of "$BASE")" = "$inputs" ]; then
        say "$BASE is up to date ($inputs)"
        return
    fi
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
    started=$SECONDS
    rootfs=$(mktemp -d /var/tmp/eda-standin-rootfs.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the path is known and must not change
    trap "rm -rf '$rootfs'" EXIT
    say "debootstrap $SUITE from $MIRROR (the first run only; about a minute)"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    # As in Debian's official image: a package installed during a build must not try to start its
    # service (there is no init system in a container).
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    if [ -r "$CA_BUNDLE" ]; then
        # One file per certificate, the Debian way: update-ca-certificates keeps them in the bundle
        # whenever a later package install regenerates it.
        mkdir -p "$rootfs/usr/local/share/ca-certificates/host"
        awk -v dir="$rootfs/usr/local/share/ca-certificates/host" '
            /-----BEGIN CERTIFICATE-----/ { file = sprintf("%s/host-%03d.crt", dir, ++n) }
            file { print > file }
            /-----END CERTIFICATE-----/ { close(file); file = "" }
        ' "$CA_BUNDLE"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change "LABEL $LABEL=$inputs" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    say "$BASE built in $((SECONDS - started)) s ($inputs)"
}

build_standin() {
    local name=$1 tag=${TAGS[$1]} base inputs previous started log
    base=$(base_of "${SUITES[$name]}")
    inputs=$({ id_of "$base"; tar -C "standins/$name" --sort=name \
        --mtime=@0 --owner=0 --group=0 --numeric-owner -c .; } | hash_of)
    if [ "$(label_of "$tag")" = "$inputs" ]; then
        say "$tag is up to date ($inputs)"
        return
    fi
    previous=$(id_of "$tag")
    started=$SECONDS
    log=$(mktemp /var/tmp/eda-standin-build.XXXXXX)
    say "building $tag on $base"
    # The classic builder on purpose: it needs nothing beyond the engine (no buildx plugin).
    DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$base" --label "$LABEL=$inputs" -t "$tag" \
        "standins/$name" >"$log" 2>&1 || { tail -40 "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
    [ -z "$previous" ] || [ "$previous" = "$(id_of "$tag")" ] || replaced+=("$previous")
    say "$tag built in $((SECONDS - started)) s ($inputs)"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(python postgres rabbitmq)
declare -A suites_needed=()
for name in "${names[@]}"; do
    [ -n "${TAGS[$name]:-}" ] || { echo "unknown stand-in: $name (python, postgres or rabbitmq)" >&2; exit 2; }
    suites_needed[${SUITES[$name]}]=1
done
for SUITE in "${!suites_needed[@]}"; do
    BASE=$(base_of "$SUITE")
    previous=$(id_of "$BASE")
    build_base
    [ -z "$previous" ] || [ "$previous" = "$(id_of "$BASE")" ] || replaced+=("$previous")
done
for name in "${names[@]}"; do
    build_standin "$name"
done
# An image replaced by a rebuild is left untagged: remove it, not to fill the disk run after run. The
# stand-ins first, then the bases they were built on; an image still in use (another run's build or
# container) is refused by the engine and left for later.
for ((i = ${#replaced[@]} - 1; i >= 0; i--)); do
    docker image rm "${replaced[i]}" >/dev/null 2>&1 || say "left ${replaced[i]}: still in use"
done
# On standard output, for tests/compose/run.py (progress goes to standard error).
for name in "${names[@]}"; do
    echo "${VARIABLES[$name]}=${TAGS[$name]}"
done
