#!/usr/bin/env bash
# Test infrastructure, not part of the product: builds local stand-ins for the official images that
# docker-compose.yml and deploy/Dockerfile name, for machines that cannot reach a container registry.
#
#     bash tests/compose/build-standins.sh [python] [postgres] [rabbitmq]    (default: all three)
#
# It prints VARIABLE=image for each stand-in, e.g. POSTGRES_IMAGE=eda-standin/postgres:15-bookworm.
#
# One Debian 12 (bookworm) root file system, made by debootstrap from Debian's own packages and given
# this machine's CA bundle, is imported as eda-standin/debian:bookworm; each stand-in is then built
# on it from tests/compose/standins/<name>/. The stand-ins keep names of their own (eda-standin/...)
# and never take an official image's tag: tests/compose/run.py passes them to compose through
# PYTHON_IMAGE, POSTGRES_IMAGE and RABBITMQ_IMAGE, and only when the official image cannot be had.
#
# Each image carries a label with the hash of everything it was made from (for the base: the recipe
# below and the CA bundle; for the others: their folder and the base image's id), and is rebuilt only
# when that hash changes: a warm run takes a second, the first about a minute.
set -euo pipefail
cd "$(dirname "$0")"

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Containers do not trust this machine's certificate authorities by themselves; a machine whose
# outbound HTTPS goes through an intercepting proxy needs its own CA bundle inside the image for pip
# to reach PyPI during the application's build. Given to the base, so every stand-in has it.
CA_BUNDLE=${STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
LABEL=org.eda-reference.standin.inputs
BASE=eda-standin/debian:$SUITE
declare -A TAGS=(
    [python]=eda-standin/python:3.11-$SUITE
    [postgres]=eda-standin/postgres:15-$SUITE
    [rabbitmq]=eda-standin/rabbitmq:3.10-management-$SUITE
)
# The variable of docker-compose.yml (and deploy/Dockerfile) that each stand-in is given through.
declare -A VARIABLES=([python]=PYTHON_IMAGE [postgres]=POSTGRES_IMAGE [rabbitmq]=RABBITMQ_IMAGE)

say() { printf '[standins] %s\n' "$*" >&2; }
hash_of() { sha256sum | cut -c1-16; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

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
    local name=$1 tag=${TAGS[$1]} inputs started log
    inputs=$({ docker image inspect --format '{{.Id}}' "$BASE"; tar -C "standins/$name" --sort=name \
        --mtime=@0 --owner=0 --group=0 --numeric-owner -c .; } | hash_of)
    if [ "$(label_of "$tag")" = "$inputs" ]; then
        say "$tag is up to date ($inputs)"
        return
    fi
    started=$SECONDS
    log=$(mktemp /var/tmp/eda-standin-build.XXXXXX)
    say "building $tag"
    # The classic builder on purpose: it needs nothing beyond the engine (no buildx plugin).
    DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$BASE" --label "$LABEL=$inputs" -t "$tag" \
        "standins/$name" >"$log" 2>&1 || { tail -40 "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
    say "$tag built in $((SECONDS - started)) s ($inputs)"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(python postgres rabbitmq)
for name in "${names[@]}"; do
    [ -n "${TAGS[$name]:-}" ] || { echo "unknown stand-in: $name (python, postgres or rabbitmq)" >&2; exit 2; }
done
build_base
for name in "${names[@]}"; do
    build_standin "$name"
done
# Stand-ins replaced by a rebuild are left untagged: remove them, not to fill the disk run after run.
docker image prune --force --filter "label=$LABEL" >/dev/null
# On standard output, for tests/compose/run.py (progress goes to standard error).
for name in "${names[@]}"; do
    echo "${VARIABLES[$name]}=${TAGS[$name]}"
done
