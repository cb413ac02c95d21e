# Every command a user or CI needs. `make help` lists them.
VENV ?= .venv
BIN := $(VENV)/bin
# The Python that makes .venv: 3.11 or newer (make PYTHON=python3.12 ... to choose another).
PYTHON ?= python3
SERVICE ?= users_service
# The local Postgres that `make databases` (so also `make dev`) creates the services' databases in, as
# its superuser. The default, TCP to 127.0.0.1, needs no password where local connections are trusted.
# A stock Debian or Ubuntu asks for one there, and lets only the postgres OS user in through the Unix
# socket (peer authentication): then give the password (PGPASSWORD=... make dev), or go through the
# socket as that user: make dev PGHOST= PGSUDO="sudo -u postgres" (an empty PGHOST means the socket).
PGHOST ?= 127.0.0.1
PGUSER ?= postgres
PGSUDO ?=
export PGHOST PGUSER
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --no-emit-index-url --no-emit-find-links \
	--strip-extras $(LOCK_ARGS)
# What was asked of make, for the commands its messages suggest.
GOALS := $(or $(MAKECMDGOALS),install)

.DEFAULT_GOAL := help
.PHONY: help install dev databases broker keys test test-quick test-containers test-compose test-cluster \
	cluster-up cluster-down lint format lock clean \
	dlq dlq-replay outbox outbox-retry demo demo-throwaway demo-compose stack bench chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# The virtual environment itself, made only by a Python that can: 3.11 or newer, with its ensurepip
# (which Debian and Ubuntu package apart, in pythonX.Y-venv). A venv without bin/pip, as Debian's
# `python3 -m venv` leaves one when ensurepip is missing, is made again from scratch (--clear).
$(BIN)/pip:
	@version=$$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null) || { \
		echo "eda-reference needs Python 3.11 or newer, and there is no $(PYTHON) here. Install one" \
			"(sudo apt-get install python3 python3-venv), or run: make PYTHON=python3.12 $(GOALS)" >&2; \
		exit 1; }; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "eda-reference needs Python 3.11 or newer; $(PYTHON) is $$version. Install a newer one," \
			"or run: make PYTHON=python3.12 $(GOALS)" >&2; \
		exit 1; }; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		echo "$(PYTHON) ($$version) cannot make a virtual environment: its ensurepip module is missing." \
			"Install it: sudo apt-get install python$${version%.*}-venv" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(if $(wildcard $(VENV)/pyvenv.cfg),--clear) $(VENV)

# Everything but the benchmark's extra: what `make dev`, `make demo` and the quick tests need.
$(BIN)/.installed: requirements-dev.lock pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

# The benchmark's extra on top (matplotlib, py-spy): for `make bench`, for mypy, which checks bench/
# too, and so for `make test`, which also runs the benchmark's smoke test. Its lock is resolved within
# the dev lock's pins, so that installing it adds packages and changes none.
$(BIN)/.bench-installed: requirements-bench.lock $(BIN)/.installed
	$(BIN)/pip install --quiet --require-hashes -r requirements-bench.lock
	@touch $@

install: $(BIN)/.installed ## create .venv with the locked dependencies (lint, test and bench add the benchmark's)

databases: ## create each service's database and role in the local Postgres, if missing (see PGHOST above)
	@PGSUDO='$(PGSUDO)' MAKE_GOAL='$(or $(MAKECMDGOALS),databases)' bash deploy/postgres/create-local-databases.sh

# The local RabbitMQ's users, permissions and policies (shared/broker_setup.py), through its management
# API as its administrator: by default guest on http://127.0.0.1:15672 (RABBITMQ_MANAGEMENT_URL,
# RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD choose others). Each service signs in as its own user
# with its name as its password, the tools as `operator`: the development defaults of their settings.
# Where the management plugin is off (Debian and Ubuntu install it so), it says what to run.
broker: install ## give the local RabbitMQ the services' users, permissions and policies (again)
	$(BIN)/python -m shared.broker_setup

keys: install ## create the token-signing key pair in .keys/, if missing
	$(BIN)/python -m users_service.keygen

dev: install databases broker keys ## run the gateway and both services locally (honcho, Procfile)
	@# Every line names its service and time itself, so honcho's own prefix would only repeat them;
	@# honcho pipes the output, so the services are told to colour it when make runs on a terminal.
	PATH="$(CURDIR)/$(BIN):$$PATH" FORCE_COLOR=$$([ -t 1 ] && echo 1) $(BIN)/honcho start --no-prefix

lint: $(BIN)/.bench-installed ## ruff and mypy (strict) over the code and the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite also measures the product's coverage, and fails below the floor in pyproject.toml
# (`.venv/bin/coverage report` then lists what each file misses); a part of it (PYTEST_ARGS) does not.
test: lint ## the whole suite on servers of its own (containers or private instances; it says which)
	$(BIN)/pytest -m "not cluster" $(or $(PYTEST_ARGS),--cov --cov-report=)

