"""python -m demo: options, terminal handling and exit codes around the scenario."""

import argparse
import asyncio
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

from demo.admin import MAKE_DEV_DATABASE_URL
from demo.scenario import Settings, run
from demo.steps import DemoFailed
from shared.config import OperatorConfig

DEFAULT_GATEWAY_URL = "http://localhost:8080"
# The operator's default, so that `make demo` finds the broker `make dev` uses, as the tools' user.
DEFAULT_RABBITMQ_URL: str = OperatorConfig.default_of("RABBITMQ_OPERATOR_URL")
# users_service's own default, so that the operator's command finds the database `make dev` uses.
DEFAULT_USERS_DATABASE_URL = MAKE_DEV_DATABASE_URL
DEFAULT_TIMEOUT = 30.0
# Narrower, and the outcome column wraps every few words.
MIN_WIDTH = 100
PIPED_WIDTH = 120

START_HINT = (
    "Is the system running? Start it with `make dev` (then `make demo`), or with "
    "`docker compose up --build` (then `make demo-compose`)."
)


def parse_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=sys.modules["demo"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gateway-url",
        default=environ.get("GATEWAY_URL", DEFAULT_GATEWAY_URL),
        help="the gateway's base URL (env GATEWAY_URL; default %(default)s)",
    )
    parser.add_argument(
        "--rabbitmq-url",
        default=environ.get("RABBITMQ_OPERATOR_URL", DEFAULT_RABBITMQ_URL),
        help="the broker as the operator, for the poison message and the dead letters"
        " (env RABBITMQ_OPERATOR_URL; default: make dev's)",
    )
    parser.add_argument(
        "--users-database-url",
        default=environ.get("DATABASE_URL", DEFAULT_USERS_DATABASE_URL),
        help="users_service's database, for the operator's command that makes the demo's admin"
        " (python -m users_service.admin; env DATABASE_URL, its own setting; default: make dev's)",
    )
    parser.add_argument(
        "--flow-url",
        default=environ.get("FLOW_URL"),
        help="the flow page's address as your browser reaches it, for the link printed at the end "
        "(env FLOW_URL; default: the gateway URL + /flow)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for each asynchronous outcome (default %(default)g)",
    )
    arguments = parser.parse_args(argv)
    gateway_url = arguments.gateway_url.rstrip("/")
    return Settings(
        gateway_url=gateway_url,
        rabbitmq_url=arguments.rabbitmq_url,
        flow_url=arguments.flow_url or f"{gateway_url}/flow",
        users_database_url=arguments.users_database_url,
        timeout=arguments.timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv, os.environ)
    interactive = sys.stdout.isatty()
    # The terminal's width, or PIPED_WIDTH when there is none; COLUMNS, when set, wins over both.
    width = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
    colour = interactive and "NO_COLOR" not in os.environ  # https://no-color.org
    print(f"Demo against {settings.gateway_url}\n", flush=True)
    try:
        asyncio.run(run(settings, out=sys.stdout, width=max(MIN_WIDTH, width), colour=colour))
    except DemoFailed as failure:
        print(
            f"\nThe demo stopped at step {failure.number} ({failure.what}): {failure.outcome}",
            file=sys.stderr,
        )
        if failure.number == 1:
            print(START_HINT, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