# The markers are declared in pyproject.toml; what is left runs in-process, each test in seconds.
test-quick: install ## the edit-test loop: no lint, no processes, faults, browser or benchmark [PYTEST_ARGS=-x]
	$(BIN)/pytest -m "not e2e and not faults and not browser and not bench and not cluster" $(PYTEST_ARGS)

# The servers' part of the suite (the in-process tests and the fault tests) on containers of the images
# docker-compose.yml ships: PostgreSQL 17 and RabbitMQ 4, where `make test` may have run on the
# machine's own binaries. Without registry access, `make test-compose` builds local stand-ins first.
test-containers: install ## the servers' tests on containers of compose's images (needs Docker)
	DEVSTACK_SERVERS=containers $(BIN)/pytest -m "(not e2e and not browser and not bench) or faults" \
		tests/integration tests/security tests/e2e $(PYTEST_ARGS)

# Apart from `make test`: the clusters (devstack/cluster.py) start from this machine's binaries, with
# HAProxy in front of RabbitMQ, and the partition test needs root for iptables. docs/scaling.md.
test-cluster: install ## the clustered engines' failures under load: node kills, a partition, a failover
	$(BIN)/pytest -m cluster tests/cluster $(PYTEST_ARGS)

cluster-up: install ## a 3-node RabbitMQ cluster, a Postgres primary and standby, and the system on them
	$(BIN)/python -m devstack cluster-up

cluster-down: install ## stop what `make cluster-up` started, and remove it
	$(BIN)/python -m devstack cluster-down

test-compose: install ## the stack in containers (docker compose), tested end to end, then removed
	bash tests/compose/setup-docker.sh
	$(BIN)/python -m tests.compose.run

dlq: install ## list a service's dead letters: make dlq SERVICE=users_service
	$(BIN)/python -m shared.dlq list $(SERVICE)

dlq-replay: install ## put dead letters back on the queue: make dlq-replay SERVICE=users_service [ID=event-id]
	$(BIN)/python -m shared.dlq replay $(SERVICE) $(if $(ID),--id $(ID))

outbox: install ## list the outbox rows the relay set aside: make outbox SERVICE=users_service
	$(BIN)/python -m shared.parked list $(SERVICE)

outbox-retry: install ## put set-aside outbox rows back for the relay: make outbox-retry SERVICE=... [ID=row-id]
	$(BIN)/python -m shared.parked retry $(SERVICE) $(if $(ID),--id $(ID))

demo: install ## a scripted tour of the system `make dev` runs: make demo [DEMO_ARGS=--help]
	$(BIN)/python -m demo $(DEMO_ARGS)

demo-throwaway: install ## the same tour against a throwaway system: servers and processes of its own
	$(BIN)/python -m devstack demo

stack: install ## a throwaway system (its own servers and processes) until Ctrl-C, for trying things
	$(BIN)/python -m devstack up

# AMQP and Postgres are not published on the host, so against compose the demo runs inside the compose
# network, in a container of the `tools` service (the profile `tools`: the same image), whose
# RABBITMQ_OPERATOR_URL signs in as the operator with the password compose gave it (.env included), and
# whose DATABASE_URL is users_service's, for the operator's command that makes the demo's admin. The
# printed link uses the gateway's published port.
demo-compose: ## the same tour against `docker compose up`, run inside the compose network
	@published=$$(docker compose port gateway 8080) && [ -n "$$published" ] \
		|| { echo "The compose stack is not running: start it with docker compose up --build" >&2; exit 1; }; \
	docker compose run --rm -e GATEWAY_URL=http://gateway:8080 -e FLOW_URL=http://localhost:$${published##*:}/flow \
		tools python -m demo $(DEMO_ARGS)

format: install ## let ruff fix what it can
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The dev lock is resolved first; the production lock (the image's) and the benchmark's are resolved
# within its pins, so the three never disagree about a version. pip-compile keeps each file's existing
# pins where they still fit: nothing is upgraded unless asked (make lock LOCK_ARGS="--upgrade-package X").
lock: | $(BIN)/pip ## re-resolve the dependencies into requirements*.lock (after editing pyproject.toml)
	$(BIN)/pip install --quiet pip-tools
	$(PIP_COMPILE) --extra dev -o requirements-dev.lock pyproject.toml
	$(PIP_COMPILE) --constraint requirements-dev.lock -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --constraint requirements-dev.lock --extra bench -o requirements-bench.lock pyproject.toml

clean: ## remove the virtual environment and caches (keeps .keys)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

bench: $(BIN)/.bench-installed ## side-by-side benchmark vs nginx and raw Postgres/aio-pika (needs nginx, wrk, haproxy): make bench [BENCH_ARGS=--smoke]
	$(BIN)/python -m bench $(BENCH_ARGS)

# Servers of its own, as the tests choose them (DEVSTACK_SERVERS): it restarts and kills them.
DURATION ?= 600
chaos: install ## faults at random under load, then nothing lost or doubled: make chaos DURATION=600 [SEED=n] [RATE=r]
	$(BIN)/python -m chaos --duration $(DURATION) $(if $(SEED),--seed $(SEED)) $(if $(RATE),--rate $(RATE))
